package session_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/session"
)

// objectsRig is a fake rig whose managers upload parked sessions'
// snapshots to a real file:// object store in a temp dir.
type objectsRig struct {
	*fakeRig
	objDir string
	cas    *cas.Store
}

func newObjectsRig(t *testing.T, more func(*session.Config)) *objectsRig {
	t.Helper()
	dir := t.TempDir()
	objs, err := objstore.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		t.Fatal(err)
	}
	r := &objectsRig{objDir: dir, cas: cs}
	r.fakeRig = newFakeRigWith(t, func(c *session.Config) {
		c.Objects = cs
		if more != nil {
			more(c)
		}
	})
	return r
}

// waitStored waits until session id is recorded stored, and returns it.
func (r *objectsRig) waitStored(id string) api.Session {
	r.t.Helper()
	var s api.Session
	r.eventually("session "+id+" stored", func() bool {
		s = r.get(id)
		return s.Stored
	})
	return s
}

// TestFakeStoredSurvivesLostFiles: a parked session is uploaded after its
// park; once stored, its whole directory can go and a wake (here an
// exec's) restores it from the object store with the guest's files; the
// woken session is no longer stored, and its next park stores it again.
func TestFakeStoredSurvivesLostFiles(t *testing.T) {
	t.Parallel()
	stores := make(chan session.Event, 16)
	r := newObjectsRig(t, func(c *session.Config) {
		c.OnEvent = func(_ context.Context, ev session.Event) error {
			if ev.Kind == session.EventStore {
				stores <- ev
			}
			return nil
		}
	})
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "kept off the host\n")
	if p := r.park(s.ID); p.Stored {
		t.Fatalf("stored as the park returned: %+v", p)
	}
	st := r.waitStored(s.ID)
	if st.StoredBytes <= 0 {
		t.Errorf("stored_bytes = %d, want > 0", st.StoredBytes)
	}
	// The upload is told to the event hook (the audit log, the metrics)
	// before it starts and once it is done, with the bytes it added.
	if ev := <-stores; ev.Phase != session.Begin || ev.Session != s.ID || ev.Cause != session.CausePark {
		t.Errorf("first store event: %+v, want the upload's begin, caused by the park", ev)
	}
	if ev := <-stores; ev.Phase != session.Done || ev.Err != nil || ev.Bytes != st.StoredBytes {
		t.Errorf("second store event: %+v, want the upload done, with %d bytes added", ev, st.StoredBytes)
	}
	if err := os.RemoveAll(filepath.Join(r.dir, s.ID)); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/f", "kept off the host\n")
	if got := r.get(s.ID); got.State != api.StateRunning || got.Stored || got.StoredBytes != 0 {
		t.Fatalf("woken session: state %s, stored %v (%d bytes); want running, not stored", got.State, got.Stored, got.StoredBytes)
	}
	r.write(s.ID, "/root/g", "second park\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	if err := os.RemoveAll(filepath.Join(r.dir, s.ID)); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/g", "second park\n")
	r.wantFile(s.ID, "/root/f", "kept off the host\n")
}

