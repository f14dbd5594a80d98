package cas_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/s3test"
)

func TestMain(m *testing.M) {
	if arg := os.Getenv(crashChildEnv); arg != "" {
		crashChild(arg)
		return
	}
	s3test.Main(m)
}

// crashChildEnv, set to "URL PATH", makes the test binary an uploader of
// the file at PATH to the store at URL that TestUploadKilledResumes kills.
const crashChildEnv = "COVE_CAS_CRASH_CHILD"

// crashChild uploads with one chunk at a time, prints "half" once half the
// data is stored, and then waits to be killed.
func crashChild(arg string) {
	url, path, _ := strings.Cut(arg, " ")
	objs, err := objstore.Open(context.Background(), url)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	s, err := cas.New(cas.Config{Objects: objs, Parallel: 1})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	_, _, err = s.Upload(context.Background(), []cas.Source{{Name: "mem", Path: path}}, func(p cas.Progress) {
		if p.Done >= p.Total/2 {
			fmt.Println("half")
			select {}
		}
	})
	fmt.Println("error: upload returned", err)
	os.Exit(3)
}

// backends runs fn on an empty file:// store and an empty prefix of the
// S3 server: one suite, two backends.
func backends(t *testing.T, fn func(t *testing.T, objs objstore.Store)) {
	t.Run("file", func(t *testing.T) {
		objs, err := objstore.Open(context.Background(), "file://"+t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		fn(t, objs)
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Shared(t)
		srv.Setenv(t)
		objs, err := objstore.Open(context.Background(), srv.URL(fmt.Sprintf("%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		fn(t, objs)
	})
}

func newStore(t *testing.T, objs objstore.Store, cfg cas.Config) *cas.Store {
	t.Helper()
	cfg.Objects = objs
	s, err := cas.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const chunk = cas.DefaultChunkSize

// ramFile writes a sparse file of size bytes: random data in the chunks
// data names, one allocated all-zero chunk after them (zero on disk, not
// a hole), holes elsewhere.
func ramFile(t testing.TB, path string, size int64, data []int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	buf := make([]byte, chunk)
	for _, i := range data {
		off := i * chunk
		n := min(int64(chunk), size-off)
		for j := range buf[:n] {
			buf[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
		if zoff := off + chunk; zoff+chunk <= size {
			if _, err := f.WriteAt(make([]byte, chunk), zoff); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// poke overwrites n bytes at off with a value derived from off.
func poke(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(fmt.Sprintf("changed at %d", off)), off); err != nil {
		t.Fatal(err)
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d and %d bytes)", a, b, len(x), len(y))
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// fixture writes a RAM-like sparse file (8 MiB and a ragged tail, data in
// 10 chunks, the last one partial), a small file and an empty one.
func fixture(t *testing.T, dir string) []cas.Source {
	t.Helper()
	ramFile(t, filepath.Join(dir, "mem"), 8<<20+5000, []int64{0, 3, 4, 7, 20, 21, 50, 90, 127, 128}, 1)
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("device state"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return []cas.Source{
		{Name: "mem", Path: filepath.Join(dir, "mem")},
		{Name: "sub/state", Path: filepath.Join(dir, "state")},
		{Name: "empty", Path: filepath.Join(dir, "empty")},
	}
}

func TestUploadRestoreRoundTrip(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		src := t.TempDir()
		files := fixture(t, src)
		var calls int
		var last cas.Progress
		s := newStore(t, objs, cas.Config{})
		m, st, err := s.Upload(ctx, files, func(p cas.Progress) { calls++; last = p })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("upload: %+v", st)
		// 10 data chunks and the state file; the allocated zero chunks
		// and the holes are stored as nothing.
		if st.ChunksAdded != 11 || st.ChunksReused != 0 {
			t.Errorf("chunks added %d, reused %d; want 11 and 0", st.ChunksAdded, st.ChunksReused)
		}
		if st.BytesRead >= st.Bytes/2 {
			t.Errorf("read %d of %d bytes: holes were read", st.BytesRead, st.Bytes)
		}
		if calls == 0 || last.Done != last.Total {
			t.Errorf("progress: %d calls, last %+v", calls, last)
		}
		loaded, err := s.LoadManifest(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		dst := t.TempDir()
		rst, err := newStore(t, objs, cas.Config{}).Restore(ctx, loaded, dst, cas.RestoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rst.ChunksFetched != 11 {
			t.Errorf("restore fetched %d chunks, want 11", rst.ChunksFetched)
		}
		sameFile(t, filepath.Join(src, "mem"), filepath.Join(dst, "mem"))
		sameFile(t, filepath.Join(src, "state"), filepath.Join(dst, "sub/state"))
		sameFile(t, filepath.Join(src, "empty"), filepath.Join(dst, "empty"))
		if fi, err := os.Stat(filepath.Join(dst, "sub/state")); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("restored state: %v, %v; want mode 0644 as uploaded", fi.Mode(), err)
		}
		var sys syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dst, "mem"), &sys); err != nil {
			t.Fatal(err)
		}
		if used := sys.Blocks * 512; used > 11*chunk {
			t.Errorf("restored mem uses %d bytes of disk; want it sparse (at most %d)", used, 11*chunk)
		}
		noTemps(t, dst)

		// The same files again: nothing added but the manifest.
		_, st2, err := s.Upload(ctx, files, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st2.ChunksAdded != 0 || st2.ChunksReused != 11 {
			t.Errorf("second upload: %+v; want no chunk added, 11 reused", st2)
		}
	})
}

// noTemps fails if a restore left temporary files in dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.Contains(e.Name(), ".restore-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// A second park of a session, a few pages changed: the store grows by the
// changed chunks alone (a fresh Store: the check goes through the object
// store, not a cache).
func TestSecondUploadAddsOnlyChangedChunks(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		dir := t.TempDir()
		mem := filepath.Join(dir, "mem")
		var data []int64
		for i := range int64(100) {
			data = append(data, i*3)
		}
		ramFile(t, mem, 32<<20, data, 2)
		files := []cas.Source{{Name: "mem", Path: mem}}
		_, st1, err := newStore(t, objs, cas.Config{}).Upload(ctx, files, nil)
		if err != nil {
			t.Fatal(err)
		}
		poke(t, mem, 3*chunk+100)    // a data chunk
		poke(t, mem, 151*chunk+4096) // an allocated chunk that was zero
		poke(t, mem, 400*chunk)      // a hole
		m2, st2, err := newStore(t, objs, cas.Config{}).Upload(ctx, files, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("first upload: %+v", st1)
		t.Logf("second upload: %+v", st2)
		if st2.ChunksAdded != 3 || st2.ChunksReused != 99 {
			t.Errorf("second upload added %d chunks and reused %d, want 3 and 99", st2.ChunksAdded, st2.ChunksReused)
		}
		// Three chunks (compressed; only one holds random data) and the
		// manifest.
		if limit := int64(3*chunk + 64<<10); st2.BytesAdded > limit {
			t.Errorf("second upload added %d bytes, want at most %d", st2.BytesAdded, limit)
		}
		dst := t.TempDir()
		if _, err := newStore(t, objs, cas.Config{}).Restore(ctx, m2, dst, cas.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		sameFile(t, mem, filepath.Join(dst, "mem"))
	})
}

// A clone restored next to its template's files fetches only the chunks
// the template lacks; a seed whose file changed is verified and bypassed.
func TestRestoreFetchesOnlyWhatSeedsLack(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		tmpl, clone := t.TempDir(), t.TempDir()
		ramFile(t, filepath.Join(tmpl, "mem"), 4<<20, []int64{0, 1, 2, 10, 11, 12, 40, 41}, 3)
		s := newStore(t, objs, cas.Config{})
		mt, _, err := s.Upload(ctx, []cas.Source{{Name: "mem", Path: filepath.Join(tmpl, "mem")}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(tmpl, "mem"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(clone, "mem"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		poke(t, filepath.Join(clone, "mem"), 11*chunk+7)
		poke(t, filepath.Join(clone, "mem"), 30*chunk)
		mc, _, err := s.Upload(ctx, []cas.Source{{Name: "mem", Path: filepath.Join(clone, "mem")}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		dst := t.TempDir()
		rst, err := s.Restore(ctx, mc, dst, cas.RestoreOptions{Seeds: []cas.Seed{{Manifest: mt, Dir: tmpl}}})
		if err != nil {
			t.Fatal(err)
		}
		if rst.ChunksFetched != 2 || rst.ChunksFromSeeds != 7 {
			t.Errorf("restore: %+v; want 2 chunks fetched and 7 from the seed", rst)
		}
		sameFile(t, filepath.Join(clone, "mem"), filepath.Join(dst, "mem"))

		// The template's local file changed under it: that chunk comes
		// from the store.
		poke(t, filepath.Join(tmpl, "mem"), 40*chunk+9)
		dst2 := t.TempDir()
		rst, err = s.Restore(ctx, mc, dst2, cas.RestoreOptions{Seeds: []cas.Seed{{Manifest: mt, Dir: tmpl}}})
		if err != nil {
			t.Fatal(err)
		}
		if rst.ChunksFetched != 3 || rst.ChunksFromSeeds != 6 {
			t.Errorf("restore with a changed seed: %+v; want 3 fetched and 6 from the seed", rst)
		}
		sameFile(t, filepath.Join(clone, "mem"), filepath.Join(dst2, "mem"))
	})
}

// chunkKeys lists the chunk objects in the store.
func chunkKeys(t *testing.T, objs objstore.Store) []string {
	t.Helper()
	var keys []string
	if err := objs.List(context.Background(), "chunks/", func(i objstore.Info) error {
		keys = append(keys, i.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func manifestCount(t *testing.T, objs objstore.Store) int {
	t.Helper()
	n := 0
	if err := objs.List(context.Background(), "manifests/", func(objstore.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// uploadedFixture uploads the fixture, and writes an older version of its
// files into a fresh restore directory: what a failed Restore must leave.
func uploadedFixture(t *testing.T, objs objstore.Store) (m cas.Manifest, dst string) {
	t.Helper()
	src := t.TempDir()
	m, _, err := newStore(t, objs, cas.Config{}).Upload(context.Background(), fixture(t, src), nil)
	if err != nil {
		t.Fatal(err)
	}
	dst = t.TempDir()
	if err := os.WriteFile(filepath.Join(dst, "mem"), []byte("the old memory"), 0o644); err != nil {
		t.Fatal(err)
	}
	return m, dst
}

// chunkOf returns the key of the store object of chunk i of mem.
func chunkOf(m cas.Manifest, i int) (string, string) {
	h := m.Files[0].Chunks[i]
	return h, "chunks/" + h[:2] + "/" + h
}

func wantRestoreFails(t *testing.T, objs objstore.Store, m cas.Manifest, dst, hash string, target error) {
	t.Helper()
	before := fileSum(t, filepath.Join(dst, "mem"))
	_, err := newStore(t, objs, cas.Config{}).Restore(context.Background(), m, dst, cas.RestoreOptions{})
	if err == nil {
		t.Fatal("restore succeeded")
	}
	t.Logf("restore error: %v", err)
	if !errors.Is(err, target) {
		t.Errorf("restore error is not %v", target)
	}
	for _, want := range []string{hash, "file mem"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("restore error does not name %q", want)
		}
	}
	if fileSum(t, filepath.Join(dst, "mem")) != before {
		t.Error("a failed restore changed the target file")
	}
	if _, err := os.Stat(filepath.Join(dst, "sub/state")); err == nil {
		t.Error("a failed restore put another file of the manifest in place")
	}
	noTemps(t, dst)
}

// A stored chunk with a flipped byte fails the restore, naming it, and
// nothing is written into place.
func TestRestoreRefusesCorruptChunk(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		m, dst := uploadedFixture(t, objs)
		hash, key := chunkOf(m, 4)
		ctx := context.Background()
		r, err := objs.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		z, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		z[len(z)/2] ^= 0x01
		if err := objs.Put(ctx, key, bytes.NewReader(z), int64(len(z))); err != nil {
			t.Fatal(err)
		}
		wantRestoreFails(t, objs, m, dst, hash, cas.ErrCorrupt)
	})
}

// A chunk object that decompresses cleanly to other bytes (another
// chunk's object under its key) fails the hash check.
func TestRestoreRefusesChunkWithOtherContent(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		m, dst := uploadedFixture(t, objs)
		hash, key := chunkOf(m, 4)
		_, other := chunkOf(m, 0)
		ctx := context.Background()
		r, err := objs.Get(ctx, other)
		if err != nil {
			t.Fatal(err)
		}
		z, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := objs.Put(ctx, key, bytes.NewReader(z), int64(len(z))); err != nil {
			t.Fatal(err)
		}
		wantRestoreFails(t, objs, m, dst, hash, cas.ErrCorrupt)
	})
}

func TestRestoreFailsOnMissingChunk(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		m, dst := uploadedFixture(t, objs)
		hash, key := chunkOf(m, 7)
		if err := objs.Delete(context.Background(), key); err != nil {
			t.Fatal(err)
		}
		wantRestoreFails(t, objs, m, dst, hash, objstore.ErrNotFound)
	})
}

// An upload cancelled halfway writes no manifest; run again, it adds only
// the chunks the first run did not store.
func TestInterruptedUploadResumes(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		dir := t.TempDir()
		mem := filepath.Join(dir, "mem")
		var data []int64
		for i := range int64(64) {
			data = append(data, 2*i)
		}
		ramFile(t, mem, 16<<20, data, 4)
		files := []cas.Source{{Name: "mem", Path: mem}}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, st1, err := newStore(t, objs, cas.Config{Parallel: 2}).Upload(ctx, files, func(p cas.Progress) {
			if p.Done >= p.Total/2 {
				cancel()
			}
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled upload: %v, want context.Canceled", err)
		}
		if n := manifestCount(t, objs); n != 0 {
			t.Fatalf("a cancelled upload left %d manifests", n)
		}
		stored := len(chunkKeys(t, objs))
		t.Logf("cancelled upload: %+v, %d chunks in the store", st1, stored)
		if stored == 0 || stored >= 64 {
			t.Fatalf("cancelled upload stored %d of 64 chunks; want some, not all", stored)
		}
		m, st2, err := newStore(t, objs, cas.Config{}).Upload(context.Background(), files, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("rerun: %+v", st2)
		// A chunk whose PUT was under way when the upload was cancelled
		// may still land in the store after the count above (an S3
		// server finishes a request whose client went away): the rerun
		// reuses at least what was counted, and adds only the rest.
		if st2.ChunksReused < stored || st2.ChunksReused+st2.ChunksAdded != 64 {
			t.Errorf("rerun reused %d and added %d chunks; want at least %d reused and 64 in all", st2.ChunksReused, st2.ChunksAdded, stored)
		}
		dst := t.TempDir()
		if _, err := newStore(t, objs, cas.Config{}).Restore(context.Background(), m, dst, cas.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		sameFile(t, mem, filepath.Join(dst, "mem"))
	})
}

// An uploader SIGKILLed halfway leaves chunks and no manifest; a new
// upload of the same file adds only the chunks that are not there.
func TestUploadKilledResumes(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		dir := t.TempDir()
		mem := filepath.Join(dir, "mem")
		var data []int64
		for i := range int64(64) {
			data = append(data, 2*i)
		}
		ramFile(t, mem, 16<<20, data, 8)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), crashChildEnv+"="+objs.String()+" "+mem)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if line != "half\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("uploader said %q (%v), want half", line, err)
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if n := manifestCount(t, objs); n != 0 {
			t.Fatalf("a killed upload left %d manifests", n)
		}
		stored := len(chunkKeys(t, objs))
		if stored == 0 || stored >= 64 {
			t.Fatalf("the killed upload stored %d of 64 chunks; want some, not all", stored)
		}
		m, st, err := newStore(t, objs, cas.Config{}).Upload(context.Background(), []cas.Source{{Name: "mem", Path: mem}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("killed after %d chunks; rerun: %+v", stored, st)
		// A put the kill cut short may still land after the listing: the
		// rerun reuses at least what was listed.
		if st.ChunksReused < stored || st.ChunksAdded+st.ChunksReused != 64 {
			t.Errorf("rerun reused %d and added %d chunks; want at least %d reused and 64 in all", st.ChunksReused, st.ChunksAdded, stored)
		}
		dst := t.TempDir()
		if _, err := newStore(t, objs, cas.Config{}).Restore(context.Background(), m, dst, cas.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		sameFile(t, mem, filepath.Join(dst, "mem"))
	})
}

// later is a clock d ahead of the real one.
func later(d time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(d) }
}

const grace = 24 * time.Hour

// GC deletes the chunks and manifests no live manifest needs once they are
// older than the grace period, and keeps the rest.
func TestGC(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		ramFile(t, a, 2<<20, []int64{0, 5, 9}, 5)
		ramFile(t, b, 2<<20, []int64{0, 5, 9}, 5)
		poke(t, b, 9*chunk)  // b shares chunks 0 and 5 with a,
		poke(t, b, 20*chunk) // and has two of its own
		s := newStore(t, objs, cas.Config{})
		ma, _, err := s.Upload(ctx, []cas.Source{{Name: "mem", Path: a}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		mb, _, err := s.Upload(ctx, []cas.Source{{Name: "mem", Path: b}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(chunkKeys(t, objs)); n != 5 {
			t.Fatalf("store holds %d chunks, want 5", n)
		}

		// Now: everything is young; nothing goes.
		st, err := s.GC(ctx, []string{ma.ID}, grace)
		if err != nil {
			t.Fatal(err)
		}
		if st.ChunksDeleted != 0 || st.ManifestsDeleted != 0 || st.ManifestsLive != 2 {
			t.Errorf("gc of young objects: %+v; want nothing deleted, 2 manifests live (1 named, 1 young)", st)
		}
		// Two days on: b's manifest and its own chunks go.
		old := newStore(t, objs, cas.Config{Now: later(2 * grace)})
		st, err = old.GC(ctx, []string{ma.ID}, grace)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gc two days on: %+v", st)
		if st.ManifestsDeleted != 1 || st.ChunksKept != 3 || st.ChunksDeleted != 2 || st.ChunksYoung != 0 {
			t.Errorf("gc two days on: %+v; want b's manifest and its 2 own chunks deleted, a's 3 kept", st)
		}
		if _, err := s.LoadManifest(ctx, mb.ID); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("b's manifest after gc: %v, want not found", err)
		}
		dst := t.TempDir()
		if _, err := s.Restore(ctx, ma, dst, cas.RestoreOptions{}); err != nil {
			t.Fatalf("restore of the live manifest after gc: %v", err)
		}
		sameFile(t, a, filepath.Join(dst, "mem"))
		if n := len(chunkKeys(t, objs)); n != 3 {
			t.Errorf("store holds %d chunks after gc, want a's 3", n)
		}

		// A live manifest that is missing (lost for good: it can
		// restore nothing) does not stop the collection: it is
		// reported, and what the others name is kept.
		st, err = old.GC(ctx, []string{ma.ID, mb.ID}, grace)
		if err != nil {
			t.Fatalf("gc with a missing live manifest: %v", err)
		}
		if !slices.Equal(st.Broken, []string{mb.ID}) || st.ChunksKept != 3 || st.ChunksDeleted != 0 {
			t.Errorf("gc with a missing live manifest: %+v; want b reported broken, a's 3 chunks kept", st)
		}
		if _, err := s.Restore(ctx, ma, t.TempDir(), cas.RestoreOptions{}); err != nil {
			t.Fatalf("restore of the live manifest after a gc with a broken one: %v", err)
		}
		if _, err := old.GC(ctx, nil, time.Hour); err == nil {
			t.Error("gc with a grace under the refresh age succeeded")
		}
	})
}

// GC while an upload is in flight (its chunks stored, its manifest not yet
// written) deletes none of them: they are young. The chunks of an upload
// that never finished go once old.
func TestGCDuringUpload(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		dir := t.TempDir()
		mem := filepath.Join(dir, "mem")
		var data []int64
		for i := range int64(32) {
			data = append(data, 2*i)
		}
		ramFile(t, mem, 8<<20, data, 6)
		s := newStore(t, objs, cas.Config{Parallel: 2})
		ran := false
		var gcErr error
		m, _, err := s.Upload(ctx, []cas.Source{{Name: "mem", Path: mem}}, func(p cas.Progress) {
			if !ran && p.Done >= p.Total/2 {
				ran = true
				var st cas.GCStats
				st, gcErr = newStore(t, objs, cas.Config{}).GC(ctx, nil, grace)
				if gcErr == nil && (st.ChunksDeleted != 0 || st.ChunksYoung == 0) {
					gcErr = fmt.Errorf("gc during the upload: %+v; want young chunks kept, none deleted", st)
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if gcErr != nil {
			t.Fatal(gcErr)
		}
		if _, err := s.Restore(ctx, m, t.TempDir(), cas.RestoreOptions{}); err != nil {
			t.Fatalf("restore after a gc during the upload: %v", err)
		}

		// An upload that stopped halfway: its chunks stay while young and
		// go once old, as no manifest names them.
		if err := objs.Delete(ctx, "manifests/"+m.ID); err != nil {
			t.Fatal(err)
		}
		st, err := s.GC(ctx, nil, grace)
		if err != nil || st.ChunksDeleted != 0 {
			t.Fatalf("gc of young orphans: %+v, %v; want none deleted", st, err)
		}
		st, err = newStore(t, objs, cas.Config{Now: later(2 * grace)}).GC(ctx, nil, grace)
		if err != nil || st.ChunksDeleted != 32 || len(chunkKeys(t, objs)) != 0 {
			t.Fatalf("gc of old orphans: %+v, %v; want all 32 deleted", st, err)
		}
	})
}

// A chunk found in the store but older than RefreshAfter is written again,
// so that a GC cannot take it from under the manifest being uploaded.
func TestUploadRefreshesOldChunks(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		mem := filepath.Join(t.TempDir(), "mem")
		ramFile(t, mem, 1<<20, []int64{1, 3, 5}, 7)
		files := []cas.Source{{Name: "mem", Path: mem}}
		if _, _, err := newStore(t, objs, cas.Config{}).Upload(ctx, files, nil); err != nil {
			t.Fatal(err)
		}
		_, st, err := newStore(t, objs, cas.Config{Now: later(13 * time.Hour)}).Upload(ctx, files, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.ChunksRefreshed != 3 || st.ChunksAdded != 0 || st.ChunksReused != 0 {
			t.Errorf("upload 13 h on: %+v; want 3 chunks refreshed, none added or reused", st)
		}
	})
}

func TestLoadManifestRefusesCorruptManifest(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		m, _ := uploadedFixture(t, objs)
		ctx := context.Background()
		bad := []byte(`{"chunk_size":65536,"files":[]}`)
		if err := objs.Put(ctx, "manifests/"+m.ID, bytes.NewReader(bad), int64(len(bad))); err != nil {
			t.Fatal(err)
		}
		_, err := newStore(t, objs, cas.Config{}).LoadManifest(ctx, m.ID)
		if err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("load of a corrupt manifest: %v, want a corrupt error", err)
		}
	})
}

// A manifest's bases (an image under a template version, a version under
// a session) are kept as long as a kept manifest names them, however old
// they are and though no caller names them; they go
// with the last manifest that names them. An upload on a base that is not
// in the store writes no manifest.
func TestGCKeepsBases(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		ctx := context.Background()
		dir := t.TempDir()
		img, top := filepath.Join(dir, "img"), filepath.Join(dir, "top")
		ramFile(t, img, 1<<20, []int64{0, 2, 4}, 8)
		ramFile(t, top, 1<<20, []int64{1, 3}, 9)
		s := newStore(t, objs, cas.Config{})
		base, _, err := s.Upload(ctx, []cas.Source{{Name: "rootfs", Path: img}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		bogus := strings.Repeat("ab", 32)
		if _, _, err := s.UploadWith(ctx, []cas.Source{{Name: "disk", Path: top}}, cas.UploadOptions{Bases: []string{bogus}}); err == nil {
			t.Fatal("upload on a base that is not in the store succeeded")
		}
		m, _, err := s.UploadWith(ctx, []cas.Source{{Name: "disk", Path: top}}, cas.UploadOptions{Bases: []string{base.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.LoadManifest(ctx, m.ID); err != nil || len(got.Bases) != 1 || got.Bases[0] != base.ID {
			t.Fatalf("manifest read back: bases %v, %v; want [%s]", got.Bases, err, base.ID)
		}
		// An upload on a base older than the refresh age writes the
		// base again: a GC cannot take it from under the new manifest.
		puts := &countingStore{Store: objs}
		top2 := filepath.Join(dir, "top2")
		ramFile(t, top2, 1<<20, []int64{6}, 10)
		if _, _, err := newStore(t, puts, cas.Config{}).UploadWith(ctx, []cas.Source{{Name: "disk", Path: top2}}, cas.UploadOptions{Bases: []string{base.ID}}); err != nil {
			t.Fatal(err)
		}
		if n := puts.count("manifests/" + base.ID); n != 0 {
			t.Errorf("a fresh base was written again %d times", n)
		}
		m2, _, err := newStore(t, puts, cas.Config{Now: later(13 * time.Hour)}).UploadWith(ctx, []cas.Source{{Name: "disk", Path: top2}}, cas.UploadOptions{Bases: []string{base.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if n := puts.count("manifests/" + base.ID); n != 1 {
			t.Errorf("a base older than the refresh age was written again %d times, want once", n)
		}
		if err := objs.Delete(ctx, "manifests/"+m2.ID); err != nil {
			t.Fatal(err)
		}

		old := newStore(t, objs, cas.Config{Now: later(2 * grace)})
		st, err := old.GC(ctx, []string{m.ID}, grace)
		if err != nil {
			t.Fatal(err)
		}
		if st.ManifestsDeleted != 0 || st.ChunksDeleted != 1 || st.ManifestsLive != 2 {
			t.Fatalf("gc with the top manifest live: %+v; want both manifests kept and every chunk but top2's", st)
		}
		if _, err := s.Restore(ctx, base, t.TempDir(), cas.RestoreOptions{}); err != nil {
			t.Fatalf("restore of the base after gc: %v", err)
		}
		// Once nothing names either, both go.
		st, err = newStore(t, objs, cas.Config{Now: later(4 * grace)}).GC(ctx, nil, grace)
		if err != nil {
			t.Fatal(err)
		}
		if st.ManifestsDeleted != 2 || st.ChunksDeleted != 5 {
			t.Fatalf("gc with nothing live, all old: %+v; want 2 manifests and 5 chunks deleted", st)
		}
	})
}

// countingStore counts the Puts of each key.
type countingStore struct {
	objstore.Store
	mu   sync.Mutex
	puts map[string]int
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.mu.Lock()
	if c.puts == nil {
		c.puts = map[string]int{}
	}
	c.puts[key]++
	c.mu.Unlock()
	return c.Store.Put(ctx, key, r, size)
}

func (c *countingStore) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.puts[key]
}

// The temp files of a restore cut short (a server killed mid-restore:
// each as large as its file) are removed by the next restore into the
// dir, which then puts the files in place; other files stay.
func TestRestoreRemovesTempsOfOneCutShort(t *testing.T) {
	backends(t, func(t *testing.T, objs objstore.Store) {
		m, dst := uploadedFixture(t, objs)
		stale := []string{".mem.restore-1234", ".mem.restore-99999"}
		for _, name := range append(stale, ".other.restore-1", "keep") {
			if err := os.WriteFile(filepath.Join(dst, name), bytes.Repeat([]byte{1}, 4096), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := newStore(t, objs, cas.Config{}).Restore(context.Background(), m, dst, cas.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		ents, err := os.ReadDir(dst)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		for _, name := range stale {
			if slices.Contains(names, name) {
				t.Errorf("stale temp %s left after the restore: %v", name, names)
			}
		}
		for _, name := range []string{".other.restore-1", "keep", "mem"} {
			if !slices.Contains(names, name) {
				t.Errorf("%s is gone after the restore: %v", name, names)
			}
		}
	})
}
