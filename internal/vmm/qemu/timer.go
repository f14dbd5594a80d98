package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
)

// Under TCG a guest kernel can come up without a timer, and then never
// boots. Its local APIC timer's rate is unknown to it (no TSC-deadline
// mode, no CPUID leaf that gives the rate, and microvm's hardware-reduced
// ACPI leaves it no PIT or HPET to fall back on), so it measures the rate
// once, early in boot: it reads the APIC timer, waits 25 jiffies by the
// TSC, and reads it again. The wait catches up on TSC time it missed, so
// when the host leaves the vCPU thread off a CPU for 100 ms or more just
// after the wait began (a loaded host), both reads come microseconds
// apart, the rate looks absurdly slow, and the kernel disables the timer
// ("APIC frequency too slow"). It boots on until the first sleep and then
// halts for good, waiting for a tick that never comes. make soak and the
// stress runs saw it in about 1 create in 20 at load 20 on 2 CPUs: the
// guest's console stops a second or two in, every virtio queue unused.
//
// Some such kernels spin instead, polling a jiffies count that no longer
// moves (the soak met one: RIP in the kernel, HLT=0, for 3 minutes).
//
// The driver cannot give the kernel the rate, so it watches for that
// state and boots such a guest again (see waitTimer). A kernel that
// passed the calibration unmasks the timer, and the watch ends there.

// bootAttempts bounds the boots of one guest that came up without a timer.
const bootAttempts = 3

// timerPoll is how often the watch looks; timerStuck is how long the
// timerless state must last (halted) or how much CPU it must burn
// (spinning) before the guest is booted again. Each look is a monitor
// command, run under QEMU's big lock, which the vCPU also takes for its
// APIC reads: on a loaded host a look can hold the vCPU up just as the
// calibration starts, the very stall the watch is for. At 100 ms the
// boot storm's guests came up timerless 15 times in 90 (all of them
// booted again), where earlier storms without the watch met none, so the
// watch looks seldom.
//
// timerSpin is the CPU time a spinning timerless guest must burn: a
// calibration busy-waits by the TSC for 100 ms of wall time, so it burns
// 100 ms of CPU at most, however the host starves it. 300 ms leaves 3x
// that; at a second (what it was), the soak's load met creates whose three
// boots each took so long to burn it (a vCPU given a tenth of a core burns
// a second in ten) that they ran out of their 3-minute boot timeout.
const (
	timerPoll  = time.Second
	timerStuck = time.Second
	timerSpin  = 300 * time.Millisecond
)

// errQEMUExited ends a watch whose QEMU is gone (the caller says why).
var errQEMUExited = errors.New("qemu exited")

// errNoTimer marks a guest found halted without a timer.
var errNoTimer = errors.New("the guest kernel came up without a timer (its APIC timer calibration was cut short by the host) and halted")

