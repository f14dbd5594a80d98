package session_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestQEMUKilledMidCheckpoint SIGKILLs a session's QEMU during a
// checkpoint: once the guest is paused and its disk switched, once its
// device state is written, and during the RAM copy. The checkpoint fails,
// or is listed whole; the session is failed with the reason (never
// running without a VM); no half-made checkpoint dir is left; and a
// rollback brings it back, memory and disk, from its earlier checkpoint
// (and from the cut one, if it was listed), after a restarted server
// found the same.
func TestQEMUKilledMidCheckpoint(t *testing.T) {
	parallelVM(t)
	hook := &stepHook{}
	opts := rigOptions{qemuStep: hook.step, adjust: func(c *session.Config) { c.CrashPoint = hook.step }}
	r := newRig(t, opts)
	top := t // a restarted rig outlives the subtest that restarts it
	ctx := context.Background()
	for _, step := range []string{"checkpoint.disk-switched", "checkpoint.migrated", "checkpoint.paused"} {
		t.Run(step, func(t *testing.T) {
			s := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
			check := memoryMarkOn(t, func() *rig { return r }, s.ID) // whichever rig r is by then
			r.sh(t, s.ID, "echo good > /root/f; sync")
			if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "good"}); err != nil {
				t.Fatal(err)
			}
			r.sh(t, s.ID, "echo later > /root/f; sync")
			hook.arm(step, func() { killQEMU(t, r.dir, s.ID) })
			_, cerr := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "cut"})
			t.Logf("checkpoint whose QEMU was killed at %s: %v", step, cerr)
			if !waitFor(30*time.Second, func() bool {
				got, _ := r.mgr.Get(ctx, s.ID)
				return got.State == api.StateFailed
			}) {
				got, _ := r.mgr.Get(ctx, s.ID)
				t.Fatalf("after its QEMU was killed mid-checkpoint: %s (%q), want failed", got.State, got.Error)
			}
			if pid := qemu.PIDOf(r.dir, s.ID); pid != 0 {
				t.Fatalf("a QEMU process (%d) runs for the failed session", pid)
			}
			list, err := r.mgr.ListCheckpoints(ctx, s.ID)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range list {
				names = append(names, c.Name)
			}
			if cerr != nil && slices.Contains(names, "cut") {
				t.Fatalf("the checkpoint failed (%v) but is listed", cerr)
			}
			ents, _ := os.ReadDir(filepath.Join(r.dir, s.ID, "checkpoints"))
			var dirs []string
			for _, e := range ents {
				dirs = append(dirs, e.Name())
			}
			if !slices.Equal(dirs, names) {
				t.Fatalf("checkpoint dirs %v, listed %v", dirs, names)
			}
			// A restarted server agrees.
			r.close()
			opts.dir, opts.db = r.dir, r.db
			r = openRig(top, opts)
			if err := r.mgr.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateFailed {
				t.Fatalf("after a restart: %s (%q), want failed", got.State, got.Error)
			}
			again, _ := r.mgr.ListCheckpoints(ctx, s.ID)
			if len(again) != len(names) {
				t.Fatalf("after a restart: %d checkpoints, before %v", len(again), names)
			}
			ents, _ = os.ReadDir(filepath.Join(r.dir, s.ID, "checkpoints"))
			if len(ents) != len(names) {
				t.Fatalf("after a restart: %d checkpoint dirs, listed %v", len(ents), names)
			}
			if slices.Contains(names, "cut") {
				if _, err := r.mgr.Rollback(ctx, s.ID, "cut"); err != nil {
					t.Fatalf("rollback of the failed session to the checkpoint its QEMU's end cut: %v", err)
				}
				if out := r.sh(t, s.ID, "cat /root/f"); out != "later\n" {
					t.Fatalf("after the rollback to cut: %q", out)
				}
			}
			if _, err := r.mgr.Rollback(ctx, s.ID, "good"); err != nil {
				t.Fatalf("rollback of the failed session to its good checkpoint: %v", err)
			}
			if out := r.sh(t, s.ID, "cat /root/f"); out != "good\n" {
				t.Fatalf("after the rollback to good: %q", out)
			}
			check("a rollback of a session whose QEMU was killed mid-checkpoint")
			if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning || strings.TrimSpace(got.Error) != "" {
				t.Fatalf("after the rollback: %s (%q)", got.State, got.Error)
			}
			if err := r.mgr.Delete(ctx, s.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestQEMUKilledMidRollback SIGKILLs a session's QEMU while its rollback
// stages the checkpoint's files (the VM still runs then): the rollback
// goes on, from the checkpoint's files, and the session runs at the
// checkpoint with its memory.
func TestQEMUKilledMidRollback(t *testing.T) {
	parallelVM(t)
	hook := &stepHook{}
	r := newRig(t, rigOptions{adjust: func(c *session.Config) { c.CrashPoint = hook.step }})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	check := memoryMark(t, r, s.ID)
	r.sh(t, s.ID, "echo good > /root/f; sync")
	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "good"}); err != nil {
		t.Fatal(err)
	}
	r.sh(t, s.ID, "echo later > /root/f; sync")
	hook.arm("rollback.staged", func() { killQEMU(t, r.dir, s.ID) })
	if _, err := r.mgr.Rollback(ctx, s.ID, "good"); err != nil {
		t.Fatalf("rollback whose QEMU was killed while it staged: %v", err)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("after the rollback: %s (%q), want running", got.State, got.Error)
	}
	if out := r.sh(t, s.ID, "cat /root/f"); out != "good\n" {
		t.Fatalf("after the rollback: %q", out)
	}
	check("a rollback whose old QEMU was killed while it staged")
	if _, err := os.Stat(filepath.Join(r.dir, s.ID, "rollback.tmp")); !os.IsNotExist(err) {
		t.Fatalf("a staged rollback is left: %v", err)
	}
}

