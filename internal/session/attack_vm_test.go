package session_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// TestQEMUKilledMidCheckpoint SIGKILLs a session's QEMU during a
// checkpoint: once the guest is paused and its disk switched, once its
// device state is written, and during the RAM copy. The checkpoint fails,
// or is listed whole; the session is failed with the reason (never
// running without a VM); no half-made checkpoint dir is left; and a
// rollback brings it back, memory and disk, from its earlier checkpoint
// (and from the cut one, if it was listed).
func TestQEMUKilledMidCheckpoint(t *testing.T) {
	hook := &stepHook{}
	r := newRig(t, rigOptions{qemuStep: hook.step, adjust: func(c *session.Config) { c.CrashPoint = hook.step }})
	ctx := context.Background()
	for _, step := range []string{"checkpoint.disk-switched", "checkpoint.migrated", "checkpoint.paused"} {
		t.Run(step, func(t *testing.T) {
			s := r.create(t, api.CreateSessionRequest{MemoryMiB: 256})
			check := memoryMark(t, r, s.ID)
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
