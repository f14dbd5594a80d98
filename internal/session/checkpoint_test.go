package session_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

func (r *fakeRig) checkpoint(id, name string) api.Checkpoint {
	r.t.Helper()
	c, err := r.mgr.CreateCheckpoint(context.Background(), id, api.CheckpointRequest{Name: name})
	if err != nil {
		r.t.Fatalf("checkpoint %s: %v", id, err)
	}
	return c
}

func (r *fakeRig) checkpointNames(id string) string {
	r.t.Helper()
	list, err := r.mgr.ListCheckpoints(context.Background(), id)
	if err != nil {
		r.t.Fatalf("list checkpoints: %v", err)
	}
	var names []string
	for _, c := range list {
		names = append(names, c.Name)
	}
	return strings.Join(names, ",")
}

// TestFakeCheckpointRollback takes checkpoints of a running session that
// runs on meanwhile, and rolls it back to each: files and commands are the
// checkpoint's, later writes and commands gone; the id, owner and
// checkpoints are kept, and a command attached at the rollback ends with
// a message that says so.
func TestFakeCheckpointRollback(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{Agent: "claude"})
	r.write(s.ID, "/root/f", "one\n")
	c1 := r.checkpoint(s.ID, "")
	if c1.Name != "ckpt-1" || c1.Session != s.ID || c1.Bytes <= 0 || c1.CreatedAt.IsZero() {
		t.Fatalf("first checkpoint: %+v", c1)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.write(s.ID, "/root/f", "two\n")
	r.write(s.ID, "/root/later", "x")
	r.checkpoint(s.ID, "second")
	r.write(s.ID, "/root/f", "three\n")
	if got := r.checkpointNames(s.ID); got != "ckpt-1,second" {
		t.Fatalf("checkpoints: %s", got)
	}
	// A command attached when the session is rolled back.
	p, err := r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, p.Stdout()); ended <- err }()

	got, err := r.mgr.Rollback(ctx, s.ID, "ckpt-1")
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if got.ID != s.ID || got.State != api.StateRunning || got.Owner != s.Owner || got.Agent != "claude" {
		t.Fatalf("rolled-back session: %+v", got)
	}
	if err := <-ended; err == nil || !strings.Contains(err.Error(), "rolled back to checkpoint ckpt-1") {
		t.Fatalf("attached command's stream ended with %v, want the rollback said", err)
	}
	r.wantFile(s.ID, "/root/f", "one\n")
	if _, err := r.mgr.Stat(ctx, s.ID, "/root/later"); err == nil {
		t.Fatal("/root/later, written after the checkpoint, is there after the rollback")
	}
	r.echo(s.ID)
	// Forward again, to the later checkpoint, after a park.
	r.park(s.ID)
	if _, err := r.mgr.Rollback(ctx, s.ID, "second"); err != nil {
		t.Fatalf("rollback of a parked session: %v", err)
	}
	r.wantFile(s.ID, "/root/f", "two\n")
	r.wantFile(s.ID, "/root/later", "x")
	if got := r.checkpointNames(s.ID); got != "ckpt-1,second" {
		t.Fatalf("checkpoints after rollbacks: %s", got)
	}
	// A checkpoint after rollbacks, then park and wake: the disk chain
	// holds.
	r.checkpoint(s.ID, "")
	r.park(s.ID)
	r.wantFile(s.ID, "/root/f", "two\n")
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "ckpt-1"); err != nil {
		t.Fatal(err)
	}
	if got := r.checkpointNames(s.ID); got != "second,ckpt-3" {
		t.Fatalf("checkpoints after rm: %s", got)
	}
	if _, err := os.Stat(filepath.Join(r.dir, s.ID, "checkpoints", "ckpt-1")); !os.IsNotExist(err) {
		t.Errorf("removed checkpoint's files: %v", err)
	}
}

