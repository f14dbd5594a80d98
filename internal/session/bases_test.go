package session_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/session"
)

// storedImages is fakeImages whose one image, tiny, is a build under a
// real image.Builder's images directory, which keeps it in the rig's
// object store (session.ImageStore).
type storedImages struct {
	fake   fakeImages
	b      *image.Builder
	rootFS string
}

func newStoredImages(t *testing.T, objects image.Objects) *storedImages {
	t.Helper()
	b := &image.Builder{Home: t.TempDir(), Objects: objects}
	dir := filepath.Join(b.Home, "images", "tiny", "00c0ffee00c0ffee")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rootFS := filepath.Join(dir, "rootfs.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(rootFS, data, 0o444); err != nil {
		t.Fatal(err)
	}
	man, _ := json.Marshal(image.Manifest{Name: "tiny", Key: "00c0ffee00c0ffee", CreatedAt: time.Now().UTC()})
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), man, 0o644); err != nil {
		t.Fatal(err)
	}
	return &storedImages{fake: newFakeImages(t), b: b, rootFS: rootFS}
}

func (s *storedImages) Get(ctx context.Context, name string) (image.Image, error) {
	im, err := s.fake.Get(ctx, name)
	im.RootFS = s.rootFS
	return im, err
}

func (s *storedImages) Kernel(ctx context.Context, p func(string)) (image.Kernel, error) {
	return s.fake.Kernel(ctx, p)
}
func (s *storedImages) Initramfs(k image.Kernel) (string, error) { return s.fake.Initramfs(k) }
func (s *storedImages) Store(ctx context.Context, rootFS string) (string, error) {
	return s.b.Store(ctx, rootFS)
}
func (s *storedImages) Missing(m cas.Manifest) bool { return s.b.Missing(m) }
func (s *storedImages) Fetch(ctx context.Context, m cas.Manifest, p func(cas.Progress)) (cas.RestoreStats, error) {
	return s.b.Fetch(ctx, m, p)
}

// watchedStore is a SnapshotStore that calls onRestore at the first
// progress of each Restore, and onRestored with each one's stats.
type watchedStore struct {
	*cas.Store
	onRestore  func()
	onRestored func(cas.RestoreStats)
}

func (w watchedStore) Restore(ctx context.Context, m cas.Manifest, dir string, opts cas.RestoreOptions) (cas.RestoreStats, error) {
	var once sync.Once
	inner := opts.Progress
	opts.Progress = func(p cas.Progress) {
		once.Do(w.onRestore)
		if inner != nil {
			inner(p)
		}
	}
	st, err := w.Store.Restore(ctx, m, dir, opts)
	if w.onRestored != nil {
		w.onRestored(st)
	}
	return st, err
}

// chainRig is an objects rig whose image is kept in the store too, and
// whose object store's clock can be moved on.
type chainRig struct {
	*fakeRig
	cas       *cas.Store
	objDir    string
	images    *storedImages
	later     atomic.Int64 // nanoseconds the store's clock is ahead
	onRestore atomic.Pointer[func()]
	onStep    atomic.Pointer[func(string)] // called at each crash point

	mu       sync.Mutex
	restored []cas.RestoreStats // guarded by mu: each Restore's
}

