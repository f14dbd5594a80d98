package main_test

// Snapshots off the host (issue 18): a parked session's snapshot goes to
// the object store after its park, and the session survives the loss of
// all its files on the host, through a real server, real VMs and a real
// S3 server (or the default file:// store).

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/s3test"
)

func TestMain(m *testing.M) {
	code := s3test.Run(m)
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// waitStored waits, through 'cove session inspect', until session id is
// stored (its park's upload is durable), and returns it.
func (e *e2e) waitStored(id string) api.Session {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		s := e.inspect(id)
		if s.Stored {
			return s
		}
		if s.State != api.StateParked {
			e.t.Fatalf("session %s is %s while waiting for it to be stored%s", id, s.State, e.serverLog())
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("session %s not stored after 3 minutes%s", id, e.serverLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loseFiles removes session id's whole directory on the host, as a lost
// disk (or an evicted cache) would.
func (e *e2e) loseFiles(id string) {
	e.t.Helper()
	dir := filepath.Join(e.home, "sessions", id)
	if _, err := os.Stat(filepath.Join(dir, "state")); err != nil {
		e.t.Fatalf("session %s's snapshot is not on the host before its files are removed: %v", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		e.t.Fatal(err)
	}
}

// TestObjectsS3SurvivesLostFiles: a session with memory-only state (a
// tmpfs file, a background process) is parked; once 'inspect' says it is
// stored in the S3 store, its whole directory on the host is removed, and
// the wake restores it from S3 with its memory and processes intact. A
// second park stores it again.
func TestObjectsS3SurvivesLostFiles(t *testing.T) {
	t.Parallel()
	s3 := s3test.Shared(t)
	e := newE2E(t)
	env := []string{"COVE_OBJECTS=" + s3.URL("e2e-"+randomToken())}
	for k, v := range s3.Env() {
		env = append(env, k+"="+v)
	}
	e.startServer(env...)
	id := e.create()
	m := newMachine(e, id)
	e.ok(nil, "park", id)
	s := e.waitStored(id)
	t.Logf("stored: %d bytes added", s.StoredBytes)
	if s.StoredBytes <= 0 {
		t.Errorf("stored_bytes = %d, want > 0", s.StoredBytes)
	}
	if got := e.metrics(); got["cove_store_seconds_count"] != 1 || got["cove_store_added_bytes_total"] != float64(s.StoredBytes) {
		t.Errorf("metrics after one upload: cove_store_seconds_count %v, cove_store_added_bytes_total %v; want 1 and %d",
			got["cove_store_seconds_count"], got["cove_store_added_bytes_total"], s.StoredBytes)
	}
	e.loseFiles(id)
	if got := e.ok(nil, "wake", id); got != id+" running\n" {
		t.Fatalf("wake printed %q", got)
	}
	m.wantIntact(e, "after its files were lost and it woke from S3")
	if s := e.inspect(id); s.Stored || s.StoredBytes != 0 {
		t.Fatalf("woken session still stored: %+v", s)
	}
	if log := e.srv.log.String(); !strings.Contains(log, "snapshot restored from the object store") {
		t.Errorf("the server's log does not tell the restore:%s", e.serverLog())
	}

	e.ok(nil, "park", id)
	s = e.waitStored(id)
	t.Logf("second park stored: %d bytes added", s.StoredBytes)
	e.loseFiles(id)
	m.wantIntact(e, "after a second loss of its files (an exec woke it)")
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}

// TestObjectsFileCloneCorruptChunk, on the default store (file://
// $COVE_HOME/objects): a clone of a template is parked and stored (its
// template version uploaded first, so the clone adds only what it
// changed); with its files gone and one of its own chunks corrupt in the
// store, the wake fails naming the chunk and the session stays parked,
// never rebooted; with the chunk whole again, the wake restores it
// (seeded by the template version's files) with its memory intact.
func TestObjectsFileCloneCorruptChunk(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	e.ok(nil, "template", "create", "obj", "--memory", "256")
	s := e.newMemorySession("--template", "obj")
	e.ok(nil, "park", s.id)
	st := e.waitStored(s.id)
	t.Logf("clone stored: %d bytes added", st.StoredBytes)

	objects := filepath.Join(e.home, "objects")
	chunk := ownChunk(t, objects)
	path := filepath.Join(objects, "chunks", chunk[:2], chunk)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0x5a
	if err := os.WriteFile(path, bad, 0o640); err != nil {
		t.Fatal(err)
	}
	e.loseFiles(s.id)
	_, errOut, code := e.run(nil, "wake", s.id)
	if code == 0 || !strings.Contains(errOut, chunk) {
		t.Fatalf("wake with a corrupt chunk: exit %d, stderr %q; want a failure naming chunk %s", code, errOut, chunk)
	}
	t.Logf("wake refused: %s", strings.TrimSpace(errOut))
	if got := e.inspect(s.id); got.State != api.StateParked || !strings.Contains(got.Error, chunk) || !got.Stored {
		t.Fatalf("after the failed wake: %+v; want parked, stored, its error naming the chunk", got)
	}
	if err := os.WriteFile(path, good, 0o640); err != nil {
		t.Fatal(err)
	}
	e.checkMemory(s, "a wake from the store once the chunk was whole again")
	e.ok(nil, "rm", s.id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}

// ownChunk returns a chunk that the newest manifest in the file store at
// dir names and no other manifest does: one that a restore seeded by any
// earlier upload's files must fetch.
func ownChunk(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	type man struct {
		mod time.Time
		m   cas.Manifest
	}
	var mans []man
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") {
			continue
		}
		info, err := ent.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "manifests", ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var m cas.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("manifest %s: %v", ent.Name(), err)
		}
		mans = append(mans, man{info.ModTime(), m})
	}
	if len(mans) == 0 {
		t.Fatal("no manifest in the store")
	}
	sort.Slice(mans, func(i, j int) bool { return mans[i].mod.Before(mans[j].mod) })
	others := map[string]bool{}
	for _, o := range mans[:len(mans)-1] {
		for _, f := range o.m.Files {
			for _, c := range f.Chunks {
				others[c] = true
			}
		}
	}
	for _, f := range mans[len(mans)-1].m.Files {
		for _, c := range f.Chunks {
			if c != "" && !others[c] {
				return c
			}
		}
	}
	t.Fatal("the newest manifest has no chunk of its own")
	return ""
}

// TestObjectsUploadCrash: the server is SIGKILLed halfway through a
// park's upload (crash point upload.partial: some chunks stored, no
// manifest); the next server finds the session parked and not stored,
// uploads it again, and once it is stored the session survives the loss
// of its files.
func TestObjectsUploadCrash(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	s := e.newMemorySession()
	// The park answers before its upload starts; a crash that comes
	// first anyway leaves it parked all the same.
	e.crashAt("upload.partial", func() { e.run(nil, "park", s.id) })
	if got := e.inspect(s.id); got.State != api.StateParked {
		t.Fatalf("after a crash mid-upload: %+v, want parked", got)
	}
	e.waitStored(s.id)
	e.loseFiles(s.id)
	e.checkMemory(s, "a crash mid-upload, a restart and the loss of its files")
	e.ok(nil, "rm", s.id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}

// privateImages replaces the home's images directory, a link to the test
// cache that other tests share, by a copy of its tiny image: a test that
// removes the image's files removes only its own.
func (e *e2e) privateImages() {
	e.t.Helper()
	link := filepath.Join(e.home, "images")
	src, err := os.Readlink(link)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll(link, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "tiny")); err == nil {
		if out, err := exec.Command("cp", "-a", "--sparse=always", filepath.Join(src, "tiny"), link).CombinedOutput(); err != nil {
			e.t.Fatalf("copy the tiny image: %v: %s", err, out)
		}
	}
}

// loseHost removes everything of sessions ids on the host, the template
// versions' files and the images': what a host that never had them has.
func (e *e2e) loseHost(ids ...string) {
	e.t.Helper()
	for _, id := range ids {
		if err := os.RemoveAll(filepath.Join(e.home, "sessions", id)); err != nil {
			e.t.Fatal(err)
		}
	}
	builds, _ := filepath.Glob(filepath.Join(e.home, "images", "tiny", "[0-9a-f]*"))
	if len(builds) == 0 {
		e.t.Fatal("no tiny image build in the home to remove")
	}
	for _, d := range append(builds, filepath.Join(e.home, "templates")) {
		if err := os.RemoveAll(d); err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestObjectsBareHost, on a real S3 server and on the default file://
// store: a clone of a template (memory
// marker, a background process, a file on its disk) and a session booted
// from the image are parked and stored, with what they rest on (the
// template version, the image: 'template history' and 'image ls' say
// STORED). The host then loses the sessions' directories, the template's
// files and the image's; a wake of the clone restores, in order, the
// image, the version and its own files (inspect shows the restore while it
// runs) and the guest is intact. Then the clone is parked again, the
// server stops, the host loses everything once more, and a new server
// (which fetches the image from the store at its start instead of
// building new bytes) makes a new clone (the version's files fetched
// first) and wakes both sessions intact.
func TestObjectsBareHost(t *testing.T) {
	t.Parallel()
	// Each on a home and server of its own: the two run at once.
	t.Run("s3", func(t *testing.T) {
		t.Parallel()
		s3 := s3test.Shared(t)
		env := []string{"COVE_OBJECTS=" + s3.URL("bare-"+randomToken())}
		for k, v := range s3.Env() {
			env = append(env, k+"="+v)
		}
		testBareHost(t, env)
	})
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		testBareHost(t, nil)
	})
}

func testBareHost(t *testing.T, env []string) {
	e := newE2E(t)
	e.privateImages()
	e.startServer(env...)
	e.ok(nil, "template", "create", "bare", "--memory", "256")
	clone := e.create("--template", "bare")
	m := newMachine(e, clone)
	diskToken := randomToken()
	e.ok(nil, "exec", clone, "--", "sh", "-c", "echo "+diskToken+" > /root/on-disk; sync")
	plain := e.newMemorySession()
	e.ok(nil, "exec", plain.id, "--", "sh", "-c", "echo "+plain.token+" > /root/on-disk; sync")
	e.ok(nil, "park", clone)
	e.ok(nil, "park", plain.id)
	e.waitStored(clone)
	e.waitStored(plain.id)
	if h := e.ok(nil, "template", "history", "bare"); !regexp.MustCompile(`(?m)^1\*\s+ready\s.*\syes\s+create\s`).MatchString(h) {
		t.Errorf("template history does not show version 1 stored:\n%s", h)
	}
	if l := e.ok(nil, "image", "ls"); !regexp.MustCompile(`(?m)^tiny\s+\S+\s+\S+\s+yes\s`).MatchString(l) {
		t.Errorf("image ls does not show tiny stored:\n%s", l)
	}

	e.loseHost(clone, plain.id)
	wake := e.command("wake", clone)
	var wakeOut bytes.Buffer
	wake.Stdout, wake.Stderr = &wakeOut, &wakeOut
	if err := wake.Start(); err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() { woke <- wake.Wait() }()
	var seen []api.RestoreProgress
	for waiting := true; waiting; {
		select {
		case err := <-woke:
			if err != nil {
				t.Fatalf("wake on a bare host: %v: %s%s", err, wakeOut.String(), e.serverLog())
			}
			waiting = false
		default:
			if r := e.inspect(clone).Restore; r != nil {
				seen = append(seen, *r)
			}
			time.Sleep(20 * time.Millisecond) // a poll's pace, not a wait for the restore
		}
	}
	t.Logf("restore progress seen through inspect: %d samples, last %+v", len(seen), seen[max(len(seen)-1, 0):])
	for _, l := range strings.Split(e.srv.log.String(), "\n") {
		if strings.Contains(l, "snapshot restored from the object store") || (strings.Contains(l, "restoring from the object store") && strings.Contains(l, " what=")) {
			t.Logf("server: %s", l[strings.Index(l, "msg="):])
		}
	}
	for _, p := range seen {
		if p.TotalBytes <= 0 || p.DoneBytes > p.TotalBytes {
			t.Errorf("inspect's restore progress %+v: want done within a total > 0", p)
		}
	}
	log := e.srv.log.String()
	for _, what := range []string{`what="image tiny"`, `what="template bare version 1"`, `what=snapshot`} {
		if !strings.Contains(log, what) {
			t.Errorf("the server's log does not tell the restore of %s:%s", what, e.serverLog())
		}
	}
	if i, j, k := strings.Index(log, `what="image tiny"`), strings.Index(log, `what="template bare version 1"`), strings.Index(log, `what=snapshot`); !(i < j && j < k) {
		t.Errorf("restored out of order (image at %d, version at %d, snapshot at %d in the log)", i, j, k)
	}
	m.wantIntact(e, "after a wake on a host that had none of its files")
	if got := e.ok(nil, "exec", clone, "--", "cat", "/root/on-disk"); got != diskToken+"\n" {
		t.Fatalf("the clone's disk file after the wake: %q, want %q", got, diskToken)
	}

	// Once more, across a server restart on a bare host.
	e.ok(nil, "park", clone)
	e.waitStored(clone)
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v", err)
	}
	builds, _ := filepath.Glob(filepath.Join(e.home, "images", "tiny", "[0-9a-f]*", "rootfs.raw"))
	if len(builds) != 1 {
		t.Fatalf("tiny builds in the home: %v, want one", builds)
	}
	rootSum := fileSum(t, builds[0])
	e.loseHost(clone, plain.id)
	e.startServer(env...)
	if log := e.srv.log.String(); !strings.Contains(log, "tiny: fetching from the object store") {
		t.Errorf("the new server did not fetch the image from the store:%s", e.serverLog())
	}
	if got := fileSum(t, builds[0]); got != rootSum {
		t.Errorf("the root file system at the new server's start is other bytes than the overlays rest on (sha256 %x, was %x)", got, rootSum)
	}
	// A create from the template first gets its version's files back.
	fresh := e.create("--template", "bare")
	if got := e.ok(nil, "exec", fresh, "--", "echo", "cloned"); got != "cloned\n" {
		t.Fatalf("exec in a clone made on a bare host: %q", got)
	}
	if !strings.Contains(e.srv.log.String(), "template version restored from the object store") {
		t.Errorf("the create did not restore the template version from the store:%s", e.serverLog())
	}
	e.checkMemory(plain, "a restart on a host that had none of its files")
	if got := e.ok(nil, "exec", plain.id, "--", "cat", "/root/on-disk"); got != plain.token+"\n" {
		t.Fatalf("the plain session's disk file: %q, want %q", got, plain.token)
	}
	m.wantIntact(e, "after a restart on a host that had none of its files")
	if got := e.ok(nil, "exec", clone, "--", "cat", "/root/on-disk"); got != diskToken+"\n" {
		t.Fatalf("the clone's disk file after the restart: %q, want %q", got, diskToken)
	}
	// A GC now deletes nothing: what no record names (the clone's first
	// snapshot, consumed by its wake) is younger than the grace.
	if out := e.ok(nil, "admin", "gc"); !strings.HasPrefix(out, "deleted 0 manifests and 0 chunks") {
		t.Errorf("admin gc: %q; want nothing deleted", out)
	}
	m.wantIntact(e, "after a GC")
	e.ok(nil, "rm", clone, plain.id, fresh)
	e.ok(nil, "template", "rm", "bare")
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
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
