package session_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestCheckpointRollbackForkIsExact holds state in a live process's
// memory, in tmpfs and on disk; checkpoints the running session; changes
// all of it and starts a new process; rolls back: everything is the
// checkpoint's, the new process is gone, the old one runs (same PID).
// Then it forks the checkpoint two ways: the forks read different random
// bytes, a file written in one is absent in the other and in the parent,
// and they still answer once the parent is removed. A template made from
// the checkpoint clones to the checkpoint's state.
func TestCheckpointRollbackForkIsExact(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{})
	// The holder keeps a value in its memory only; USR2 changes it (and
	// says so in /ck/usr2), USR1 writes it to /root/dump.
	r.sh(t, s.ID, `mkdir -p /dev/shm/ck && ln -s /dev/shm/ck /ck && echo T1 > /ck/t && echo D1 > /root/d && sync
(v=before; trap 'echo $v > /root/dump' USR1; trap 'v=changed; : > /ck/usr2' USR2; while true; do sleep 0.1; done) </dev/null >/dev/null 2>&1 &
echo $! > /ck/holder`)
	holder := strings.TrimSpace(r.sh(t, s.ID, "cat /ck/holder"))
	dump := func(id string) string {
		t.Helper()
		r.sh(t, id, "rm -f /root/dump; kill -USR1 "+holder)
		if !waitFor(time.Minute, func() bool {
			return r.run(t, id, api.ExecRequest{Argv: []string{"test", "-s", "/root/dump"}}, nil).status.Code == 0
		}) {
			t.Fatalf("%s: the holder never wrote its value", id)
		}
		return strings.TrimSpace(r.sh(t, id, "cat /root/dump; rm -f /root/dump"))
	}
	if got := dump(s.ID); got != "before" {
		t.Fatalf("holder's value: %q", got)
	}

	c, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "c1"})
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	t.Logf("checkpoint %s: %d bytes, paused %d ms", c.Name, c.Bytes, c.PauseMillis)
	// A second after a small change: once re-encoded onto the first, its
	// RAM adds about the pages that changed. Each rollback and fork
	// below reads RAM back from such a chain.
	r.sh(t, s.ID, "echo small > /root/small; sync")
	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "c2"}); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	r.mgr.WaitMemEncodes()
	c1, _ := r.mgr.GetCheckpoint(ctx, s.ID, "c1")
	c2, _ := r.mgr.GetCheckpoint(ctx, s.ID, "c2")
	t.Logf("re-encoded: c1 %d bytes, c2 %d bytes (%d MiB of RAM)", c1.Bytes, c2.Bytes, s.MemoryMiB)
	for _, name := range []string{"c1", "c2"} {
		if _, err := os.Stat(filepath.Join(r.dir, s.ID, "checkpoints", name, "mem.qcow2")); err != nil {
			t.Fatalf("checkpoint %s's RAM not re-encoded: %v", name, err)
		}
	}
	if c2.Bytes*4 > c1.Bytes {
		t.Errorf("a checkpoint after a small change adds %d bytes; the one before it holds %d", c2.Bytes, c1.Bytes)
	}
	// The session ran on: change everything.
	r.sh(t, s.ID, "kill -USR2 "+holder+"; echo T2 > /ck/t; echo D2 > /root/d; echo new > /root/new; sync")
	// A USR1 pending with the USR2 would be handled first (the shell runs
	// traps in signal order): wait until the value changed.
	if !waitFor(time.Minute, func() bool {
		return r.run(t, s.ID, api.ExecRequest{Argv: []string{"test", "-e", "/ck/usr2"}}, nil).status.Code == 0
	}) {
		t.Fatal("the holder never took USR2")
	}
	r.sh(t, s.ID, "sleep 10007 </dev/null >/dev/null 2>&1 & echo $! > /root/newpid")
	newPID := strings.TrimSpace(r.sh(t, s.ID, "cat /root/newpid"))
	if got := dump(s.ID); got != "changed" {
		t.Fatalf("holder's value after USR2: %q", got)
	}

	start := time.Now()
	if _, err := r.mgr.Rollback(ctx, s.ID, "c1"); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	t.Logf("rollback took %s", time.Since(start).Round(time.Millisecond))
	if got := r.sh(t, s.ID, "cat /ck/t /root/d; test -e /root/new || echo gone"); got != "T1\nD1\ngone\n" {
		t.Fatalf("after the rollback: tmpfs, disk, and a file written since: %q, want T1, D1, gone", got)
	}
	if got := dump(s.ID); got != "before" {
		t.Fatalf("holder's value after the rollback: %q, want before", got)
	}
	if got := r.sh(t, s.ID, "cat /proc/"+newPID+"/cmdline 2>/dev/null | tr '\\0' ' '; echo"); strings.Contains(got, "10007") {
		t.Fatalf("the process started after the checkpoint runs after the rollback: %q", got)
	}

	// Its QEMU killed, the session fails; the checkpoint brings it back.
	r.sh(t, s.ID, "echo D3 > /root/d; sync")
	if err := syscall.Kill(qemuPID(t, r.dir, s.ID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool {
		got, err := r.mgr.Get(ctx, s.ID)
		return err == nil && got.State == api.StateFailed
	}) {
		t.Fatal("the session whose QEMU was killed never failed")
	}
	if _, err := r.mgr.Rollback(ctx, s.ID, "c1"); err != nil {
		t.Fatalf("rollback of the failed session: %v", err)
	}
	if got := r.sh(t, s.ID, "cat /ck/t /root/d"); got != "T1\nD1\n" {
		t.Fatalf("after the rollback of the failed session: %q, want T1, D1", got)
	}
	if got := dump(s.ID); got != "before" {
		t.Fatalf("holder's value after the rollback of the failed session: %q, want before", got)
	}

	forks, err := r.mgr.Fork(ctx, s.ID, api.ForkRequest{N: 2, From: "c1"})
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	random := map[string]bool{}
	for _, f := range forks {
		if f.Parent != s.ID || f.FromCheckpoint != "c1" || f.Owner != s.Owner {
			t.Fatalf("fork %+v", f)
		}
		if got := r.sh(t, f.ID, "cat /ck/t /root/d"); got != "T1\nD1\n" {
			t.Fatalf("fork %s: %q", f.ID, got)
		}
		if got := dump(f.ID); got != "before" {
			t.Fatalf("fork %s: holder's value %q", f.ID, got)
		}
		random[r.sh(t, f.ID, "head -c 16 /dev/urandom | od -An -tx1")] = true
	}
	if len(random) != 2 {
		t.Fatalf("the forks read the same random bytes: %v", random)
	}
	r.sh(t, forks[0].ID, "echo mine > /root/only0; sync")
	for _, id := range []string{forks[1].ID, s.ID} {
		if res := r.run(t, id, api.ExecRequest{Argv: []string{"test", "-e", "/root/only0"}}, nil); res.status.Code == 0 {
			t.Fatalf("a file written in fork %s is in %s", forks[0].ID, id)
		}
	}
	// A template made from the checkpoint: its clones are the checkpoint,
	// and rest on nothing of the session's.
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "from-c1", FromCheckpoint: s.ID + ":c1"}); err != nil {
		t.Fatalf("template from the checkpoint: %v", err)
	}
	// c1 goes: c2's RAM, which rests on it, is rebased first; a
	// rollback to c2 is exact.
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.Rollback(ctx, s.ID, "c2"); err != nil {
		t.Fatalf("rollback to c2: %v", err)
	}
	if got := r.sh(t, s.ID, "cat /ck/t /root/d /root/small"); got != "T1\nD1\nsmall\n" {
		t.Fatalf("after the rollback to c2: %q", got)
	}
	if got := dump(s.ID); got != "before" {
		t.Fatalf("holder's value after the rollback to c2: %q, want before", got)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	clone := r.create(t, api.CreateSessionRequest{Template: "from-c1"})
	if got := r.sh(t, clone.ID, "cat /ck/t /root/d"); got != "T1\nD1\n" {
		t.Fatalf("clone of the template from the checkpoint: %q", got)
	}
	if got := dump(clone.ID); got != "before" {
		t.Fatalf("clone of the template from the checkpoint: holder's value %q", got)
	}
	if err := r.mgr.Delete(ctx, clone.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.DeleteTemplate(ctx, "from-c1"); err != nil {
		t.Fatal(err)
	}
	for _, f := range forks {
		if got := r.sh(t, f.ID, "cat /root/d; echo ok > /root/after; cat /root/after"); got != "D1\nok\n" {
			t.Fatalf("fork %s after its parent's removal: %q", f.ID, got)
		}
	}
	// A fork parks and wakes as any session.
	if _, err := r.mgr.Park(ctx, forks[0].ID); err != nil {
		t.Fatal(err)
	}
	if got := r.sh(t, forks[0].ID, "cat /root/only0"); got != "mine\n" {
		t.Fatalf("fork after park and wake: %q", got)
	}
}

// TestTemplateFromALaterCheckpointKeepsEveryLayer makes a template from a
// session's second checkpoint, whose disk is a chain of two layers on the
// image: a clone of it reads, from its disk (the guest's caches dropped),
// what was written before the first checkpoint as well as after it. The
// flattening once copied the top layer only.
func TestTemplateFromALaterCheckpointKeepsEveryLayer(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{})
	// A MiB of random bytes: data blocks of their own (a few bytes would
	// sit in the inode, whose block the later writes copy up anyway).
	r.sh(t, s.ID, "head -c 1048576 /dev/urandom > /root/first; sync")
	sum := r.sh(t, s.ID, "sha256sum /root/first")
	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "c1"}); err != nil {
		t.Fatalf("checkpoint c1: %v", err)
	}
	r.sh(t, s.ID, "echo second > /root/second; sync")
	if _, err := r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "c2"}); err != nil {
		t.Fatalf("checkpoint c2: %v", err)
	}
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "from-c2", FromCheckpoint: s.ID + ":c2"}); err != nil {
		t.Fatalf("template from c2: %v", err)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	clone := r.create(t, api.CreateSessionRequest{Template: "from-c2"})
	got := r.sh(t, clone.ID, "sync; echo 3 > /proc/sys/vm/drop_caches; sha256sum /root/first 2>&1; cat /root/second 2>&1")
	if want := sum + "second\n"; got != want {
		t.Fatalf("clone of the template from the second checkpoint, read from its disk: %q, want %q", got, want)
	}
	if err := r.mgr.Delete(ctx, clone.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.DeleteTemplate(ctx, "from-c2"); err != nil {
		t.Fatal(err)
	}
}