// TestFakeCheckpointErrors: bad input gets a clear error and changes
// nothing.
func TestFakeCheckpointErrors(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	_, err := r.mgr.CreateCheckpoint(ctx, "s-nope", api.CheckpointRequest{})
	wantCode(t, "checkpoint of an unknown session", err, api.CodeNotFound)
	for _, bad := range []string{"Upper", "-x", "a/b", "..", strings.Repeat("a", 65)} {
		_, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: bad})
		wantCode(t, "checkpoint named "+bad, err, api.CodeInvalid)
	}
	r.checkpoint(s.ID, "one")
	_, err = r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "one"})
	wantCode(t, "duplicate name", err, api.CodeConflict)
	_, err = r.mgr.Rollback(ctx, s.ID, "two")
	wantCode(t, "rollback to an unknown checkpoint", err, api.CodeNotFound)
	wantCode(t, "rm of an unknown checkpoint", r.mgr.DeleteCheckpoint(ctx, s.ID, "two"), api.CodeNotFound)
	_, err = r.mgr.Rollback(ctx, "s-nope", "one")
	wantCode(t, "rollback of an unknown session", err, api.CodeNotFound)
	r.park(s.ID)
	_, err = r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{})
	wantCode(t, "checkpoint of a parked session", err, api.CodeConflict)
	if !strings.Contains(err.Error(), "parked: wake it first") {
		t.Errorf("parked: %v", err)
	}
	r.wantState(s.ID, api.StateParked, "")
	if got := r.checkpointNames(s.ID); got != "one" {
		t.Fatalf("checkpoints: %s", got)
	}
	// A failed checkpoint leaves the session running, on a disk that
	// works.
	if _, err := r.mgr.Wake(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	r.driver.FailNext(fake.OpCheckpoint, errors.New("on demand"))
	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{}); err == nil {
		t.Fatal("a failed checkpoint succeeded")
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.echo(s.ID)
	if got := r.checkpointNames(s.ID); got != "one" {
		t.Fatalf("checkpoints after a failed one: %s", got)
	}
	r.park(s.ID)
	r.echo(s.ID)
}

// TestFakeCheckpointCrashes kills the server at each step of a checkpoint
// and of a rollback: the session is running or parked after the restart,
// on the disk its VM writes, with no half-made checkpoint, and works.
func TestFakeCheckpointCrashes(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"checkpoint.recorded", "checkpoint.paused", "checkpoint.switched", "checkpoint.renamed"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRig(t)
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "before\n")
			r.crashAt(step, nil, func(m *session.Manager) {
				_, _ = m.CreateCheckpoint(context.Background(), s.ID, api.CheckpointRequest{Name: "c"})
			})
			r.wantState(s.ID, api.StateRunning, "")
			r.echo(s.ID)
			if got := r.checkpointNames(s.ID); got != "" {
				t.Fatalf("checkpoints after the crash: %q", got)
			}
			ents, _ := os.ReadDir(filepath.Join(r.dir, s.ID, "checkpoints"))
			if len(ents) != 0 {
				t.Fatalf("checkpoint dirs left: %v", ents)
			}
			// The record names the disk the VM writes: a park and wake,
			// and another checkpoint and rollback, work.
			r.write(s.ID, "/root/f", "after\n")
			r.park(s.ID)
			r.wantFile(s.ID, "/root/f", "after\n")
			r.checkpoint(s.ID, "c")
			r.write(s.ID, "/root/f", "later\n")
			if _, err := r.mgr.Rollback(context.Background(), s.ID, "c"); err != nil {
				t.Fatal(err)
			}
			r.wantFile(s.ID, "/root/f", "after\n")
		})
	}
	for _, step := range []string{"rollback.staged", "rollback.recorded", "rollback.stopped", "rollback.moving"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRig(t)
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "checkpointed\n")
			r.checkpoint(s.ID, "c")
			r.write(s.ID, "/root/f", "later\n")
			r.crashAt(step, nil, func(m *session.Manager) {
				_, _ = m.Rollback(context.Background(), s.ID, "c")
			})
			got := r.get(s.ID)
			want := "checkpointed\n"
			switch got.State {
			case api.StateRunning:
				want = "later\n" // cut before its record: not rolled back
				if step != "rollback.staged" {
					t.Fatalf("after a crash at %s the session runs unrolled", step)
				}
			case api.StateParked:
			default:
				t.Fatalf("session is %s (%s) after the crash", got.State, got.Error)
			}
			r.wantFile(s.ID, "/root/f", want)
			if _, err := os.Stat(filepath.Join(r.dir, s.ID, "rollback.tmp")); !os.IsNotExist(err) {
				t.Errorf("staged rollback left: %v", err)
			}
			if _, err := r.mgr.Rollback(context.Background(), s.ID, "c"); err != nil {
				t.Fatal(err)
			}
			r.wantFile(s.ID, "/root/f", "checkpointed\n")
		})
	}
}

