package session_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/testenv"
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
		if _, err := os.Stat(filepath.Join(root, n, "state")); err != nil {
			r.t.Fatalf("listed checkpoint %s lacks its state file: %v", n, err)
		}
		// Its RAM: the copy the pause took, or that copy re-encoded onto
		// a base (memchain.go).
		_, err := os.Stat(filepath.Join(root, n, "mem"))
		if _, qerr := os.Stat(filepath.Join(root, n, "mem.qcow2")); err != nil && qerr != nil {
			r.t.Fatalf("listed checkpoint %s lacks its RAM file (mem or mem.qcow2): %v", n, err)
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
	t.Parallel()
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
			// A failed session's checkpoints fork, too.
			forks := r.fork(s.ID, api.ForkRequest{From: "good"})
			r.wantFile(forks[0].ID, "/root/f", "good\n")
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
			// No orphan layer: one per checkpoint (the first's is
			// disk.qcow2), and the session's top.
			if got := r.diskLayers(s.ID); len(got) != len(names)+1 {
				t.Fatalf("disk layers %v, want %d (the checkpoints' and the top)", got, len(names)+1)
			}
		})
	}
}

// TestFakeVMKilledMidRollback kills the session's VMM at each step of a
// rollback before the rollback stops it: the rollback goes on (the
// checkpoint's files were staged from the checkpoint, not the VM), and the
// session runs at the checkpoint; a restarted server agrees.
func TestFakeVMKilledMidRollback(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	t.Run("parent, during the fork's checkpoint", func(t *testing.T) {
		r, kill := newKillRig(t, nil)
		ctx := context.Background()
		p := r.create(api.CreateSessionRequest{})
		r.write(p.ID, "/root/f", "at fork\n")
		kill.arm("checkpoint.paused", only(p.ID))
		forks, ferr := r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: 2})
		// The VMM's end is recorded by the session's watcher, which may
		// come after the fork returns.
		r.eventually("the parent whose VMM was killed fails", func() bool { return r.get(p.ID).State == api.StateFailed })
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

// smallDisk mounts a size-limited tmpfs for the sessions of a fake rig
// and returns its path and a fill function, which leaves about leave
// bytes free, and a free function.
func smallDisk(t *testing.T, size string) (dir string, fill func(leave int64), free func() int64, unfill func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "mounting a size-limited tmpfs needs root")
	}
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0711", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount: %v: %s", err, out)
		}
	})
	// free waits for the file system to have settled: what it says is
	// used is what the files in it hold. A file removed while another
	// process held it open (qemu-img, whose io_uring is torn down by the
	// kernel after it exits) gives its room back a moment later.
	free = func() int64 {
		t.Helper()
		var st syscall.Statfs_t
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err := syscall.Statfs(dir, &st); err != nil {
				t.Fatal(err)
			}
			used := int64(st.Blocks-st.Bfree) * st.Bsize
			held := filesHold(t, dir)
			if used == held {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the file system says %d bytes are used, its files hold %d", dir, used, held)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return int64(st.Bavail) * st.Bsize
	}
	filler := filepath.Join(dir, "filler")
	fill = func(leave int64) {
		t.Helper()
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		for left := free() - leave; left > 0; {
			n, err := f.Write(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if err != nil {
				break
			}
		}
	}
	unfill = func() {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
	return dir, fill, free, unfill
}

// filesHold is the room the files under dir take (their allocated
// blocks).
func filesHold(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		n += st.Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dirtyMem writes n bytes of data into the RAM file of session id (the
// fake guest keeps its state elsewhere: this stands for the memory a
// real guest touched, which a checkpoint and a fork copy).
func (r *fakeRig) dirtyMem(id string, n int) {
	r.t.Helper()
	f, err := os.OpenFile(filepath.Join(r.dir, id, "mem"), os.O_WRONLY, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := 0; off < n; off += len(buf) {
		if _, err := f.WriteAt(buf, int64(off)); err != nil {
			r.t.Fatal(err)
		}
	}
}

// TestFakeDiskFullCheckpointAndFork fills the sessions' file system (a
// size-limited tmpfs) so that a checkpoint's RAM copy, then a fork's
// copies, find no room: each fails saying so, the session runs on with
// its files, no checkpoint or fork is listed, nothing is kept (the
// request is refused, 507, before the guest pauses or a copy starts), and
// once there is room again both work. The disk filled by another writer
// after that check, during the copies, fails them the same way and gives
// back what they wrote.
func TestFakeDiskFullCheckpointAndFork(t *testing.T) {
	t.Parallel()
	dir, fill, free, unfill := smallDisk(t, "96m")
	// At a step armed here the disk fills: after the check for room,
	// before the copies (a disk that another writer fills meanwhile).
	var (
		fillMu sync.Mutex
		fillAt string
	)
	r := newFakeRigWith(t, func(c *session.Config) {
		c.Dir, c.TemplateDir = filepath.Join(dir, "sessions"), filepath.Join(dir, "templates")
		prev := c.CrashPoint
		c.CrashPoint = func(name string) {
			fillMu.Lock()
			hit := name == fillAt
			if hit {
				fillAt = ""
			}
			fillMu.Unlock()
			if hit {
				fill(8 << 20)

			}
			prev(name)
		}
	})
	fillWhen := func(step string) {
		fillMu.Lock()
		fillAt = step
		fillMu.Unlock()
	}
	r.dir = filepath.Join(dir, "sessions")
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "one\n")
	r.dirtyMem(s.ID, 16<<20)
	listed := func(want int) {
		t.Helper()
		if ss, err := r.mgr.List(ctx); err != nil || len(ss) != want {
			t.Fatalf("sessions: %d, %v; want %d", len(ss), err, want)
		}
	}

	fill(8 << 20)
	before, layers := free(), r.diskLayers(s.ID)
	_, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "full"})
	wantCode(t, "checkpoint on a full disk", err, api.CodeInsufficientStorage)
	if !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("checkpoint on a full disk: %v, want the cause (no space left)", err)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "one\n")
	if names := r.wantCheckpointsWhole(s.ID); len(names) != 0 {
		t.Fatalf("checkpoints after one that found the disk full: %v", names)
	}
	// Refused before the disk switched: no layer more, no byte kept.
	if got := r.diskLayers(s.ID); !slices.Equal(got, layers) {
		t.Fatalf("disk layers after a checkpoint that found the disk full: %v, before %v", got, layers)
	}
	if got := free(); got != before {
		t.Fatalf("a checkpoint that found the disk full kept %d bytes", before-got)
	}

	unfill()

	// The disk fills after the check, during the RAM copy: the copy
	// fails saying so, and what it wrote goes; the session runs on (on
	// the new overlay its disk switched to, which is all it keeps).
	before = free()
	fillWhen("checkpoint.recorded")
	_, err = r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "filled"})
	if err == nil || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "copy memory") {
		t.Fatalf("checkpoint whose RAM copy fills the disk: %v, want the cause (no space left, copying memory)", err)
	}
	unfill()
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "one\n")
	if names := r.wantCheckpointsWhole(s.ID); len(names) != 0 {
		t.Fatalf("checkpoints after one whose copy filled the disk: %v", names)
	}
	if got := free(); got < before-(1<<20) {
		t.Fatalf("a checkpoint whose copy filled the disk kept %d bytes", before-got)
	}
	r.checkpoint(s.ID, "c")
	// Its RAM is re-encoded in the background (memchain.go): done before
	// the free space is measured.
	r.eventually("checkpoint c's RAM shared", func() bool {
		list, err := r.mgr.ListCheckpoints(ctx, s.ID)
		return err == nil && len(list) == 1 && list[0].MemShared
	})
	r.write(s.ID, "/root/f", "two\n")
	fill(8 << 20)
	before = free()
	_, err = r.mgr.Fork(ctx, s.ID, api.ForkRequest{From: "c", N: 2})
	wantCode(t, "fork on a full disk", err, api.CodeInsufficientStorage)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("fork on a full disk: %v, want the cause (no space left)", err)
	}
	listed(1)
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "two\n")
	if got := free(); got != before {
		t.Fatalf("a fork that found the disk full kept %d bytes", before-got)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.dir, ".clone-files")); len(ents) != 0 {
		t.Fatalf("a fork that found the disk full left %d dirs", len(ents))
	}
	// A fork that takes its own checkpoint: refused the same way, and
	// the checkpoint it took is whole or not listed.
	_, err = r.mgr.Fork(ctx, s.ID, api.ForkRequest{})
	wantCode(t, "fork (checkpoint now) on a full disk", err, api.CodeInsufficientStorage)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("fork (checkpoint now) on a full disk: %v, want the cause (no space left)", err)
	}
	listed(1)
	r.wantCheckpointsWhole(s.ID)
	r.wantState(s.ID, api.StateRunning, "")

	// A rollback stages a copy of the checkpoint's RAM file: refused the
	// same way, the session running on as it was.
	_, err = r.mgr.Rollback(ctx, s.ID, "c")
	wantCode(t, "rollback on a full disk", err, api.CodeInsufficientStorage)
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "two\n")
	if got := free(); got != before {
		t.Fatalf("a rollback that found the disk full kept %d bytes", before-got)
	}
	r.wantCheckpointsWhole(s.ID)
	unfill()

	// The disk fills after the check, during the forks' copies.
	before = free()
	fillWhen("fork.copying")
	_, err = r.mgr.Fork(ctx, s.ID, api.ForkRequest{From: "c", N: 2})
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("fork whose copies fill the disk: %v, want the cause (no space left)", err)
	}
	unfill()
	listed(1)
	if got := free(); got != before {
		t.Fatalf("a fork whose copies filled the disk kept %d bytes", before-got)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.dir, ".clone-files")); len(ents) != 0 {
		t.Fatalf("a fork whose copies filled the disk left %d dirs", len(ents))
	}
	forks := r.fork(s.ID, api.ForkRequest{From: "c"})
	r.wantFile(forks[0].ID, "/root/f", "one\n")
	if _, err := r.mgr.Rollback(ctx, s.ID, "c"); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/f", "one\n")
}

