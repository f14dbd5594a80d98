package qemu_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// TestBootRetriesATimerlessGuest: under TCG a guest kernel whose APIC
// timer calibration a loaded host cut short comes up without a timer and
// halts for good (see timer.go). The driver boots such a guest again, a
// bounded number of times, and then fails the boot with
// vmm.ErrGuestStalled instead of leaving a guest that never answers.
// A TSC rate told 260,000 times too low (tsc_early_khz=10, after the
// driver's own) makes every boot's calibration wait well under a
// microsecond, as a host stall does: the same timerless state, on
// purpose, in its two forms. (At 1000 the wait was 40 µs, and a loaded
// host preempting the vCPU within it made a calibration pass.)
func TestBootRetriesATimerlessGuest(t *testing.T) {
	// Halted: the kernel waits for a tick. Spinning (idle=poll: its idle
	// loop polls instead of halting): it burns CPU waiting.
	for _, c := range []struct{ name, cmdline string }{
		{"halted", "tsc_early_khz=10"},
		{"spinning", "tsc_early_khz=10 idle=poll"},
	} {
		t.Run(c.name, func(t *testing.T) { bootTimerless(t, c.cmdline) })
	}
}

func bootTimerless(t *testing.T, cmdline string) {
	// TCG, whatever the host has: the watch is for TCG guests (a KVM
	// guest has a TSC-deadline timer and calibrates nothing).
	d, err := qemu.New(qemu.Config{Accel: "tcg", User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", GuestCmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	spec := tinySpec(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm, err := d.Boot(ctx, spec)
	if err == nil {
		vm.Stop(context.Background())
		t.Fatal("a guest booted without a timer: Boot returned it, want ErrGuestStalled")
	}
	if !errors.Is(err, vmm.ErrGuestStalled) || !strings.Contains(err.Error(), "without a timer") || !strings.Contains(err.Error(), "3 times") {
		t.Fatalf("Boot of a timerless guest: %v; want ErrGuestStalled after 3 boots", err)
	}
	// No QEMU of the guest's is left behind.
	if out, err := exec.Command("pgrep", "-f", "cove-"+spec.ID+",").Output(); err == nil {
		t.Errorf("QEMU processes left: %s", out)
	}
}
