package session_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// Attacks on checkpoints, rollbacks and forks: their VMM killed at each
// step, a full disk, a guest that asks too much. Whatever happens, a
// session ends running, parked, or failed with its checkpoints usable to
// bring it back; nothing half-made is listed or left on disk, and a
// restarted server agrees.

// killHook is a manager CrashPoint that kills, at one named step, the VMs
// that pick chooses among those running, and lets the step go on.
type killHook struct {
	mu   sync.Mutex
	at   string                      // guarded by mu
	pick func(ids []string) []string // guarded by mu
	hit  bool                        // guarded by mu
}

func (h *killHook) arm(at string, pick func(ids []string) []string) {
	h.mu.Lock()
	h.at, h.pick, h.hit = at, pick, false
	h.mu.Unlock()
}

func (h *killHook) reached() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hit
}

// newKillRig is a fake rig whose managers kill VMs at the step armed in
// the returned hook.
func newKillRig(t *testing.T, config func(*session.Config)) (*fakeRig, *killHook) {
	h := &killHook{}
	var r *fakeRig
	r = newFakeRigWith(t, func(c *session.Config) {
		prev := c.CrashPoint
		c.CrashPoint = func(name string) {
			h.mu.Lock()
			var pick func([]string) []string
			if name == h.at {
				pick, h.at, h.hit = h.pick, "", true
			}
			h.mu.Unlock()
			if pick != nil {
				for _, id := range pick(r.driver.Running()) {
					if vm := r.driver.Find(id); vm != nil {
						vm.Kill()
					}
				}
			}
			prev(name)
		}
		if config != nil {
			config(c)
		}
	})
	return r, h
}

func only(id string) func([]string) []string {
	return func([]string) []string { return []string{id} }
}

func except(id string) func([]string) []string {
	return func(ids []string) []string {
		return slices.DeleteFunc(ids, func(s string) bool { return s == id })
	}
}

// settled waits until session id is in no passing state (running with a
// VM, parked, or failed) and returns it.
func (r *fakeRig) settled(id string) api.Session {
	r.t.Helper()
	var s api.Session
	r.eventually("session "+id+" settles", func() bool {
		s = r.get(id)
		switch s.State {
		case api.StateParked, api.StateFailed:
			return true
		case api.StateRunning:
			return r.driver.Find(id) != nil
		}
		return false
	})
	return s
}

// wantCheckpointsWhole fails the test unless session id's checkpoint dir
// holds exactly the listed checkpoints, each with its state and RAM
// files, and no half-made one, and no rollback is staged.
func (r *fakeRig) wantCheckpointsWhole(id string) []string {
	r.t.Helper()
	listed := r.checkpointNames(id)
	var names []string
	if listed != "" {
		names = strings.Split(listed, ",")
	}
	root := filepath.Join(r.dir, id, "checkpoints")
	ents, _ := os.ReadDir(root)
	var onDisk []string
	for _, e := range ents {
		onDisk = append(onDisk, e.Name())
	}
	slices.Sort(onDisk)
	want := slices.Clone(names)
	slices.Sort(want)
	if !slices.Equal(onDisk, want) {
		r.t.Fatalf("session %s: checkpoint dirs %v, listed %v", id, onDisk, want)
	}
	for _, n := range names {
		for _, f := range []string{"state", "mem"} {
			if _, err := os.Stat(filepath.Join(root, n, f)); err != nil {
				r.t.Fatalf("listed checkpoint %s lacks its %s file: %v", n, f, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(r.dir, id, "rollback.tmp")); !os.IsNotExist(err) {
		r.t.Fatalf("a staged rollback is left: %v", err)
	}
	return names
}

// TestFakeVMKilledMidCheckpoint kills the session's VMM at each step of a
// checkpoint (the fake's process, as a SIGKILL of QEMU does): the session
// ends failed (its VM is gone) or running, never recorded running without
// a VM; a checkpoint is listed only whole; a restarted server agrees; and
// a rollback brings the failed session back from its last good state (an
// earlier checkpoint, or the one cut short if it was made whole).
func TestFakeVMKilledMidCheckpoint(t *testing.T) {
	for _, step := range []string{"checkpoint.recorded", "checkpoint.paused", "checkpoint.switched", "checkpoint.renamed"} {
		t.Run(step, func(t *testing.T) {
			r, kill := newKillRig(t, nil)
			ctx := context.Background()
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "good\n")
			r.checkpoint(s.ID, "good")
			r.write(s.ID, "/root/f", "later\n")
			kill.arm(step, only(s.ID))
			_, cerr := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "cut"})
			if !kill.reached() {
				t.Fatalf("step %s not reached", step)
			}
			got := r.settled(s.ID)
			if got.State != api.StateFailed || !strings.Contains(got.Error, "exited unexpectedly") {
				t.Fatalf("after its VM was killed mid-checkpoint (%v): %s (%q), want failed with the reason", cerr, got.State, got.Error)
			}
			names := r.wantCheckpointsWhole(s.ID)
			if cerr != nil && slices.Contains(names, "cut") {
				t.Fatalf("the checkpoint failed (%v) but is listed", cerr)
			}
			r.restart()
			r.wantState(s.ID, api.StateFailed, "exited unexpectedly")
			if again := r.wantCheckpointsWhole(s.ID); !slices.Equal(again, names) {
				t.Fatalf("after a restart: checkpoints %v, before %v", again, names)
			}
			// The last good states bring it back.
			if slices.Contains(names, "cut") {
				if _, err := r.mgr.Rollback(ctx, s.ID, "cut"); err != nil {
					t.Fatalf("rollback of the failed session to the checkpoint its VM's end cut: %v", err)
				}
				r.wantFile(s.ID, "/root/f", "later\n")
			}
			if _, err := r.mgr.Rollback(ctx, s.ID, "good"); err != nil {
				t.Fatalf("rollback of the failed session to its good checkpoint: %v", err)
			}
			r.wantState(s.ID, api.StateRunning, "")
			r.wantFile(s.ID, "/root/f", "good\n")
			r.park(s.ID)
			r.wantFile(s.ID, "/root/f", "good\n")
			r.wantCheckpointsWhole(s.ID)
		})
	}
}

