package fake_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
)

func spec(t *testing.T) vmm.Spec {
	dir := t.TempDir()
	// A real qcow2 disk: a checkpoint stacks an overlay on it.
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "disk.qcow2"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	return vmm.Spec{ID: "s-" + filepath.Base(dir), Dir: dir, Kernel: "/fake/vmlinux", Initrd: "/fake/initrd",
		Disk: filepath.Join(dir, "disk.qcow2"), MemoryMiB: 64, CPUs: 1}
}

func harness(t *testing.T) vmmtest.Harness {
	d := fake.New()
	t.Cleanup(func() {
		if ids := d.Running(); len(ids) != 0 {
			t.Errorf("VMs left running: %v", ids)
		}
	})
	return vmmtest.Harness{
		Driver:  d,
		Spec:    spec,
		Kill:    func(t *testing.T, vm vmm.VM) { vm.(*fake.VM).Kill() },
		Pause:   func(t *testing.T, _ vmm.Spec, vm vmm.VM) { vm.(*fake.VM).Pause() },
		Timeout: 30 * time.Second,
		MemFile: fake.MemFile,
	}
}

func TestFakeConformance(t *testing.T) {
	t.Parallel()
	vmmtest.Run(t, harness)
}

func connect(t *testing.T, vm vmm.VM) *agentproto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Restore's hooks see the VM Incoming before the load and Paused after it,
// through a VM adopted from the handle Started gives.
func TestFakeRestoreStatusInHooks(t *testing.T) {
	t.Parallel()
	d := fake.New()
	ctx := context.Background()
	sp := spec(t)
	vm, err := d.Boot(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, vm)
	if err := c.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(sp.Dir, "state")
	if _, err := d.Save(ctx, vm, state); err != nil {
		t.Fatal(err)
	}
	var seen []vmm.Status
	var adopted vmm.VM
	sp.Started = func(ctx context.Context, h []byte) error {
		adopted, err = d.Adopt(ctx, h)
		return err
	}
	status := func(ctx context.Context) error {
		st, err := adopted.Status(ctx)
		seen = append(seen, st)
		return err
	}
	sp.BeforeLoad, sp.BeforeRun = status, status
	restored, _, err := d.Restore(ctx, sp, state)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Stop(ctx)
	if len(seen) != 2 || seen[0] != vmm.StatusIncoming || seen[1] != vmm.StatusPaused {
		t.Fatalf("statuses in BeforeLoad, BeforeRun: %v, want [incoming paused]", seen)
	}
}

// Each fault fires once, where its doc says.
func TestFakeFaults(t *testing.T) {
	t.Parallel()
	d := fake.New()
	ctx := context.Background()
	boom := errors.New("boom")

	d.FailNext(fake.OpBoot, boom)
	if _, err := d.Boot(ctx, spec(t)); !errors.Is(err, boom) {
		t.Fatalf("boot with OpBoot failing: %v", err)
	}
	if ids := d.Running(); len(ids) != 0 {
		t.Fatalf("a failed boot left %v running", ids)
	}
	sp := spec(t)
	vm, err := d.Boot(ctx, sp)
	if err != nil {
		t.Fatalf("the boot after a failed one: %v", err)
	}
	defer vm.Stop(ctx)
	connect(t, vm).Close()

	state := filepath.Join(sp.Dir, "state")
	d.FailNext(fake.OpSave, boom)
	if _, err := d.Save(ctx, vm, state); !errors.Is(err, boom) {
		t.Fatalf("save with OpSave failing: %v", err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed save left a state file: %v", err)
	}
	if st, err := vm.Status(ctx); err != nil || st != vmm.StatusRunning {
		t.Fatalf("after a failed save the VM is %s, %v; want running", st, err)
	}
	c := connect(t, vm)
	if err := c.Write(ctx, "/root/f", 0o600, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Save(ctx, vm, state); err != nil {
		t.Fatal(err)
	}

	for _, op := range []fake.Op{fake.OpRestore, fake.OpLoad} {
		d.FailNext(op, boom)
		if _, _, err := d.Restore(ctx, sp, state); !errors.Is(err, boom) {
			t.Fatalf("restore with %s failing: %v", op, err)
		}
		if ids := d.Running(); len(ids) != 0 {
			t.Fatalf("a restore failed at %s left %v running", op, ids)
		}
	}
	d.HangNext()
	hung, _, err := d.Restore(ctx, sp, state)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if c, _, err := agentproto.Connect(cctx, hung.DialAgent); err == nil {
		c.Close()
		t.Fatal("a hung guest answered")
	}
	hung.(*fake.VM).Kill()
	select {
	case <-hung.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("Done not closed after Kill")
	}
	// The snapshot was never run: it restores again, with the file.
	vm2, _, err := d.Restore(ctx, sp, state)
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Stop(ctx)
	rc, err := connect(t, vm2).Read(ctx, "/root/f")
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
}

// A restore whose caller dies in BeforeRun (a server crash) leaves the VM
// paused with its state loaded: Adopt and Resume run the guest, as cont
// runs a QEMU guest after an incoming migration.
func TestFakeResumeAfterRestoreCutShort(t *testing.T) {
	t.Parallel()
	d := fake.New()
	ctx := context.Background()
	sp := spec(t)
	vm, err := d.Boot(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, vm)
	if err := c.Write(ctx, "/root/f", 0o600, strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(sp.Dir, "state")
	if _, err := d.Save(ctx, vm, state); err != nil {
		t.Fatal(err)
	}
	handles := make(chan []byte, 1)
	inBeforeRun := make(chan struct{})
	release := make(chan struct{})
	sp.Started = func(_ context.Context, h []byte) error { handles <- h; return nil }
	sp.BeforeRun = func(context.Context) error {
		close(inBeforeRun)
		<-release
		return errors.New("the server that restored it is gone")
	}
	restoreDone := make(chan struct{})
	go func() {
		defer close(restoreDone)
		_, _, _ = d.Restore(ctx, sp, state)
	}()
	t.Cleanup(func() { close(release); <-restoreDone })
	<-inBeforeRun
	adopted, err := d.Adopt(ctx, <-handles)
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Stop(ctx)
	if st, err := adopted.Status(ctx); err != nil || st != vmm.StatusPaused {
		t.Fatalf("status of a loaded, never run VM: %s, %v; want paused", st, err)
	}
	if err := adopted.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	rc, err := connect(t, adopted).Read(ctx, "/root/f")
	if err != nil {
		t.Fatalf("read in the resumed guest: %v", err)
	}
	rc.Close()
}