// TestFakeGuestFloodsCheckpoints has guests ask for checkpoints and
// rollbacks far more than they may, and with names that are paths: a bad
// name is refused (400) without counting; past its burst a guest's
// requests are refused with nothing done while the API's go on; a session
// holds at most MaxCheckpoints, which the guest cannot pass; at most two
// guests' checkpoints run at once on the host; and another session's
// guest is not held back by the flood.
func TestFakeGuestFloodsCheckpoints(t *testing.T) {
	t.Parallel()
	var (
		mu           sync.Mutex
		inside, most int
	)
	r := newFakeRigWith(t, func(c *session.Config) {
		c.MaxCheckpoints, c.GuestCheckpointBurst, c.GuestCheckpointEvery = 5, 3, time.Hour
		prev := c.CrashPoint
		c.CrashPoint = func(name string) {
			if name == "checkpoint.paused" {
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				// Long enough for the others to come in, were they let.
				time.Sleep(50 * time.Millisecond)
				mu.Lock()
				inside--
				mu.Unlock()
			}
			prev(name)
		}
	})
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	other := r.create(api.CreateSessionRequest{})
	third := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "one\n")
	pid := r.vmOf(s.ID).PID()

	for _, bad := range []string{"../x", "/etc/passwd", "a/../../b", "x\x00y", strings.Repeat("a", 4096), ".tmp-c", "."} {
		_, err := r.mgr.GuestCheckpoint(s.ID, bad, 1)
		wantCode(t, fmt.Sprintf("guest checkpoint named %.40q", bad), err, api.CodeInvalid)
		err = r.mgr.GuestRollback(s.ID, bad)
		wantCode(t, fmt.Sprintf("guest rollback to %.40q", bad), err, api.CodeInvalid)
		_, err = r.mgr.Rollback(ctx, s.ID, bad)
		wantCode(t, fmt.Sprintf("rollback to %.40q", bad), err, api.CodeInvalid)
	}
	if got := r.checkpointNames(s.ID); got != "" {
		t.Fatalf("checkpoints after bad names: %q", got)
	}

	// The flood: 40 requests at once from the guest of s, while the
	// guests of the two others ask for one each.
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range errs {
		wg.Go(func() { _, errs[i] = r.mgr.GuestCheckpoint(s.ID, "", int64(10+i)) })
	}
	for _, id := range []string{other.ID, third.ID} {
		wg.Go(func() {
			if _, err := r.mgr.GuestCheckpoint(id, "mine", 1); err != nil {
				t.Errorf("the guest of %s, during another's flood: %v", id, err)
			}
		})
	}
	wg.Wait()
	took := 0
	for _, err := range errs {
		switch {
		case err == nil:
			took++
		case !strings.Contains(err.Error(), "too many checkpoint and rollback requests"):
			t.Fatalf("a flooding guest's request: %v, want refused as too many", err)
		}
	}
	if took != 3 {
		t.Fatalf("a flooding guest took %d checkpoints, want its burst (3)", took)
	}
	if most > 2 {
		t.Fatalf("%d guest checkpoints ran at once on the host, want at most 2", most)
	}
	// Refused, nothing done: the same VM, its files, three checkpoints.
	if err := r.mgr.GuestRollback(s.ID, "ckpt-1"); err == nil || !strings.Contains(err.Error(), "too many") {
		t.Fatalf("a rollback past the guest's burst: %v, want refused", err)
	}
	r.wantState(s.ID, api.StateRunning, "")
	if r.vmOf(s.ID).PID() != pid {
		t.Fatal("a refused guest request replaced the VM")
	}
	r.wantFile(s.ID, "/root/f", "one\n")
	if got := r.checkpointNames(s.ID); got != "ckpt-1,ckpt-2,ckpt-3" {
		t.Fatalf("checkpoints after the flood: %q", got)
	}
	r.wantCheckpointsWhole(s.ID)
	// The owner's API is not the guest's bucket, but the cap holds for
	// both.
	r.checkpoint(s.ID, "")
	r.checkpoint(s.ID, "")
	_, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{})
	wantCode(t, "a checkpoint past the most a session holds", err, api.CodeConflict)
	if !strings.Contains(err.Error(), "the most it may") {
		t.Fatalf("past the cap: %v", err)
	}
	_, err = r.mgr.Fork(ctx, s.ID, api.ForkRequest{})
	wantCode(t, "a fork needing a checkpoint past the cap", err, api.CodeConflict)
	r.wantCheckpointsWhole(s.ID)
	// Removing one makes room.
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "ckpt-1"); err != nil {
		t.Fatal(err)
	}
	r.checkpoint(s.ID, "")
	r.echo(other.ID)
}

// TestFakeForkCrashWhileCopying kills the server while a fork's files are
// copied (the first of three made): after the restart no fork is recorded, its copies are gone, the
// parent runs, and a fork works.
func TestFakeForkCrashWhileCopying(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	p := r.create(api.CreateSessionRequest{})
	r.write(p.ID, "/root/f", "at fork\n")
	r.checkpoint(p.ID, "c")
	r.crashAt("fork.copied", nil, func(m *session.Manager) {
		_, _ = m.Fork(context.Background(), p.ID, api.ForkRequest{From: "c", N: 3})
	})
	r.wantState(p.ID, api.StateRunning, "")
	if ss, err := r.mgr.List(context.Background()); err != nil || len(ss) != 1 {
		t.Fatalf("sessions after the crash: %d, %v", len(ss), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.dir, ".clone-files")); len(ents) != 0 {
		t.Fatalf("a fork cut short left %d dirs of copies", len(ents))
	}
	r.wantCheckpointsWhole(p.ID)
	forks := r.fork(p.ID, api.ForkRequest{From: "c"})
	r.wantFile(forks[0].ID, "/root/f", "at fork\n")
}