// TestFakeVMKilledMidRollback kills the session's VMM at each step of a
// rollback before the rollback stops it: the rollback goes on (the
// checkpoint's files were staged from the checkpoint, not the VM), and the
// session runs at the checkpoint; a restarted server agrees.
func TestFakeVMKilledMidRollback(t *testing.T) {
	for _, step := range []string{"rollback.staged", "rollback.recorded"} {
		t.Run(step, func(t *testing.T) {
			r, kill := newKillRig(t, nil)
			ctx := context.Background()
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "good\n")
			r.checkpoint(s.ID, "good")
			r.write(s.ID, "/root/f", "later\n")
			kill.arm(step, only(s.ID))
			if _, err := r.mgr.Rollback(ctx, s.ID, "good"); err != nil {
				t.Fatalf("rollback whose old VM was killed at %s: %v", step, err)
			}
			got := r.settled(s.ID)
			if got.State != api.StateRunning {
				t.Fatalf("after the rollback: %s (%q), want running", got.State, got.Error)
			}
			r.wantFile(s.ID, "/root/f", "good\n")
			r.wantCheckpointsWhole(s.ID)
			r.restart()
			r.wantState(s.ID, api.StateRunning, "")
			r.wantFile(s.ID, "/root/f", "good\n")
			r.wantCheckpointsWhole(s.ID)
		})
	}
}

// TestFakeVMKilledMidFork kills the parent's VMM while the fork's own
// checkpoint is taken, and a fork's VMM once it runs: the forks made are
// whole sessions (running, or failed when their own VM was killed), the
// parent fails with its checkpoints usable, and a restarted server
// agrees.
func TestFakeVMKilledMidFork(t *testing.T) {
	t.Run("parent, during the fork's checkpoint", func(t *testing.T) {
		r, kill := newKillRig(t, nil)
		ctx := context.Background()
		p := r.create(api.CreateSessionRequest{})
		r.write(p.ID, "/root/f", "at fork\n")
		kill.arm("checkpoint.paused", only(p.ID))
		forks, ferr := r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: 2})
		r.wantState(p.ID, api.StateFailed, "exited unexpectedly")
		names := r.wantCheckpointsWhole(p.ID)
		if ferr != nil {
			if len(forks) != 0 {
				t.Fatalf("a failed fork returned %d sessions", len(forks))
			}
		}
		for _, f := range forks {
			r.wantState(f.ID, api.StateRunning, "")
			r.wantFile(f.ID, "/root/f", "at fork\n")
		}
		r.restart()
		r.wantState(p.ID, api.StateFailed, "")
		if again := r.wantCheckpointsWhole(p.ID); !slices.Equal(again, names) {
			t.Fatalf("after a restart: checkpoints %v, before %v", again, names)
		}
		for _, f := range forks {
			r.echo(f.ID)
		}
		for _, n := range names {
			if _, err := r.mgr.Rollback(ctx, p.ID, n); err != nil {
				t.Fatalf("rollback of the failed parent to %s: %v", n, err)
			}
			r.wantFile(p.ID, "/root/f", "at fork\n")
		}
	})
	t.Run("fork, once it runs", func(t *testing.T) {
		r, kill := newKillRig(t, nil)
		ctx := context.Background()
		p := r.create(api.CreateSessionRequest{})
		r.write(p.ID, "/root/f", "at fork\n")
		r.checkpoint(p.ID, "c")
		kill.arm("fork.restored", except(p.ID))
		forks, _ := r.mgr.Fork(ctx, p.ID, api.ForkRequest{From: "c"})
		r.wantState(p.ID, api.StateRunning, "")
		ss, err := r.mgr.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			if s.ID == p.ID {
				continue
			}
			if got := r.settled(s.ID); got.State != api.StateFailed {
				t.Fatalf("fork whose VM was killed: %s (%q), want failed", got.State, got.Error)
			}
		}
		for _, f := range forks {
			if f.State == api.StateRunning && r.get(f.ID).State == api.StateRunning {
				r.echo(f.ID)
			}
		}
		r.restart()
		r.wantState(p.ID, api.StateRunning, "")
		ss2, _ := r.mgr.List(ctx)
		if len(ss2) != len(ss) {
			t.Fatalf("sessions after a restart: %d, before %d", len(ss2), len(ss))
		}
		for _, s := range ss2 {
			if s.ID != p.ID && s.State != api.StateFailed {
				t.Fatalf("fork after a restart: %s", s.State)
			}
		}
		r.echo(p.ID)
		r.fork(p.ID, api.ForkRequest{From: "c"})
	})
}