// TestFakeStoredCorruptChunk: a chunk of a stored snapshot that no longer
// hashes to its name fails the wake of a session whose files are gone,
// with an error naming the chunk; the session stays parked and nothing
// of the bad data is put in place. Once the chunk is whole again, the
// wake succeeds.
func TestFakeStoredCorruptChunk(t *testing.T) {
	t.Parallel()
	r := newObjectsRig(t, nil)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "precious\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	rec, err := r.store.GetSession(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	man, err := r.cas.LoadManifest(ctx, rec.StoredManifest)
	if err != nil {
		t.Fatal(err)
	}
	var chunk string
	for _, f := range man.Files {
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
		t.Fatalf("the manifest's state file has no data chunk: %+v", man.Files)
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
	dir := filepath.Join(r.dir, s.ID)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Wake(ctx, s.ID)
	if err == nil || !strings.Contains(err.Error(), chunk) {
		t.Fatalf("wake with a corrupt chunk: %v; want an error naming chunk %s", err, chunk)
	}
	t.Log(err)
	got := r.wantState(s.ID, api.StateParked, chunk)
	if !got.Stored {
		t.Errorf("session no longer stored after a failed restore: %+v", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files put in place by a failed restore: %v", ents)
	}
	if r.driver.Find(s.ID) != nil {
		t.Error("a VM runs for a session whose restore failed")
	}
	if err := os.WriteFile(path, good, 0o640); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/f", "precious\n")
}

// TestFakeStoredAfterRestart: sessions parked by a server that had no
// object store (as one killed before its uploads finished leaves them)
// are uploaded by the next server's Recover, more of them than upload at
// once.
func TestFakeStoredAfterRestart(t *testing.T) {
	t.Parallel()
	var objects session.SnapshotStore
	r := newObjectsRig(t, func(c *session.Config) { c.Objects = objects })
	var ids []string
	for i := range 5 {
		s := r.create(api.CreateSessionRequest{})
		r.write(s.ID, "/root/f", fmt.Sprintf("parked before the restart: %d\n", i))
		r.park(s.ID)
		if got := r.get(s.ID); got.Stored {
			t.Fatalf("stored without an object store: %+v", got)
		}
		ids = append(ids, s.ID)
	}
	objects = r.cas
	r.restart()
	for i, id := range ids {
		r.waitStored(id)
		if err := os.RemoveAll(filepath.Join(r.dir, id)); err != nil {
			t.Fatal(err)
		}
		r.wantFile(id, "/root/f", fmt.Sprintf("parked before the restart: %d\n", i))
	}
}

// holdAt makes a rig whose CrashPoint holds the first upload to reach
// step until release is closed, and whose event hook passes on the
// uploads' Done events.
func holdAt(t *testing.T, step string) (r *objectsRig, reached, release chan struct{}, done chan session.Event) {
	reached, release, done = make(chan struct{}), make(chan struct{}), make(chan session.Event, 16)
	var once atomic.Bool
	r = newObjectsRig(t, func(c *session.Config) {
		c.CrashPoint = func(name string) {
			if name == step && once.CompareAndSwap(false, true) {
				close(reached)
				<-release
			}
		}
		c.OnEvent = func(_ context.Context, ev session.Event) error {
			if ev.Kind == session.EventStore && ev.Phase == session.Done {
				done <- ev
			}
			return nil
		}
	})
	return r, reached, release, done
}

// TestFakeWakeDuringUpload: a wake while the snapshot's upload reads the
// files wins: the upload ends (or its result is dropped), the session
// runs and is not stored; its next park stores it again. Whichever comes
// first, the wake's cancel or the upload's end, the outcome is the same.
func TestFakeWakeDuringUpload(t *testing.T) {
	t.Parallel()
	r, reached, release, done := holdAt(t, "upload.partial")
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "v1\n")
	r.park(s.ID)
	<-reached
	woke := make(chan error, 1)
	go func() {
		_, err := r.mgr.Wake(context.Background(), s.ID)
		woke <- err
	}()
	close(release)
	if err := <-woke; err != nil {
		t.Fatalf("wake during the upload: %v", err)
	}
	<-done
	if got := r.get(s.ID); got.State != api.StateRunning || got.Stored {
		t.Fatalf("woken during its upload: state %s, stored %v", got.State, got.Stored)
	}
	r.wantFile(s.ID, "/root/f", "v1\n")
	r.park(s.ID)
	r.waitStored(s.ID)
}

// TestFakeWakeBeforeUploadRecorded: an upload whose manifest is durable
// but not yet recorded when a wake comes records nothing: a running
// session is never stored, whatever its last upload did.
func TestFakeWakeBeforeUploadRecorded(t *testing.T) {
	t.Parallel()
	r, reached, release, done := holdAt(t, "upload.durable")
	s := r.create(api.CreateSessionRequest{})
	r.park(s.ID)
	<-reached
	if _, err := r.mgr.Wake(context.Background(), s.ID); err != nil {
		t.Fatalf("wake while the upload's record waits: %v", err)
	}
	close(release)
	if ev := <-done; ev.Err == nil {
		t.Errorf("the upload of a snapshot woken before its record was recorded: %+v", ev)
	}
	if got := r.get(s.ID); got.State != api.StateRunning || got.Stored {
		t.Fatalf("woken before its upload was recorded: state %s, stored %v", got.State, got.Stored)
	}
}

// TestFakeDeleteDuringUpload: a delete while the upload runs removes the
// session; the upload records nothing.
func TestFakeDeleteDuringUpload(t *testing.T) {
	t.Parallel()
	r, reached, release, done := holdAt(t, "upload.partial")
	s := r.create(api.CreateSessionRequest{})
	r.park(s.ID)
	<-reached
	deleted := make(chan error, 1)
	go func() { deleted <- r.mgr.Delete(context.Background(), s.ID) }()
	close(release)
	if err := <-deleted; err != nil {
		t.Fatalf("delete during the upload: %v", err)
	}
	<-done
	if _, err := r.mgr.Get(context.Background(), s.ID); err == nil {
		t.Fatal("session still there after its delete")
	}
	if _, err := os.Stat(filepath.Join(r.dir, s.ID)); !os.IsNotExist(err) {
		t.Fatalf("session dir after delete: %v", err)
	}
}