func newChainRig(t *testing.T) *chainRig {
	t.Helper()
	r := &chainRig{objDir: t.TempDir()}
	objs, err := objstore.OpenDir(r.objDir)
	if err != nil {
		t.Fatal(err)
	}
	r.cas, err = cas.New(cas.Config{Objects: objs, Now: func() time.Time { return time.Now().Add(time.Duration(r.later.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	watched := watchedStore{Store: r.cas, onRestore: func() {
		if f := r.onRestore.Load(); f != nil {
			(*f)()
		}
	}, onRestored: func(st cas.RestoreStats) {
		r.mu.Lock()
		r.restored = append(r.restored, st)
		r.mu.Unlock()
	}}
	r.images = newStoredImages(t, watched)
	r.fakeRig = newFakeRigWith(t, func(c *session.Config) {
		c.Images = r.images
		c.Objects = watched
		c.CrashPoint = func(name string) {
			if f := r.onStep.Load(); f != nil {
				(*f)(name)
			}
		}
	})
	return r
}

func (r *chainRig) waitStored(id string) api.Session {
	r.t.Helper()
	var s api.Session
	r.eventually("session "+id+" stored", func() bool {
		s = r.get(id)
		return s.Stored
	})
	return s
}

func (r *chainRig) manifest(id string) cas.Manifest {
	r.t.Helper()
	m, err := r.cas.LoadManifest(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

func (r *chainRig) storedManifest(id string) string {
	r.t.Helper()
	rec, err := r.store.GetSession(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return rec.StoredManifest
}

// versionManifest returns template name's version 1's stored manifest,
// once it is recorded.
func (r *chainRig) versionManifest(name string) string {
	r.t.Helper()
	var id string
	r.eventually("template "+name+" version 1 stored", func() bool {
		vs, err := r.store.ListTemplateVersions(context.Background(), name)
		if err != nil || len(vs) == 0 {
			return false
		}
		id = vs[0].StoredManifest
		return id != ""
	})
	return id
}

// TestFakeChainSurvivesLostHost: a clone of a template is parked and
// stored; its snapshot's manifest rests on its template version's, which
// rests on the image's. With the session's directory, the template
// version's files and the image's all gone from the host, a wake restores
// them in order, from the image up (inspect shows the restore's
// progress meanwhile), and the clone's guest is intact; the overlays'
// backing files are where they name them.
func TestFakeChainSurvivesLostHost(t *testing.T) {
	t.Parallel()
	r := newChainRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
		t.Fatal(err)
	}
	vid := r.versionManifest("web") // uploaded in the background once ready
	vs, err := r.mgr.TemplateVersions(ctx, "web")
	if err != nil || len(vs) != 1 || !vs[0].Stored {
		t.Fatalf("template versions: %+v, %v; want version 1 stored", vs, err)
	}
	vman := r.manifest(vid)
	if len(vman.Bases) != 1 {
		t.Fatalf("template version's manifest rests on %v; want the image's", vman.Bases)
	}
	img := r.manifest(vman.Bases[0])
	if len(img.Files) == 0 || img.Files[0].Name != "tiny/00c0ffee00c0ffee/rootfs.raw" {
		t.Fatalf("image manifest's files: %+v", img.Files)
	}

	s := r.create(api.CreateSessionRequest{Template: "web"})
	r.write(s.ID, "/root/f", "clone's own\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	own := r.manifest(r.storedManifest(s.ID))
	if len(own.Bases) != 1 || own.Bases[0] != vid {
		t.Fatalf("clone's manifest rests on %v; want its template version's %s", own.Bases, vid)
	}

	// The host loses everything: the session, the template's files, the
	// image.
	vdir := filepath.Join(r.dir, "templates", "web", "v1")
	if _, err := os.Stat(vdir); err != nil {
		t.Fatalf("template version's directory: %v", err)
	}
	imagesDir := filepath.Join(r.images.b.Home, "images")
	for _, d := range []string{filepath.Join(r.dir, s.ID), filepath.Join(r.dir, "templates"), imagesDir} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	var seen []api.RestoreProgress
	watch := func() {
		if got := r.get(s.ID).Restore; got != nil {
			seen = append(seen, *got)
		}
	}
	r.onRestore.Store(&watch)
	r.wantFile(s.ID, "/root/f", "clone's own\n")
	r.onRestore.Store(nil)
	if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
		t.Errorf("the woken clone lacks its template's file: %v", err)
	}
	if len(seen) != 3 {
		t.Fatalf("inspect during the restore showed %d progresses (%+v); want one at each of the 3 steps", len(seen), seen)
	}
	for i, p := range seen {
		if p.TotalBytes <= 0 || p.DoneBytes < 0 || p.DoneBytes > p.TotalBytes || (i > 0 && p.DoneBytes <= seen[i-1].DoneBytes) {
			t.Errorf("restore progress %d: %+v (all: %+v); want bytes done growing, within the total", i, p, seen)
		}
	}
	if got := r.get(s.ID).Restore; got != nil {
		t.Errorf("inspect after the wake still shows a restore: %+v", got)
	}
	for _, p := range []string{r.images.rootFS, filepath.Join(vdir, "state")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("not restored: %v", err)
		}
	}
	if fi, err := os.Stat(vdir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("restored version directory: %v, %v; want mode 0711 (QEMU's user reaches the disk through it)", fi.Mode(), err)
	}
	// Only the image gone (the session's and the version's files here):
	// the wake finds it missing through the version disk's backing file
	// and restores it alone.
	r.park(s.ID)
	r.waitStored(s.ID)
	if err := os.RemoveAll(imagesDir); err != nil {
		t.Fatal(err)
	}
	seen = nil
	r.onRestore.Store(&watch)
	r.wantFile(s.ID, "/root/f", "clone's own\n")
	r.onRestore.Store(nil)
	if len(seen) != 1 {
		t.Errorf("with only the image gone, the wake restored %d manifests (%+v); want the image's alone", len(seen), seen)
	}
	if _, err := os.Stat(r.images.rootFS); err != nil {
		t.Errorf("image not restored: %v", err)
	}
	// A create from the template on a host without its version's and
	// image's files restores them first, then clones.
	for _, d := range []string{filepath.Join(r.dir, "templates"), imagesDir} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	s2 := r.create(api.CreateSessionRequest{Template: "web"})
	if _, err := r.mgr.Stat(ctx, s2.ID, "/root/setup-ran"); err != nil {
		t.Errorf("a new clone of the restored version lacks its template's file: %v", err)
	}
	for _, p := range []string{r.images.rootFS, filepath.Join(vdir, "state")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("not restored for the create: %v", err)
		}
	}
}

// TestFakeGC: a GC keeps every manifest a record names and what they rest
// on, and deletes, once older than the grace period, the snapshot a wake
// consumed, a removed session's, and chunks no kept manifest names; a
// GC while an upload has put its chunks but not its manifest deletes
// none of them. After the GC the kept sessions still wake from the store
// alone.
func TestFakeGC(t *testing.T) {
	t.Parallel()
	r := newChainRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	vid := r.versionManifest("web")

	// GCs in the middle of a clone's upload: halfway through its chunks,
	// and once its manifest is written but not yet recorded.
	clone := r.create(api.CreateSessionRequest{Template: "web"})
	r.write(clone.ID, "/root/f", "first park\n")
	var (
		mu     sync.Mutex
		during = map[string]cas.GCStats{}
		gcErr  error
	)
	step := func(name string) {
		if name != "upload.partial" && name != "upload.durable" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if _, ok := during[name]; ok {
			return
		}
		st, err := r.mgr.CollectGarbage(ctx)
		during[name] = st
		gcErr = errors.Join(gcErr, err)
	}
	r.onStep.Store(&step)
	r.park(clone.ID)
	r.waitStored(clone.ID)
	r.onStep.Store(nil)
	mu.Lock()
	if gcErr != nil || len(during) != 2 {
		t.Fatalf("gcs during the upload: %v, %v; want one at each of 2 steps", during, gcErr)
	}
	for step, st := range during {
		t.Logf("gc at %s: %+v", step, st)
		if st.ChunksDeleted != 0 || st.ManifestsDeleted != 0 {
			t.Errorf("gc at %s: %+v; want nothing deleted", step, st)
		}
	}
	mu.Unlock()
	firstID := r.storedManifest(clone.ID)
	// Every chunk it names is whole: it wakes from the store alone.
	if err := os.RemoveAll(filepath.Join(r.dir, clone.ID)); err != nil {
		t.Fatal(err)
	}
	r.wantFile(clone.ID, "/root/f", "first park\n") // wakes from its own files

	plain := r.create(api.CreateSessionRequest{})
	r.write(plain.ID, "/root/p", "plain\n")
	r.park(plain.ID)
	r.waitStored(plain.ID)
	plainID := r.storedManifest(plain.ID)
	if m := r.manifest(plainID); len(m.Bases) != 1 {
		t.Fatalf("a session booted from the image: manifest rests on %v; want the image's", m.Bases)
	}

	// The clone woke (its first snapshot consumed) and parks again.
	r.write(clone.ID, "/root/g", "second park\n")
	r.park(clone.ID)
	r.waitStored(clone.ID)
	secondID := r.storedManifest(clone.ID)
	if secondID == firstID {
		t.Fatal("the second park stored the same manifest")
	}
	// Now: everything is young.
	st, err := r.mgr.CollectGarbage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ManifestsDeleted != 0 || st.ChunksDeleted != 0 {
		t.Fatalf("gc of young objects: %+v; want nothing deleted", st)
	}

	// Two grace periods on.
	r.later.Store(int64(2 * session.DefaultGCGrace))
	st, err = r.mgr.CollectGarbage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc two grace periods on: %+v", st)
	present := func(id string) bool {
		_, err := os.Stat(filepath.Join(r.objDir, "manifests", id))
		return err == nil
	}
	if present(firstID) {
		t.Error("the clone's consumed first snapshot survived the gc")
	}
	imgID := r.manifest(vid).Bases[0]
	for what, id := range map[string]string{"clone's snapshot": secondID, "plain session's": plainID, "template version's": vid, "image's": imgID} {
		if !present(id) {
			t.Errorf("the %s manifest %s was collected", what, id)
		}
	}
	if st.ManifestsDeleted != 1 || st.ChunksDeleted == 0 {
		t.Errorf("gc two grace periods on: %+v; want the first snapshot and its own chunks deleted", st)
	}

	// What is kept wakes from the store alone.
	for _, d := range []string{filepath.Join(r.dir, clone.ID), filepath.Join(r.dir, plain.ID), filepath.Join(r.dir, "templates"),
		filepath.Join(r.images.b.Home, "images")} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	r.wantFile(clone.ID, "/root/g", "second park\n")
	r.wantFile(clone.ID, "/root/f", "first park\n")
	r.wantFile(plain.ID, "/root/p", "plain\n")

	// Removed, the sessions' snapshots go; the version and the image
	// stay (their records name them).
	for _, id := range []string{clone.ID, plain.ID} {
		if err := r.mgr.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	r.later.Store(int64(4 * session.DefaultGCGrace))
	if _, err := r.mgr.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if present(secondID) || present(plainID) {
		t.Error("removed sessions' snapshots survived the gc")
	}
	if !present(vid) || !present(imgID) {
		t.Error("the template version's or the image's manifest was collected while their records name them")
	}
}

// TestFakeVersionStoredAfterRestart: a template version made by a server
// without an object store is uploaded by the next server's Recover, before
// any clone parks; a rebuild's new version is uploaded once it is live,
// and the version it replaced, once removed, leaves the live set (its
// record names no manifest).
func TestFakeVersionStoredAfterRestart(t *testing.T) {
	t.Parallel()
	var objects session.SnapshotStore
	r := newObjectsRig(t, func(c *session.Config) { c.Objects = objects })
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	vs, err := r.mgr.TemplateVersions(ctx, "web")
	if err != nil || len(vs) != 1 || vs[0].Stored {
		t.Fatalf("versions without an object store: %+v, %v; want one, not stored", vs, err)
	}
	objects = r.cas
	r.restart()
	r.eventually("version 1 stored by the restarted server", func() bool {
		vs, err := r.mgr.TemplateVersions(ctx, "web")
		return err == nil && len(vs) == 1 && vs[0].Stored
	})
	tp, err := r.mgr.GetTemplate(ctx, "web")
	if err != nil || !tp.Stored {
		t.Fatalf("template inspect: stored %v, %v; want true", tp.Stored, err)
	}
	if _, err := r.mgr.RebuildTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r.eventually("version 2 live and stored, version 1 removed", func() bool {
		vs, err := r.store.ListTemplateVersions(ctx, "web")
		return err == nil && len(vs) == 2 && vs[1].State == "ready" && vs[1].StoredManifest != "" &&
			vs[0].State == "removed"
	})
	vs1, _ := r.store.ListTemplateVersions(ctx, "web")
	if vs1[0].StoredManifest != "" {
		t.Errorf("removed version 1 still names manifest %s: a GC would keep it", vs1[0].StoredManifest)
	}
}

// TestFakeChainCorruptVersionChunk: a corrupt chunk of the template
// version's files fails a bare host's wake naming the chunk; what was
// restored before it (the image) stays, nothing of the version or the
// session is put in place, and the session stays parked. With the chunk
// whole again, the next wake restores only what is still missing.
func TestFakeChainCorruptVersionChunk(t *testing.T) {
	t.Parallel()
	r := newChainRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	vid := r.versionManifest("web")
	s := r.create(api.CreateSessionRequest{Template: "web"})
	r.write(s.ID, "/root/f", "kept\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	// A chunk of the version's state file (no other manifest has it).
	var chunk string
	for _, f := range r.manifest(vid).Files {
		if f.Name == "state" {
			for _, c := range f.Chunks {
				if c != "" {
					chunk = c
					break
				}
			}
		}
	}
	if chunk == "" {
		t.Fatal("the version's state file has no data chunk")
	}
	path := filepath.Join(r.objDir, "chunks", chunk[:2], chunk)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(path, bad, 0o640); err != nil {
		t.Fatal(err)
	}
	imagesDir := filepath.Join(r.images.b.Home, "images")
	vdir := filepath.Join(r.dir, "templates", "web", "v1")
	for _, d := range []string{filepath.Join(r.dir, s.ID), filepath.Join(r.dir, "templates"), imagesDir} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	_, err = r.mgr.Wake(ctx, s.ID)
	if err == nil || !strings.Contains(err.Error(), chunk) || !strings.Contains(err.Error(), "template web version 1") {
		t.Fatalf("wake with a corrupt chunk of the version: %v; want an error naming the version and chunk %s", err, chunk)
	}
	r.wantState(s.ID, api.StateParked, chunk)
	if _, err := os.Stat(r.images.rootFS); err != nil {
		t.Errorf("the image, restored before the failure, is gone: %v", err)
	}
	for _, p := range []string{filepath.Join(vdir, "state"), filepath.Join(r.dir, s.ID, "state")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a failed restore: %v; want it absent", p, err)
		}
	}
	if err := os.WriteFile(path, good, 0o640); err != nil {
		t.Fatal(err)
	}
	var seen []api.RestoreProgress
	watch := func() {
		if got := r.get(s.ID).Restore; got != nil {
			seen = append(seen, *got)
		}
	}
	r.onRestore.Store(&watch)
	r.wantFile(s.ID, "/root/f", "kept\n")
	r.onRestore.Store(nil)
	if len(seen) != 2 {
		t.Errorf("the second wake restored %d manifests; want 2 (the version and the snapshot; the image is there)", len(seen))
	}
	if got := r.get(s.ID); got.Error != "" {
		t.Errorf("error after the wake: %q", got.Error)
	}
}

// TestFakeRestoreSeedsFromWhatIsLeft: a wake that finds some of a
// session's files gone (the RAM file and the state, the disk overlay
// left) and some of its template version's (the state alone) reads the
// chunks of the files left instead of fetching them.
func TestFakeRestoreSeedsFromWhatIsLeft(t *testing.T) {
	t.Parallel()
	r := newChainRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	vid := r.versionManifest("web")
	s := r.create(api.CreateSessionRequest{Template: "web"})
	r.write(s.ID, "/root/f", "kept\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	vdir := filepath.Join(r.dir, "templates", "web", "v1")
	for _, p := range []string{filepath.Join(vdir, "state"), filepath.Join(r.dir, s.ID, "state"), filepath.Join(r.dir, s.ID, "mem")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	stored := r.storedManifest(s.ID)
	r.wantFile(s.ID, "/root/f", "kept\n")
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.restored) != 2 {
		t.Fatalf("restores: %+v; want the version's and the session's", r.restored)
	}
	vman := r.manifest(vid)
	for i, st := range r.restored {
		if st.ChunksFromSeeds == 0 {
			t.Errorf("restore %d read no chunk from the files left: %+v", i, st)
		}
	}
	var vDisk int
	for _, f := range vman.Files {
		if f.Name != "state" {
			for _, c := range f.Chunks {
				if c != "" {
					vDisk++
				}
			}
		}
	}
	if got := r.restored[0]; got.ChunksFromSeeds < vDisk {
		t.Errorf("version restore: %+v; want at least its %d chunks of the files left read from them", got, vDisk)
	}
	// The session's: only the chunks neither its disk overlay (left)
	// nor its version's files hold are fetched.
	local := map[string]bool{}
	for _, f := range vman.Files {
		for _, c := range f.Chunks {
			local[c] = true
		}
	}
	own := r.manifest(stored)
	for _, f := range own.Files {
		if f.Name == "disk.qcow2" {
			for _, c := range f.Chunks {
				local[c] = true
			}
		}
	}
	need := map[string]bool{}
	for _, f := range own.Files {
		for _, c := range f.Chunks {
			if c != "" && !local[c] {
				need[c] = true
			}
		}
	}
	if got := r.restored[1]; got.ChunksFetched != len(need) {
		t.Errorf("session restore: %+v; want %d chunks fetched, those no file left holds", got, len(need))
	}
}