func (r *fakeRig) fork(id string, req api.ForkRequest) []api.Session {
	r.t.Helper()
	ss, err := r.mgr.Fork(context.Background(), id, req)
	if err != nil {
		r.t.Fatalf("fork %s: %v", id, err)
	}
	return ss
}

// TestFakeFork makes forks of a running session and of a checkpoint:
// each is a session of its own (id, files, park and wake), owned as its
// parent, naming its parent and checkpoint; files written in one are
// absent in the others; removing the parent leaves them working.
func TestFakeFork(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	p := r.create(api.CreateSessionRequest{Agent: "claude", Env: map[string]string{"K": "v"}})
	r.write(p.ID, "/root/f", "at fork\n")
	forks := r.fork(p.ID, api.ForkRequest{N: 2})
	if len(forks) != 2 || forks[0].ID == forks[1].ID || forks[0].ID == p.ID {
		t.Fatalf("forks: %+v", forks)
	}
	// The implicit checkpoint is an ordinary one of the parent.
	if got := r.checkpointNames(p.ID); got != "ckpt-1" {
		t.Fatalf("parent's checkpoints: %q", got)
	}
	for i, f := range forks {
		if f.State != api.StateRunning || f.Owner != p.Owner || f.Agent != "claude" || f.Env["K"] != "v" ||
			f.Parent != p.ID || f.FromCheckpoint != "ckpt-1" {
			t.Fatalf("fork %d: %+v", i, f)
		}
		if got := r.get(f.ID); got.Parent != p.ID || got.FromCheckpoint != "ckpt-1" {
			t.Fatalf("inspect of fork %d: parent %q from %q", i, got.Parent, got.FromCheckpoint)
		}
		r.wantFile(f.ID, "/root/f", "at fork\n")
	}
	r.write(forks[0].ID, "/root/only0", "0")
	for _, id := range []string{forks[1].ID, p.ID} {
		if _, err := r.mgr.Stat(ctx, id, "/root/only0"); err == nil {
			t.Fatalf("a file written in fork 0 is in %s", id)
		}
	}
	// A fork from a named checkpoint of a parked parent.
	r.write(p.ID, "/root/f", "later\n")
	r.checkpoint(p.ID, "named")
	r.write(p.ID, "/root/f", "latest\n")
	r.park(p.ID)
	more := r.fork(p.ID, api.ForkRequest{From: "named"})
	if len(more) != 1 || more[0].FromCheckpoint != "named" {
		t.Fatalf("fork from named: %+v", more)
	}
	r.wantFile(more[0].ID, "/root/f", "later\n")
	r.wantState(p.ID, api.StateParked, "")
	// The parent goes; its forks run on, park and wake.
	if err := r.mgr.Delete(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for _, f := range append(forks, more...) {
		r.echo(f.ID)
		r.park(f.ID)
		r.echo(f.ID)
		// A fork's own checkpoint, rollback and fork.
		r.checkpoint(f.ID, "mine")
		if _, err := r.mgr.Rollback(ctx, f.ID, "mine"); err != nil {
			t.Fatal(err)
		}
	}
	grand := r.fork(more[0].ID, api.ForkRequest{From: "mine"})
	r.wantFile(grand[0].ID, "/root/f", "later\n")
}

// TestFakeForkErrors: a fork beyond the bounds, the host's room, or of
// an unknown session or checkpoint is refused and makes nothing.
func TestFakeForkErrors(t *testing.T) {
	t.Parallel()
	r := newFakeRigWith(t, func(c *session.Config) {
		c.Admission = session.Admission{HostMemoryMiB: 1024, HostCPUs: 4, MemoryOvercommit: 1, CPUOvercommit: 1}
	})
	ctx := context.Background()
	p := r.create(api.CreateSessionRequest{})
	for _, n := range []int{-1, 17} {
		_, err := r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: n})
		wantCode(t, "fork -n "+strconv.Itoa(n), err, api.CodeInvalid)
	}
	_, err := r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: 16})
	wantCode(t, "fork beyond the host's room", err, api.CodeUnavailable)
	_, err = r.mgr.Fork(ctx, p.ID, api.ForkRequest{From: "nope"})
	wantCode(t, "fork from an unknown checkpoint", err, api.CodeNotFound)
	_, err = r.mgr.Fork(ctx, "s-nope", api.ForkRequest{})
	wantCode(t, "fork of an unknown session", err, api.CodeNotFound)
	r.park(p.ID)
	_, err = r.mgr.Fork(ctx, p.ID, api.ForkRequest{})
	wantCode(t, "fork of a parked session without a checkpoint", err, api.CodeConflict)
	if ss, _ := r.mgr.List(ctx); len(ss) != 1 {
		t.Fatalf("sessions after refused forks: %d", len(ss))
	}
	if got := r.checkpointNames(p.ID); got != "" {
		t.Fatalf("checkpoints after refused forks: %q", got)
	}
}

