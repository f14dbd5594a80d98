package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/vmm"
)

var _ vmm.Freezer = (*Driver)(nil)

// Freeze stops vm's QEMU process with SIGSTOP: every thread of it, the
// vCPUs, the device emulation and the QMP monitor, whatever it is doing
// (a QMP stop would be undone by a checkpoint's cont); the guest's RAM and
// device state stay as they are. It works with or without cgroups. The
// VM answers nothing until Thaw; Stop then kills it at once. Freeze
// returns once the process is stopped.
func (d *Driver) Freeze(ctx context.Context, v vmm.VM) error {
	vm, ok := v.(*VM)
	if !ok {
		return errors.New("qemu: freeze: not a QEMU VM")
	}
	// Marked first: a Stop from now on does not wait on the monitor.
	vm.frozen.Store(true)
	if err := vm.signal(unix.SIGSTOP); err != nil {
		return fmt.Errorf("qemu: freeze %s: %w", vm.id, err)
	}
	// The signal is delivered to each thread on its way: Freeze returns
	// once the process is stopped.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !procStopped(vm.pid) {
		select {
		case <-vm.done:
			return fmt.Errorf("qemu: freeze %s: the VMM exited", vm.id)
		case <-ctx.Done():
			return fmt.Errorf("qemu: freeze %s: process %d not stopped yet: %w", vm.id, vm.pid, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// Thaw lets a frozen VM's QEMU process run on (SIGCONT).
func (d *Driver) Thaw(ctx context.Context, v vmm.VM) error {
	vm, ok := v.(*VM)
	if !ok {
		return errors.New("qemu: thaw: not a QEMU VM")
	}
	if err := vm.signal(unix.SIGCONT); err != nil {
		return fmt.Errorf("qemu: thaw %s: %w", vm.id, err)
	}
	vm.frozen.Store(false)
	return nil
}

// signal sends sig to the VM's QEMU process, if it is still that process.
func (vm *VM) signal(sig unix.Signal) error {
	select {
	case <-vm.done:
		return errors.New("the VMM exited")
	default:
	}
	if st, err := procStartTime(vm.pid); err != nil || st != vm.start {
		return fmt.Errorf("process %d is gone", vm.pid)
	}
	if err := unix.Kill(vm.pid, sig); err != nil {
		return fmt.Errorf("signal process %d: %w", vm.pid, err)
	}
	return nil
}

// procStopped reports whether process pid is stopped (by a signal: a VM
// an earlier server froze).
func procStopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] == 'T'
}
