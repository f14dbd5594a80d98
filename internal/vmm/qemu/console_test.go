package qemu_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// consoleCap is the per-file console cap the console tests run with: small,
// so a flood past it is quick under emulation.
const consoleCap = 64 << 10

func newConsoleDriver(t *testing.T) *qemu.Driver {
	t.Helper()
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", ConsoleMaxBytes: consoleCap})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// flood has the guest write about n bytes of numbered lines to its serial
// console, then the line marker.
func flood(t *testing.T, c *agentproto.Client, n int, marker string) {
	t.Helper()
	script := fmt.Sprintf(`i=0; line=$(printf '%%070d' 0); while [ $i -lt %d ]; do echo "$i $line"; i=$((i+1)); done > /dev/ttyS0; echo %s > /dev/ttyS0`, n/80, marker)
	run(t, c, "sh", "-c", script)
}

// waitConsole waits until the console tail shows marker.
func waitConsole(t *testing.T, vm vmm.VM, marker string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(vm.ConsoleTail(), marker) {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q; tail: %s", marker, vm.ConsoleTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkConsoleFiles fails unless each console file is within the cap and
// the newest line in the tail is marker.
func checkConsoleFiles(t *testing.T, vm vmm.VM, dir, marker string) {
	t.Helper()
	var total int64
	for _, name := range []string{qemu.ConsoleLog, qemu.ConsoleLog + ".1"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("console file: %v", err)
		}
		if fi.Size() > consoleCap {
			t.Errorf("%s is %d bytes: over the %d cap", name, fi.Size(), consoleCap)
		}
		total += fi.Size()
	}
	if total < consoleCap {
		t.Errorf("console files hold %d bytes in all: want the newest output kept, at least %d", total, consoleCap)
	}
	lines := strings.Split(strings.TrimSpace(vm.ConsoleTail()), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != marker {
		t.Errorf("newest console line %q, want %q", last, marker)
	}
}

// TestConsoleCapped floods the serial console from inside a guest: the
// host keeps at most two capped files with the newest lines, through an
// adoption by another driver (a restarted server) and a save and restore.
func TestConsoleCapped(t *testing.T) {
	d := newConsoleDriver(t)
	vm, c, spec := bootTiny(t, d)
	flood(t, c, 8*consoleCap, "END-BOOTED")
	waitConsole(t, vm, "END-BOOTED")
	checkConsoleFiles(t, vm, spec.Dir, "END-BOOTED")
	c.Close()

	// A restarted server adopts the VM: the console goes on.
	if err := vm.Release(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	adopted, err := newConsoleDriver(t).Adopt(ctx, vm.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adopted.Stop(context.Background()) })
	c = connect(t, adopted, "adopted")
	flood(t, c, 4*consoleCap, "END-ADOPTED")
	waitConsole(t, adopted, "END-ADOPTED")
	checkConsoleFiles(t, adopted, spec.Dir, "END-ADOPTED")
	c.Close()

	// Parked and woken: the new QEMU process writes the same files.
	state := filepath.Join(spec.Dir, "state")
	if _, err := d.Save(ctx, adopted, state); err != nil {
		t.Fatal(err)
	}
	restored, _, err := d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restored.Stop(context.Background()) })
	c = connect(t, restored, "restored")
	flood(t, c, 4*consoleCap, "END-RESTORED")
	waitConsole(t, restored, "END-RESTORED")
	checkConsoleFiles(t, restored, spec.Dir, "END-RESTORED")
	c.Close()
}

// TestRestoreAcrossConsoleBackends saves a machine whose console was a file
// QEMU appended to (how earlier versions ran it) and restores it with
// today's command line: a chardev's backend is not part of the saved
// state, the serial device is, so the guest runs on and its console
// reaches the host.
func TestRestoreAcrossConsoleBackends(t *testing.T) {
	env := vmtest.Get(t)
	im := env.Image(t, "tiny")
	dir := vmtest.Dir(t)
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.RootFS, "-F", "raw", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	spec := vmm.Spec{ID: "c" + filepath.Base(dir)[len(filepath.Base(dir))-6:], Dir: dir, Kernel: env.Kernel.Vmlinux, Initrd: env.Initrd, Disk: disk, MemoryMiB: 256, CPUs: 1}
	d := newConsoleDriver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm, err := d.BootWithFileConsole(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(context.Background()) })
	c := connect(t, vm, "booted with a file console")
	run(t, c, "sh", "-c", "echo BEFORE-SAVE > /dev/ttyS0; echo 1 > /tmp/mark")
	waitConsole(t, vm, "BEFORE-SAVE")
	c.Close()
	state := filepath.Join(dir, "state")
	if _, err := d.Save(ctx, vm, state); err != nil {
		t.Fatal(err)
	}
	restored, _, err := d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restored.Stop(context.Background()) })
	c = connect(t, restored, "restored with a socket console")
	defer c.Close()
	if got := run(t, c, "cat", "/tmp/mark"); got != "1" {
		t.Fatalf("guest state after restore: /tmp/mark is %q", got)
	}
	run(t, c, "sh", "-c", "echo AFTER-RESTORE > /dev/ttyS0")
	waitConsole(t, restored, "AFTER-RESTORE")
	if tail := restored.ConsoleTail(); !strings.Contains(tail, "BEFORE-SAVE") {
		t.Errorf("console lost what came before the restore: %s", tail)
	}
}
