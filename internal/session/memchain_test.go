package session_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/testenv"
)

// touched is the RAM the tests' guests hold: 8 MiB of data.
const touched = 8 << 20

// memPath is the RAM file of session id's VM.
func (r *fakeRig) memPath(id string) string { return filepath.Join(r.dir, id, "mem") }

// touchMem writes b into session id's RAM file at off, as its guest
// writes its memory.
func (r *fakeRig) touchMem(id string, off int64, b []byte) {
	r.t.Helper()
	f, err := os.OpenFile(r.memPath(id), os.O_RDWR, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		r.t.Fatal(err)
	}
}

// readMem returns what session id's RAM file holds.
func (r *fakeRig) readMem(id string) []byte {
	r.t.Helper()
	b, err := os.ReadFile(r.memPath(id))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// wantMem fails unless session id's RAM file holds want.
func (r *fakeRig) wantMem(id, what string, want []byte) {
	r.t.Helper()
	if got := r.readMem(id); !bytes.Equal(got, want) {
		r.t.Fatalf("%s: the RAM file differs from the checkpoint's (%d bytes, want %d)", what, len(got), len(want))
	}
}

// ckptFiles names the files in checkpoint name's dir of session id.
func (r *fakeRig) ckptFiles(id, name string) string {
	r.t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.dir, id, "checkpoints", name))
	if err != nil {
		r.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}

func (r *fakeRig) getCheckpoint(id, name string) api.Checkpoint {
	r.t.Helper()
	c, err := r.mgr.GetCheckpoint(context.Background(), id, name)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// guestData is memory a guest filled: not zeros, not one repeated page.
func guestData(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// TestFakeCheckpointsShareMemory: after a small change, a checkpoint's
// RAM adds about the pages that changed, not the RAM the guest holds;
// rollbacks and forks from such checkpoints get exactly the RAM each was
// taken with, also after the checkpoints they rest on were removed.
func TestFakeCheckpointsShareMemory(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.touchMem(s.ID, 4<<20, guestData(touched, 1))
	r.write(s.ID, "/root/f", "one\n")
	r.checkpoint(s.ID, "c1")
	r.touchMem(s.ID, 5<<20, []byte("a small change after c1"))
	r.write(s.ID, "/root/f", "two\n")
	r.checkpoint(s.ID, "c2")
	mem2 := r.readMem(s.ID)
	r.touchMem(s.ID, 30<<20, []byte("another after c2"))
	r.checkpoint(s.ID, "c3")
	mem3 := r.readMem(s.ID)
	r.touchMem(s.ID, 40<<20, []byte("after every checkpoint"))
	r.mgr.WaitMemEncodes()

	for _, name := range []string{"c1", "c2", "c3"} {
		if got := r.ckptFiles(s.ID, name); got != "mem.qcow2,state" {
			t.Fatalf("checkpoint %s holds %s, want its RAM re-encoded", name, got)
		}
	}
	// An image's session: the first checkpoint holds the RAM's data; the
	// later ones about their change (a 64 KiB cluster, with the state
	// and the disk layer).
	if c1 := r.getCheckpoint(s.ID, "c1"); c1.Bytes < touched {
		t.Errorf("c1 is %d bytes; the guest's RAM holds %d", c1.Bytes, touched)
	}
	for _, name := range []string{"c2", "c3"} {
		if c := r.getCheckpoint(s.ID, name); c.Bytes > touched/8 {
			t.Errorf("%s adds %d bytes after a change of a few bytes to %d of RAM", name, c.Bytes, touched)
		}
	}

	if _, err := r.mgr.Rollback(ctx, s.ID, "c2"); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	r.wantMem(s.ID, "rollback to c2", mem2)
	r.wantFile(s.ID, "/root/f", "two\n")
	forks := r.fork(s.ID, api.ForkRequest{N: 2, From: "c3"})
	for _, f := range forks {
		r.wantMem(f.ID, "fork from c3", mem3)
	}
	// c2 goes: c3 rests on c1 from now on and reads the same.
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "c2"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.Rollback(ctx, s.ID, "c3"); err != nil {
		t.Fatalf("rollback after the base's removal: %v", err)
	}
	r.wantMem(s.ID, "rollback to c3 after c2's removal", mem3)
	// c1 goes: c3 rests on nothing.
	if err := r.mgr.DeleteCheckpoint(ctx, s.ID, "c1"); err != nil {
		t.Fatal(err)
	}
	if got := r.checkpointNames(s.ID); got != "c3" {
		t.Fatalf("checkpoints: %s", got)
	}
	r.touchMem(s.ID, 4<<20, []byte("overwritten"))
	if _, err := r.mgr.Rollback(ctx, s.ID, "c3"); err != nil {
		t.Fatalf("rollback after every base's removal: %v", err)
	}
	r.wantMem(s.ID, "rollback to c3 alone", mem3)

	// A clone of a template: its first checkpoint rests on the
	// template's RAM and adds about its change.
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "t", FromCheckpoint: s.ID + ":c3"}); err != nil {
		t.Fatalf("template from a checkpoint: %v", err)
	}
	clone := r.create(api.CreateSessionRequest{Template: "t"})
	r.wantMem(clone.ID, "clone of a template from c3", mem3)
	r.touchMem(clone.ID, 6<<20, []byte("the clone's change"))
	want := r.readMem(clone.ID)
	r.checkpoint(clone.ID, "k")
	r.mgr.WaitMemEncodes()
	if c := r.getCheckpoint(clone.ID, "k"); c.Bytes > touched/8 {
		t.Errorf("a clone's first checkpoint adds %d bytes after a small change to its template's %d of RAM", c.Bytes, touched)
	}
	r.touchMem(clone.ID, 6<<20, []byte("changed again......"))
	if _, err := r.mgr.Rollback(ctx, clone.ID, "k"); err != nil {
		t.Fatal(err)
	}
	r.wantMem(clone.ID, "clone's rollback", want)
}

