package session_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmtest"
)

func TestTmpPanic(t *testing.T) {
	r := newRig(t, rigOptions{})
	env := vmtest.Get(t)
	im := env.Image(t, "tiny")
	id := "s-dbgpanic"
	dir := filepath.Join(r.dir, id)
	os.Mkdir(dir, 0o700)
	disk := filepath.Join(dir, "disk.qcow2")
	exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.RootFS, "-F", "raw", disk).Run()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	vm, err := r.driver.Boot(ctx, vmm.Spec{ID: id, Dir: dir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd, Disk: disk, MemoryMiB: 256, CPUs: 1, Cmdline: "rdinit=/no-such-init"})
	if err != nil {
		t.Fatal(err)
	}
	<-vm.Done()
	b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	t.Logf("%d bytes:\n%s", len(b), b)
	t.Logf("tail: %s", vm.ConsoleTail())
}
