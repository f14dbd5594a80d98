package remote_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/qmp"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/vmmtest"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestQEMURemoteConformance runs the conformance suite against the QEMU
// driver served over the wire, booting the tiny image: the real guest
// agent's protocol runs through the node's relay.
func TestQEMURemoteConformance(t *testing.T) {
	vmmtest.Run(t, func(t *testing.T) vmmtest.Harness {
		vmtest.Require(t)
		qd, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(qd.Close)
		d, _ := serve(t, qd)
		return vmmtest.Harness{
			Driver: d,
			Spec:   tinySpec,
			Kill: func(t *testing.T, vm vmm.VM) {
				// The node is this machine: its PID is ours to signal.
				if err := syscall.Kill(vm.PID(), syscall.SIGKILL); err != nil {
					t.Fatalf("kill QEMU %d: %v", vm.PID(), err)
				}
			},
			Pause:   pauseOverQMP,
			MemFile: qemu.MemFile,
			Timeout: 2 * time.Minute,
		}
	})
}

// tinySpec is the spec of a tiny-image VM in a fresh directory, with its
// own disk overlay.
func tinySpec(t *testing.T) vmm.Spec {
	t.Helper()
	env := vmtest.Get(t)
	im := env.Image(t, "tiny")
	dir := vmtest.Dir(t)
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.RootFS, "-F", "raw", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	base := filepath.Base(dir)
	return vmm.Spec{ID: "r" + base[len(base)-6:], Dir: dir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd,
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