// TestCheckpointDiskFull checkpoints a real guest whose sessions dir (a
// size-limited tmpfs) has room for the device state but not for the RAM
// copy: refused (507) before the guest pauses, nothing kept; then with the
// disk filled by another writer after that check, during the RAM copy:
// the checkpoint fails saying so and gives back what it wrote. Each time
// the session runs on with its memory and disk, and once there is room
// the checkpoint and a rollback to it work.
func TestCheckpointDiskFull(t *testing.T) {
	parallelVM(t)
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "mounting a size-limited tmpfs needs root")
	}
	vmtest.Get(t)
	base := vmtest.Dir(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=640m,mode=0711", "tmpfs", base).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", base).CombinedOutput(); err != nil {
			t.Logf("umount: %v: %s", err, out)
		}
	})
	hook := &stepHook{}
	r := newRig(t, rigOptions{dir: filepath.Join(base, "sessions"), adjust: func(c *session.Config) { c.CrashPoint = hook.step }})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	check := memoryMark(t, r, s.ID)
	// Nothing dirty left in the guest: a guest disk write that finds no
	// room pauses the VM (werror=enospc), which is not this test's case.
	r.sh(t, s.ID, "echo one > /root/f; sync; sync")
	filler := filepath.Join(base, "filler")
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(base, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	fill := func(leave int64) {
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Error(err)
			return
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
	layers := func() []string {
		ms, _ := filepath.Glob(filepath.Join(r.dir, s.ID, "disk*.qcow2"))
		return ms
	}
	fill(32 << 20)
	before, was := free(), layers()
	_, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "full"})
	wantCode(t, "checkpoint on a full disk", err, api.CodeInsufficientStorage)
	if got := free(); got != before {
		t.Errorf("a checkpoint refused for room kept %d bytes", before-got)
	}
	if got := layers(); !slices.Equal(got, was) {
		t.Errorf("disk layers after a checkpoint refused for room: %v, before %v", got, was)
	}
	os.Remove(filler)
	check("a checkpoint refused for room")

	hook.arm("checkpoint.recorded", func() { fill(32 << 20) })
	_, err = r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "filled"})
	os.Remove(filler)
	if err == nil || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "copy memory") {
		t.Fatalf("checkpoint whose RAM copy filled the disk: %v, want the cause", err)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("after a checkpoint whose RAM copy filled the disk: %s (%q), want running", got.State, got.Error)
	}
	if list, _ := r.mgr.ListCheckpoints(ctx, s.ID); len(list) != 0 {
		t.Fatalf("checkpoints after failed ones: %+v", list)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.dir, s.ID, "checkpoints")); len(ents) != 0 {
		t.Fatalf("a failed checkpoint left %d dirs", len(ents))
	}
	check("a checkpoint whose RAM copy filled the disk")

	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "c"}); err != nil {
		t.Fatalf("checkpoint once there is room: %v", err)
	}
	r.sh(t, s.ID, "echo two > /root/f; sync")
	if _, err := r.mgr.Rollback(ctx, s.ID, "c"); err != nil {
		t.Fatal(err)
	}
	if out := r.sh(t, s.ID, "cat /root/f"); out != "one\n" {
		t.Fatalf("after the rollback: %q", out)
	}
	check("a checkpoint and a rollback once there was room")
}