// bootWatched boots spec under TCG, watching each attempt until its
// kernel has a timer, and boots again (bootAttempts in all) one that
// halted without one. The watch ends early, leaving the guest to boot on,
// when ctx ends or QEMU cannot say (the caller's own wait for the agent
// then reports it).
func (d *Driver) bootWatched(ctx context.Context, spec vmm.Spec, argv []string) (*VM, error) {
	for attempt := 1; ; attempt++ {
		vm, err := d.spawn(ctx, spec, argv, spawnOpts{})
		if err != nil {
			return nil, err
		}
		err = vm.waitTimer(ctx)
		if !errors.Is(err, errNoTimer) {
			if err != nil && ctx.Err() == nil && !errors.Is(err, errQEMUExited) {
				// The guest boots on unwatched: say so, or a QEMU whose
				// monitor speaks otherwise would lose the watch unseen.
				d.cfg.Log.Warn("cannot watch the guest's timer; it boots on unwatched", "vm", spec.ID, "err", err)
			}
			return vm, nil
		}
		diag := vm.Diagnose(ctx)
		_ = vm.Stop(context.Background())
		if attempt == bootAttempts {
			return nil, fmt.Errorf("qemu: boot %s: %w, %d times: %w", spec.ID, err, attempt, vmm.ErrGuestStalled)
		}
		d.cfg.Log.Warn("guest kernel came up without a timer; booting it again", "vm", spec.ID, "attempt", attempt,
			"why", "its APIC timer calibration was cut short by the host (a loaded host)", "vmm", diag)
		// A fresh RAM file: the next guest starts from zeroed memory, as
		// the first did.
		if err := os.Remove(filepath.Join(spec.Dir, MemFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("qemu: boot %s: %w", spec.ID, err)
		}
	}
}

// waitTimer returns nil once the guest's kernel has set up its APIC timer,
// errNoTimer once it is found timerless, and the error that stopped it
// from looking otherwise. Timerless is the APIC timer as the calibration
// left it while the vCPU either stays halted for timerStuck (the kernel
// waits for a tick) or spends timerSpin of CPU time (it spins, polling a
// jiffies count that no longer moves): a calibration under way busy-waits
// 25 jiffies by the TSC, 100 ms of wall time, so it never halts and never
// burns more than 100 ms of CPU. CPU time, not wall time, so that a vCPU thread a
// loaded host starves for seconds is not taken for one.
func (vm *VM) waitTimer(ctx context.Context) error {
	var since time.Time
	var cpuAt time.Duration
	tid := 0 // vCPU 0's thread, looked up once
	for {
		st, err := vm.timerState(ctx)
		if err != nil {
			return err
		}
		switch {
		case st.armed:
			return nil
		case st.calibrating:
			if tid == 0 {
				if tid, err = vm.vcpuThread(ctx); err != nil {
					return err
				}
			}
			cpu, err := vm.threadTime(tid)
			if err != nil {
				return err
			}
			switch {
			case since.IsZero():
				since, cpuAt = time.Now(), cpu
			case st.halted && time.Since(since) >= timerStuck, cpu-cpuAt >= timerSpin:
				return errNoTimer
			case !st.halted:
				since = time.Now() // a halt must last timerStuck unbroken; CPU time adds up
			}
		default:
			since = time.Time{}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-vm.done:
			return errQEMUExited
		case <-time.After(timerPoll):
		}
	}
}

// vcpuThread is vCPU 0's thread id (QMP's query-cpus-fast).
func (vm *VM) vcpuThread(ctx context.Context) (int, error) {
	raw, err := vm.qmp.Execute(ctx, "query-cpus-fast", nil)
	if err != nil {
		return 0, err
	}
	var cpus []struct {
		ThreadID int `json:"thread-id"`
	}
	if err := json.Unmarshal(raw, &cpus); err != nil || len(cpus) == 0 {
		return 0, fmt.Errorf("query-cpus-fast: %q: %v", raw, err)
	}
	return cpus[0].ThreadID, nil
}

// threadTime is the CPU time QEMU's thread tid has used (from /proc).
func (vm *VM) threadTime(tid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", vm.pid, tid))
	if err != nil {
		return 0, fmt.Errorf("vCPU thread: %w", err)
	}
	// The fields after the command's closing parenthesis, from the
	// state: utime and stime are the 12th and 13th, in USER_HZ (100)
	// ticks.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("vCPU thread: stat %q", b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("vCPU thread: stat %q", b)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// timerState is what the watch reads from the guest's CPU 0.
type timerState struct {
	armed       bool // the APIC timer is unmasked: the kernel has its tick
	calibrating bool // the APIC timer is as the calibration sets it
	halted      bool // the vCPU is halted (HLT)
}

var (
	lvttRE  = regexp.MustCompile(`(?m)^LVTT\s+0x([0-9a-f]+)`)
	countRE = regexp.MustCompile(`initial_count = (\d+)`)
	hltRE   = regexp.MustCompile(`\bHLT=(\d)`)
)

// APIC timer bits, and the count the kernel's calibration loads (the
// largest, over its divisor of 16). A masked timer alone says nothing: an
// idle kernel with no timer pending masks it too (its clockevent
// stopped), and a loaded host can leave such a guest halted for seconds.
const (
	lvtMasked      = 1 << 16
	lvtPeriodic    = 1 << 17
	calibrateCount = 0xffffffff / 16
)

func (vm *VM) timerState(ctx context.Context) (timerState, error) {
	lapic, err := vm.hmp(ctx, "info lapic")
	if err != nil {
		return timerState{}, err
	}
	m := lvttRE.FindStringSubmatch(lapic)
	if m == nil {
		return timerState{}, fmt.Errorf("info lapic: no LVTT in %q", lapic)
	}
	lvtt, err := strconv.ParseUint(m[1], 16, 32)
	if err != nil {
		return timerState{}, fmt.Errorf("info lapic: LVTT: %w", err)
	}
	if lvtt&lvtMasked == 0 {
		return timerState{armed: true}, nil
	}
	c := countRE.FindStringSubmatch(lapic)
	if lvtt&lvtPeriodic == 0 || c == nil || c[1] != strconv.Itoa(calibrateCount) {
		return timerState{}, nil
	}
	regs, err := vm.hmp(ctx, "info registers")
	if err != nil {
		return timerState{}, err
	}
	h := hltRE.FindStringSubmatch(regs)
	return timerState{calibrating: true, halted: h != nil && h[1] == "1"}, nil
}

// hmp runs a human monitor command over QMP and returns its text.
func (vm *VM) hmp(ctx context.Context, cmd string) (string, error) {
	raw, err := vm.qmp.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd})
	if err != nil {
		return "", err
	}
	var text string
	if err := json.Unmarshal(raw, &text); err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	return text, nil
}
