package vmtest

import (
	"context"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/qmp"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
)

// QEMUHarness is the vmm conformance suite's harness for d, a QEMU driver
// on this host, used directly or through a wrapper (a remote node's
// driver served from this host): VMs of the tiny image whose ids start
// with prefix, killed by signalling their PID, paused over QMP.
func QEMUHarness(d vmm.Driver, prefix string) vmmtest.Harness {
	return vmmtest.Harness{
		Driver: d,
		Spec:   func(t *testing.T) vmm.Spec { return TinySpec(t, prefix) },
		Kill: func(t *testing.T, vm vmm.VM) {
			// The VMs run on this machine: their PIDs are ours to signal.
			if err := syscall.Kill(vm.PID(), syscall.SIGKILL); err != nil {
				t.Fatalf("kill QEMU %d: %v", vm.PID(), err)
			}
		},
		Pause:   pauseOverQMP,
		MemFile: qemu.MemFile,
		Timeout: 2 * time.Minute,
	}
}

// TinySpec is the spec of a tiny-image VM in a fresh directory, with its
// own disk overlay, and an id that starts with prefix.
func TinySpec(t *testing.T, prefix string) vmm.Spec {
	t.Helper()
	env := Get(t)
	im := env.Image(t, "tiny")
	dir := Dir(t)
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.RootFS, "-F", "raw", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	base := filepath.Base(dir)
	return vmm.Spec{ID: prefix + base[len(base)-6:], Dir: dir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd,
		Disk: disk, MemoryMiB: 256, CPUs: 1}
}

// pauseOverQMP stops the guest with QMP's stop, on a connection of its
// own (the suite has released the VM's).
func pauseOverQMP(t *testing.T, spec vmm.Spec, _ vmm.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, filepath.Join(spec.Dir, qemu.QMPSocket))
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	defer c.Close()
	if _, err := c.Execute(ctx, "stop", nil); err != nil {
		t.Fatalf("pause: %v", err)
	}
}
