package main_test

// Snapshots off the host (issue 18): a parked session's snapshot goes to
// the object store after its park, and the session survives the loss of
// all its files on the host, through a real server, real VMs and a real
// S3 server (or the default file:// store).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/s3test"
)

func TestMain(m *testing.M) { s3test.Main(m) }

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
