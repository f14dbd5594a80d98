package image

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// fakeBuilt writes the files of a built image name with key under the
// builder's images directory, as a build leaves them: a sparse root file
// system with some data, read-only, and its manifest.
func fakeBuilt(t *testing.T, b *Builder, name, key string) Image {
	t.Helper()
	dir := filepath.Join(b.imagesDir(), name, key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "rootfs.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(32 << 20); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 5 << 20, 17<<20 + 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte(name+key), 9000), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := os.Chmod(raw, 0o444); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Name: name, Key: key, SizeBytes: diskUsage(raw), CreatedAt: time.Now().UTC()}
	data, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := b.load(name, key)
	if err != nil {
		t.Fatal(err)
	}
	b.record(context.Background(), im)
	return im
}

func objectsBuilder(t *testing.T) (*Builder, *sqlite.Store) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	objs, err := objstore.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		t.Fatal(err)
	}
	return &Builder{Home: t.TempDir(), Records: st, Objects: cs}, st
}

// An image's files go to the object store once, under a manifest its
// record names while it names that build; a host that lost them gets
// them back where the overlays resting on them look, readable by QEMU's
// user, every byte the same. A rebuild with other inputs leaves the old
// build's manifest off the record.
func TestStoreAndFetchImage(t *testing.T) {
	ctx := context.Background()
	b, st := objectsBuilder(t)
	im := fakeBuilt(t, b, "tiny", "0123456789abcdef")
	want, err := os.ReadFile(im.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	id, err := b.Store(ctx, im.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.GetImage(ctx, "tiny")
	if err != nil || rec.StoredManifest != id {
		t.Fatalf("record after Store: %+v, %v; want stored_manifest %s", rec, err, id)
	}
	// Found cached again (a server start): the record keeps it.
	b.record(ctx, im)
	if rec, _ := st.GetImage(ctx, "tiny"); rec.StoredManifest != id {
		t.Fatalf("record after the image was found cached again: stored_manifest %q, want %s", rec.StoredManifest, id)
	}
	// A second builder (a restarted server) finds it on the record.
	b2 := &Builder{Home: b.Home, Records: st, Objects: b.Objects}
	if id2, err := b2.Store(ctx, im.RootFS); err != nil || id2 != id {
		t.Fatalf("second Store: %s, %v; want %s", id2, err, id)
	}

	m, err := b.Objects.LoadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if b.Missing(m) {
		t.Fatal("Missing with the image's files in place")
	}
	if err := os.RemoveAll(b.imagesDir()); err != nil {
		t.Fatal(err)
	}
	if !b.Missing(m) {
		t.Fatal("not Missing with the images directory gone")
	}
	rs, err := b2.Fetch(ctx, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rs.ChunksFetched == 0 {
		t.Errorf("fetch: %+v; want chunks fetched", rs)
	}
	got, err := os.ReadFile(im.RootFS)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("restored root file system: %d bytes, %v; want the %d bytes stored", len(got), err, len(want))
	}
	for _, p := range []string{filepath.Dir(im.RootFS), filepath.Dir(filepath.Dir(im.RootFS)), b.imagesDir()} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s after fetch: %v, %v; want mode 0755 (QEMU's user reads through it)", p, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(im.RootFS); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("restored rootfs.raw: %v, %v; want mode 0444", fi.Mode(), err)
	}
	if _, err := b2.load("tiny", "0123456789abcdef"); err != nil {
		t.Fatalf("restored image does not load: %v", err)
	}

	// A build of the same inputs on a host that lost them (a server
	// start) fetches the stored bytes rather than building new ones.
	if err := os.RemoveAll(b.imagesDir()); err != nil {
		t.Fatal(err)
	}
	var said []string
	got2, ok := b2.fetchStored(ctx, "tiny", "0123456789abcdef", func(s string) { said = append(said, s) })
	if !ok || got2.RootFS != im.RootFS {
		t.Fatalf("fetchStored: %+v, %v (%q); want the image back", got2, ok, said)
	}
	if got, err := os.ReadFile(im.RootFS); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("root file system fetched at a build: %d bytes, %v; want the stored bytes", len(got), err)
	}
	if _, ok := b2.fetchStored(ctx, "tiny", "1111111111111111", func(string) {}); ok {
		t.Fatal("fetchStored of a key the record does not name succeeded")
	}

	// Rebuilt with other inputs: the record names the new build, not
	// the old one's manifest.
	fakeBuilt(t, b, "tiny", "fedcba9876543210")
	if rec, _ := st.GetImage(ctx, "tiny"); rec.StoredManifest != "" || rec.Key != "fedcba9876543210" {
		t.Fatalf("record after a rebuild with other inputs: %+v; want the new key, not stored", rec)
	}
	// Storing the old build now records nothing on the record.
	if _, err := (&Builder{Home: b.Home, Records: st, Objects: b.Objects}).Store(ctx, im.RootFS); err != nil {
		t.Fatal(err)
	}
	if rec, _ := st.GetImage(ctx, "tiny"); rec.StoredManifest != "" {
		t.Fatalf("record after storing an older build: stored_manifest %q, want none", rec.StoredManifest)
	}
	if _, err := b.Store(ctx, filepath.Join(b.Home, "elsewhere", "rootfs.raw")); err == nil {
		t.Error("Store of a file outside the images directory succeeded")
	}
}