// TestFakeForkCrash kills the server once a fork's VM runs, before its
// record: after the restart the parent runs, no fork is recorded, and no
// fork VM or dir is left.
func TestFakeForkCrash(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	p := r.create(api.CreateSessionRequest{})
	r.checkpoint(p.ID, "c")
	r.crashAt("fork.restored", nil, func(m *session.Manager) {
		_, _ = m.Fork(context.Background(), p.ID, api.ForkRequest{From: "c"})
	})
	r.wantState(p.ID, api.StateRunning, "")
	r.echo(p.ID)
	ss, err := r.mgr.List(context.Background())
	if err != nil || len(ss) != 1 {
		t.Fatalf("sessions after the crash: %d, %v", len(ss), err)
	}
	if running := r.driver.Running(); len(running) != 1 {
		t.Fatalf("VMs after the crash: %v", running)
	}
	ents, _ := os.ReadDir(r.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "s-") && e.Name() != p.ID {
			t.Errorf("a half-made fork's dir is left: %s", e.Name())
		}
	}
	// Forking again works.
	r.fork(p.ID, api.ForkRequest{From: "c"})
}

// diskLayers lists the qcow2 layers in session id's dir.
func (r *fakeRig) diskLayers(id string) []string {
	r.t.Helper()
	ms, err := filepath.Glob(filepath.Join(r.dir, id, "disk*.qcow2"))
	if err != nil {
		r.t.Fatal(err)
	}
	return ms
}

// TestFakeLayersCollected: the layers a rollback abandons, and those of
// removed checkpoints, go once nothing rests on them; the session and its
// remaining checkpoints keep working.
func TestFakeLayersCollected(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "a\n")
	r.checkpoint(s.ID, "a") // layers: disk.qcow2 (a's), top
	r.write(s.ID, "/root/f", "b\n")
	r.checkpoint(s.ID, "b") // a's, b's, top
	if n := len(r.diskLayers(s.ID)); n != 3 {
		t.Fatalf("layers after two checkpoints: %d, want 3", n)
	}
	if _, err := r.mgr.Rollback(ctx, s.ID, "a"); err != nil {
		t.Fatal(err)
	}
	// The old top went; b's layer stays (b rests on it).
	if n := len(r.diskLayers(s.ID)); n != 3 {
		t.Fatalf("layers after the rollback: %d, want 3 (a's, b's, the new top)", n)
	}
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "b"); err != nil {
		t.Fatal(err)
	}
	if n := len(r.diskLayers(s.ID)); n != 2 {
		t.Fatalf("layers after b's removal: %d, want 2 (a's, the top)", n)
	}
	r.wantFile(s.ID, "/root/f", "a\n")
	r.park(s.ID)
	r.wantFile(s.ID, "/root/f", "a\n")
	// a's layer holds the session's disk: removing a keeps it.
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "a"); err != nil {
		t.Fatal(err)
	}
	if n := len(r.diskLayers(s.ID)); n != 2 {
		t.Fatalf("layers after a's removal: %d, want 2", n)
	}
	for _, l := range r.diskLayers(s.ID) {
		if out, err := exec.Command("qemu-img", "info", "--backing-chain", l).CombinedOutput(); err != nil {
			t.Fatalf("layer %s: %v: %s", l, err, out)
		}
	}
	r.echo(s.ID)
}