// TestFakeMemoryEncodeCrashes: a server killed while a checkpoint's RAM is
// re-encoded, or while a removal rebases the RAM resting on it, leaves
// every checkpoint whole: the next start finishes or redoes the work, and
// rollbacks get the checkpoints' RAM exactly.
func TestFakeMemoryEncodeCrashes(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"memchain.encoded", "memchain.renamed", "memchain.recorded"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRig(t)
			s := r.create(api.CreateSessionRequest{})
			r.touchMem(s.ID, 4<<20, guestData(touched, 2))
			r.checkpoint(s.ID, "c1")
			r.mgr.WaitMemEncodes()
			r.touchMem(s.ID, 5<<20, []byte("changed"))
			want := r.readMem(s.ID)
			r.crashAt(step, nil, func(m *session.Manager) {
				_, _ = m.CreateCheckpoint(context.Background(), s.ID, api.CheckpointRequest{Name: "c2"})
			})
			r.mgr.WaitMemEncodes()
			if got := r.ckptFiles(s.ID, "c2"); got != "mem.qcow2,state" {
				t.Fatalf("after the crash and a start, c2 holds %s", got)
			}
			if c := r.getCheckpoint(s.ID, "c2"); c.Bytes > touched/8 {
				t.Errorf("c2 is %d bytes", c.Bytes)
			}
			r.touchMem(s.ID, 5<<20, []byte("later!!"))
			if _, err := r.mgr.Rollback(context.Background(), s.ID, "c2"); err != nil {
				t.Fatal(err)
			}
			r.wantMem(s.ID, "rollback after the crash", want)
		})
	}
	for _, step := range []string{"memchain.rebasing", "memchain.rebased"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRig(t)
			s := r.create(api.CreateSessionRequest{})
			r.touchMem(s.ID, 4<<20, guestData(touched, 3))
			r.checkpoint(s.ID, "c1")
			r.touchMem(s.ID, 5<<20, []byte("changed"))
			r.checkpoint(s.ID, "c2")
			want2 := r.readMem(s.ID)
			r.touchMem(s.ID, 6<<20, []byte("changed again"))
			r.checkpoint(s.ID, "c3")
			want3 := r.readMem(s.ID)
			r.mgr.WaitMemEncodes()
			r.crashAt(step, nil, func(m *session.Manager) {
				_ = m.DeleteCheckpoint(context.Background(), s.ID, "c2")
			})
			r.mgr.WaitMemEncodes()
			// c2 is kept (the removal never reached its record) and whole;
			// c3 rests on c2 or on c1, and reads the same.
			if got := r.checkpointNames(s.ID); got != "c1,c2,c3" {
				t.Fatalf("checkpoints after the crash: %s", got)
			}
			for _, c := range []struct {
				name string
				want []byte
			}{{"c3", want3}, {"c2", want2}} {
				if got := r.ckptFiles(s.ID, c.name); got != "mem.qcow2,state" {
					t.Fatalf("%s holds %s", c.name, got)
				}
				if _, err := r.mgr.Rollback(context.Background(), s.ID, c.name); err != nil {
					t.Fatal(err)
				}
				r.wantMem(s.ID, "rollback to "+c.name+" after the crash", c.want)
			}
			// The removal, done again, completes.
			if err := r.mgr.DeleteCheckpoint(context.Background(), s.ID, "c2"); err != nil {
				t.Fatal(err)
			}
			if _, err := r.mgr.Rollback(context.Background(), s.ID, "c3"); err != nil {
				t.Fatal(err)
			}
			r.wantMem(s.ID, "rollback to c3 after c2's removal", want3)
		})
	}
}

