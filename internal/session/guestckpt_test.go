package session_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/audit/audittest"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// restoredWord waits until session id's fake guest was told it was
// restored from a checkpoint its tool asked for, and returns what it was
// told.
func (r *fakeRig) restoredWord(id string) agentproto.Restored {
	r.t.Helper()
	var got agentproto.Restored
	r.eventually("the guest told it was restored", func() bool {
		rc, err := r.mgr.Open(context.Background(), id, fake.RestoredPath)
		if err != nil {
			return false
		}
		defer rc.Close()
		got = agentproto.Restored{}
		return json.NewDecoder(rc).Decode(&got) == nil
	})
	return got
}

// TestFakeGuestCheckpointRollback: a checkpoint a guest asks for is an
// ordinary checkpoint of its session (listed, named as asked or ckpt-N),
// and a rollback it asks for puts the session back to it, running, with
// the same id. The guest restored from a checkpoint its tool asked for,
// by a rollback or as a fork, is told so, with the request that asked:
// its tool, waiting in the checkpoint's memory, returns from there.
func TestFakeGuestCheckpointRollback(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{Agent: "claude"})
	r.write(s.ID, "/root/f", "one\n")
	name, err := r.mgr.GuestCheckpoint(s.ID, "", 7)
	if err != nil || name != "ckpt-1" {
		t.Fatalf("guest checkpoint: %q, %v; want ckpt-1", name, err)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.write(s.ID, "/root/f", "two\n")
	if name, err := r.mgr.GuestCheckpoint(s.ID, "before", 8); err != nil || name != "before" {
		t.Fatalf("guest checkpoint named before: %q, %v", name, err)
	}
	r.write(s.ID, "/root/f", "three\n")
	r.write(s.ID, "/root/later", "x")
	if got := r.checkpointNames(s.ID); got != "ckpt-1,before" {
		t.Fatalf("checkpoints: %s", got)
	}

	if err := r.mgr.GuestRollback(s.ID, "before"); err != nil {
		t.Fatalf("guest rollback: %v", err)
	}
	got := r.wantState(s.ID, api.StateRunning, "")
	if got.ID != s.ID || got.Owner != s.Owner || got.Agent != "claude" {
		t.Fatalf("rolled-back session: %+v", got)
	}
	r.wantFile(s.ID, "/root/f", "two\n")
	if _, err := r.mgr.Stat(ctx, s.ID, "/root/later"); err == nil {
		t.Fatal("/root/later, written after the checkpoint, is there after the rollback")
	}
	if w := r.restoredWord(s.ID); w != (agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: "before", Request: 8}) {
		t.Fatalf("rolled-back guest told %+v", w)
	}

	// To the first, as the guest asks again: told of that one's request.
	if err := r.mgr.GuestRollback(s.ID, "ckpt-1"); err != nil {
		t.Fatalf("guest rollback to ckpt-1: %v", err)
	}
	r.wantFile(s.ID, "/root/f", "one\n")
	if w := r.restoredWord(s.ID); w.Checkpoint != "ckpt-1" || w.Request != 7 || w.Kind != agentproto.RestoredRollback {
		t.Fatalf("guest rolled back to ckpt-1 told %+v", w)
	}

	// Forks of it: each guest is told it is a fork, of which session.
	for _, f := range r.fork(s.ID, api.ForkRequest{N: 2, From: "before"}) {
		w := r.restoredWord(f.ID)
		if w != (agentproto.Restored{Kind: agentproto.RestoredFork, Checkpoint: "before", Request: 8, Parent: s.ID}) {
			t.Fatalf("fork %s told %+v", f.ID, w)
		}
		r.wantFile(f.ID, "/root/f", "two\n")
	}
}

// TestFakeGuestCheckpointErrors: what a guest asks for that cannot be done
// is refused with a clear error, and changes nothing: a bad or taken name,
// a rollback to an unknown checkpoint, either of them from a session that
// is parked.
func TestFakeGuestCheckpointErrors(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "one\n")
	if _, err := r.mgr.GuestCheckpoint(s.ID, "before", 1); err != nil {
		t.Fatal(err)
	}
	r.write(s.ID, "/root/f", "two\n")
	pid := r.vmOf(s.ID).PID()

	_, err := r.mgr.GuestCheckpoint(s.ID, "Bad Name", 2)
	wantCode(t, "guest checkpoint named 'Bad Name'", err, api.CodeInvalid)
	_, err = r.mgr.GuestCheckpoint(s.ID, "before", 3)
	wantCode(t, "guest checkpoint with a taken name", err, api.CodeConflict)
	if !strings.Contains(err.Error(), `checkpoint named "before" already`) {
		t.Errorf("taken name: %v", err)
	}
	err = r.mgr.GuestRollback(s.ID, "nosuch")
	wantCode(t, "guest rollback to an unknown checkpoint", err, api.CodeNotFound)
	if !strings.Contains(err.Error(), `has no checkpoint "nosuch"`) {
		t.Errorf("unknown checkpoint: %v", err)
	}
	if err := r.mgr.GuestRollback(s.ID, ""); err == nil {
		t.Error("a guest rollback naming no checkpoint succeeded")
	}
	// Nothing changed: the same VM runs, with the same files.
	r.wantState(s.ID, api.StateRunning, "")
	if r.vmOf(s.ID).PID() != pid {
		t.Fatal("a refused guest request replaced the VM")
	}
	r.wantFile(s.ID, "/root/f", "two\n")
	if got := r.checkpointNames(s.ID); got != "before" {
		t.Fatalf("checkpoints: %s", got)
	}

	r.park(s.ID)
	_, err = r.mgr.GuestCheckpoint(s.ID, "", 4)
	wantCode(t, "guest checkpoint of a parked session", err, api.CodeConflict)
	if !strings.Contains(err.Error(), "parked") {
		t.Errorf("parked: %v", err)
	}
	err = r.mgr.GuestRollback(s.ID, "before")
	wantCode(t, "guest rollback of a parked session", err, api.CodeConflict)
	r.wantState(s.ID, api.StateParked, "")
	if got := r.checkpointNames(s.ID); got != "before" {
		t.Fatalf("checkpoints after the refusals: %s", got)
	}
	r.wantFile(s.ID, "/root/f", "two\n") // woken by the read: still the later state
}