// TestFakeTemplateFromCheckpoint makes a template from a checkpoint: its
// clones find the checkpoint's files, and go on working once the session
// is gone; a bad reference makes no template.
func TestFakeTemplateFromCheckpoint(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{Env: map[string]string{"K": "v"}})
	r.write(s.ID, "/root/f", "checkpointed\n")
	r.checkpoint(s.ID, "c")
	r.write(s.ID, "/root/f", "later\n")
	for _, bad := range []struct {
		from, code string
		req        api.CreateTemplateRequest
	}{
		{"nocolon", api.CodeInvalid, api.CreateTemplateRequest{}},
		{s.ID + ":nope", api.CodeNotFound, api.CreateTemplateRequest{}},
		{"s-none:c", api.CodeNotFound, api.CreateTemplateRequest{}},
		{s.ID + ":c", api.CodeInvalid, api.CreateTemplateRequest{Setup: []string{"true"}}},
	} {
		req := bad.req
		req.Name, req.FromCheckpoint = "t", bad.from
		_, err := r.mgr.CreateTemplate(ctx, testOwner, req)
		wantCode(t, "template from "+bad.from, err, bad.code)
	}
	if ts, _ := r.mgr.ListTemplates(ctx); len(ts) != 0 {
		t.Fatalf("templates after refused creates: %+v", ts)
	}
	tp, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "t", FromCheckpoint: s.ID + ":c"})
	if err != nil {
		t.Fatalf("template from a checkpoint: %v", err)
	}
	if tp.State != api.TemplateReady || tp.MemoryMiB != s.MemoryMiB || tp.Env["K"] != "v" {
		t.Fatalf("template: %+v", tp)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	clone := r.create(api.CreateSessionRequest{Template: "t"})
	r.wantFile(clone.ID, "/root/f", "checkpointed\n")
	r.park(clone.ID)
	r.wantFile(clone.ID, "/root/f", "checkpointed\n")
}

// A server stopped while a checkpoint had switched the guest to a new
// disk, restarted where the VM then does not say which disk it writes,
// keeps both disks and asks again before the park: the disk the guest
// writes is never removed, and the parked session wakes on it.
func TestFakeCheckpointUnsettledDisk(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "before\n")
	r.crashAt("checkpoint.paused", func() { r.driver.FailNext(fake.OpDisk, nil) }, func(m *session.Manager) {
		_, _ = m.CreateCheckpoint(context.Background(), s.ID, api.CheckpointRequest{Name: "c"})
	})
	r.wantState(s.ID, api.StateRunning, "")
	disk := func() string {
		t.Helper()
		vm := r.driver.Find(s.ID)
		if vm == nil {
			t.Fatal("the session's VM is gone")
		}
		d, err := r.driver.Disk(context.Background(), vm)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("the disk the guest writes is gone: %v", err)
		}
		return d
	}
	writes := disk()
	r.write(s.ID, "/root/f", "after\n")
	r.park(s.ID)
	r.wantFile(s.ID, "/root/f", "after\n") // wakes it
	if got := disk(); got != writes {
		t.Fatalf("woken on disk %s, the guest wrote %s", filepath.Base(got), filepath.Base(writes))
	}
	// Settled: the next checkpoint and rollback work.
	r.checkpoint(s.ID, "c")
	r.write(s.ID, "/root/f", "later\n")
	if _, err := r.mgr.Rollback(context.Background(), s.ID, "c"); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/f", "after\n")
}

// A session whose VMM died comes back from its last checkpoint: the
// rollback of a failed session runs it again at the checkpoint, with its
// id and its checkpoints; a failed session with no such checkpoint is
// told so and stays failed.
func TestFakeRollbackFailedSession(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "checkpointed\n")
	r.checkpoint(s.ID, "c")
	r.write(s.ID, "/root/f", "later\n")
	r.vmOf(s.ID).Kill()
	r.eventually("the killed session fails", func() bool { return r.get(s.ID).State == api.StateFailed })
	_, err := r.mgr.Rollback(context.Background(), s.ID, "nope")
	wantCode(t, "rollback to an unknown checkpoint", err, api.CodeNotFound)
	r.wantState(s.ID, api.StateFailed, "")
	got, err := r.mgr.Rollback(context.Background(), s.ID, "c")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != api.StateRunning || got.Error != "" {
		t.Fatalf("after the rollback the session is %s (error %q)", got.State, got.Error)
	}
	r.wantFile(s.ID, "/root/f", "checkpointed\n")
	r.park(s.ID)
	r.wantFile(s.ID, "/root/f", "checkpointed\n")
	if names := r.checkpointNames(s.ID); names != "c" {
		t.Fatalf("checkpoints: %q", names)
	}
}