// TestFakeCorruptMemoryChainRefused: a checkpoint whose RAM no longer
// reads as it was taken (its base changed under it) is refused by a
// rollback and a fork with a clear error, and the session runs on as it
// was.
func TestFakeCorruptMemoryChainRefused(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		testenv.Skipf(t, "qemu-io not installed")
	}
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.touchMem(s.ID, 4<<20, guestData(touched, 4))
	r.checkpoint(s.ID, "c1")
	r.touchMem(s.ID, 5<<20, []byte("changed"))
	r.checkpoint(s.ID, "c2")
	r.mgr.WaitMemEncodes()
	r.write(s.ID, "/root/f", "now\n")
	now := r.readMem(s.ID)
	// c1's RAM, c2's base, altered where c2 holds nothing of its own.
	base := filepath.Join(r.dir, s.ID, "checkpoints", "c1", "mem.qcow2")
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 8M 4k", base).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	_, err := r.mgr.Rollback(ctx, s.ID, "c2")
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("rollback to a checkpoint whose RAM changed: %v, want a checksum mismatch", err)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "now\n")
	r.wantMem(s.ID, "after the refused rollback", now)
	if _, err := r.mgr.Fork(ctx, s.ID, api.ForkRequest{From: "c2"}); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("fork from a checkpoint whose RAM changed: %v, want a checksum mismatch", err)
	}
}

// TestFakeCheckpointAfterRollbackRestsOnItsOrigin: a checkpoint taken
// after a rollback to an older one keeps what changed since that one, not
// since the latest (whose changes the rollback undid); also across a park.
func TestFakeCheckpointAfterRollbackRestsOnItsOrigin(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.touchMem(s.ID, 4<<20, guestData(touched, 5))
	r.checkpoint(s.ID, "c1")
	// A large change, kept in c2, then undone by a rollback to c1.
	r.touchMem(s.ID, 16<<20, guestData(4<<20, 6))
	r.checkpoint(s.ID, "c2")
	if _, err := r.mgr.Rollback(ctx, s.ID, "c1"); err != nil {
		t.Fatal(err)
	}
	r.park(s.ID)
	r.echo(s.ID)
	r.touchMem(s.ID, 5<<20, []byte("a small change after the rollback"))
	want := r.readMem(s.ID)
	r.checkpoint(s.ID, "c3")
	r.mgr.WaitMemEncodes()
	if c := r.getCheckpoint(s.ID, "c3"); c.Bytes > 1<<20 {
		t.Errorf("c3 adds %d bytes after a small change since c1 (c2's 4 MiB change undone)", c.Bytes)
	}
	r.touchMem(s.ID, 5<<20, []byte("changed"))
	if _, err := r.mgr.Rollback(ctx, s.ID, "c3"); err != nil {
		t.Fatal(err)
	}
	r.wantMem(s.ID, "rollback to c3", want)
}