// TestGuestFloodsCheckpointsForReal has a real guest run twenty
// 'cove-agent checkpoint' at once, and ask with names that are paths:
// its burst (3) is taken, the rest refused with a clear message, the bad
// names refused before counting, a rollback past the burst refused too;
// the guest runs on with its memory, and the server answers meanwhile.
func TestGuestFloodsCheckpointsForReal(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{adjust: func(c *session.Config) {
		c.GuestCheckpointBurst, c.GuestCheckpointEvery = 3, time.Hour
	}})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	check := memoryMark(t, r, s.ID)
	out := r.sh(t, s.ID, `for n in ../x /etc/passwd "$(printf 'a%.0s' $(seq 100))"; do cove-agent checkpoint --name "$n" >/dev/null 2>/tmp/bad.err; echo "rc=$? $(cat /tmp/bad.err)"; done`)
	if strings.Count(out, "rc=1 ") != 3 || strings.Count(out, "checkpoint name") != 3 {
		t.Fatalf("checkpoints named as paths: %q, want each refused (1) for its name", out)
	}
	r.sh(t, s.ID, `mkdir -p /tmp/flood; for i in $(seq 20); do (cove-agent checkpoint >/tmp/flood/$i.out 2>/tmp/flood/$i.err; echo $? >/tmp/flood/$i.rc) </dev/null >/dev/null 2>&1 & done`)
	if !waitFor(5*time.Minute, func() bool {
		return strings.TrimSpace(r.sh(t, s.ID, "ls /tmp/flood/*.rc 2>/dev/null | wc -l")) == "20"
	}) {
		t.Fatal("the flood's tools never all ended")
	}
	if _, err := r.mgr.List(ctx); err != nil {
		t.Fatalf("list during the flood: %v", err)
	}
	rcs := r.sh(t, s.ID, "cat /tmp/flood/*.rc | sort | uniq -c | tr -s ' '")
	if !strings.Contains(rcs, " 3 0\n") || !strings.Contains(rcs, " 17 1\n") {
		t.Fatalf("exit codes of 20 checkpoints at once: %q, want 3 taken and 17 refused", rcs)
	}
	if errs := r.sh(t, s.ID, "cat /tmp/flood/*.err"); strings.Count(errs, "too many checkpoint and rollback requests") != 17 {
		t.Fatalf("the refused tools said: %q", errs)
	}
	list, err := r.mgr.ListCheckpoints(ctx, s.ID)
	if err != nil || len(list) != 3 {
		t.Fatalf("checkpoints after the flood: %+v, %v; want 3", list, err)
	}
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "rollback", list[0].Name}}, nil)
	if res.status.Code == 0 || !strings.Contains(res.stderr, "too many") {
		t.Fatalf("a rollback past the burst: exit %+v, stderr %q; want refused", res.status, res.stderr)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("after the flood: %s (%q)", got.State, got.Error)
	}
	check("a guest's flood of checkpoints")
}