// TestFakeGuestCheckpointConcurrent: a guest's checkpoints and the API's,
// asked for at once, are taken one at a time: each unnamed one gets a
// name of its own, and of two asking for one name, one gets it and the
// other is refused.
func TestFakeGuestCheckpointConcurrent(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	const each = 3
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		names []string
		errs  []error
	)
	record := func(name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		names = append(names, name)
	}
	for i := range each {
		wg.Go(func() { record(r.mgr.GuestCheckpoint(s.ID, "", int64(i+1))) })
		wg.Go(func() {
			c, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{})
			record(c.Name, err)
		})
	}
	wg.Wait()
	if len(errs) != 0 {
		t.Fatalf("unnamed checkpoints at once: %v", errs)
	}
	slices.Sort(names)
	var want []string
	for i := range 2 * each {
		want = append(want, fmt.Sprintf("ckpt-%d", i+1))
	}
	if !slices.Equal(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}

	names, errs = nil, nil
	wg.Go(func() { record(r.mgr.GuestCheckpoint(s.ID, "same", 9)) })
	wg.Go(func() {
		c, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "same"})
		record(c.Name, err)
	})
	wg.Wait()
	if len(names) != 1 || names[0] != "same" || len(errs) != 1 || api.CodeOf(errs[0]) != api.CodeConflict {
		t.Fatalf("two checkpoints named same at once: made %v, refused %v; want one of each", names, errs)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.echo(s.ID)
}

// TestFakeGuestRollbackCrash: a server that dies during a rollback the
// guest asked for, once it is recorded, leaves the session parked at the
// checkpoint, or running from it if its wake had let the guest run; its
// wake, or its re-adoption, tells the guest, as the rollback's own wake
// would have.
func TestFakeGuestRollbackCrash(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"rollback.stopped", "wake.connected"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRig(t)
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "checkpointed\n")
			if _, err := r.mgr.GuestCheckpoint(s.ID, "c", 5); err != nil {
				t.Fatal(err)
			}
			r.write(s.ID, "/root/f", "later\n")
			r.crashAt(step, nil, func(m *session.Manager) { _ = m.GuestRollback(s.ID, "c") })
			if r.get(s.ID).State == api.StateParked {
				if _, err := r.mgr.Wake(context.Background(), s.ID); err != nil {
					t.Fatal(err)
				}
			}
			r.wantState(s.ID, api.StateRunning, "")
			r.wantFile(s.ID, "/root/f", "checkpointed\n")
			if w := r.restoredWord(s.ID); w != (agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: "c", Request: 5}) {
				t.Fatalf("guest told %+v", w)
			}
		})
	}
}

// TestFakeAuditGuestCheckpoint: a guest's checkpoint and rollback are
// logged, by its agent, before they happen; while the log cannot be
// written neither happens.
func TestFakeAuditGuestCheckpoint(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	l, err := audit.Open(t.Context(), dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	r := newFakeRigWith(t, func(c *session.Config) { c.OnEvent = session.AuditEvents(l) })
	id := r.create(api.CreateSessionRequest{}).ID
	if _, err := r.mgr.GuestCheckpoint(id, "c", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.GuestRollback(id, "c"); err != nil {
		t.Fatal(err)
	}
	by := map[string]int{}
	for _, rec := range auditRecords(t, l) {
		e := rec.Entry
		if e.Decision == audit.Allow && e.Actor.Kind == audit.ActorAgent && e.Actor.Session == id {
			by[e.Action]++
		}
	}
	if by["session.checkpoint"] != 1 || by["session.rollback"] != 1 {
		t.Fatalf("announcements by the session's agent: %v; want a session.checkpoint and a session.rollback", by)
	}

	repair := audittest.Break(t, l, dir)
	if _, err := r.mgr.GuestCheckpoint(id, "d", 2); !errors.Is(err, session.ErrRefused) {
		t.Fatalf("guest checkpoint with the log unavailable: %v; want refused", err)
	}
	if err := r.mgr.GuestRollback(id, "c"); !errors.Is(err, session.ErrRefused) {
		t.Fatalf("guest rollback with the log unavailable: %v; want refused", err)
	}
	repair()
	if got := r.checkpointNames(id); got != "c" {
		t.Fatalf("checkpoints: %s", got)
	}
	r.wantState(id, api.StateRunning, "")
}
