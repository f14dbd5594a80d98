package fake

import (
	"context"
	"errors"
	"fmt"

	"github.com/cove-dev/cove/internal/vmm"
)

var _ vmm.Freezer = (*Driver)(nil)

// Freeze stops vm's "process" as a SIGSTOP stops a VMM: its guest answers
// nothing, and its control calls fail, until Thaw; Stop still ends it.
func (d *Driver) Freeze(ctx context.Context, v vmm.VM) error {
	return d.setFrozen(v, true)
}

// Thaw lets a frozen VM run on where it stopped.
func (d *Driver) Thaw(ctx context.Context, v vmm.VM) error {
	return d.setFrozen(v, false)
}

func (d *Driver) setFrozen(v vmm.VM, on bool) error {
	vm, ok := v.(*VM)
	if !ok {
		return errors.New("fake: freeze: not a fake VM")
	}
	p := vm.p
	if !p.alive() {
		return fmt.Errorf("fake: freeze %s: VMM exited", p.id)
	}
	p.mu.Lock()
	if on && !p.frozen {
		p.freezes++
	}
	p.frozen = on
	g, st := p.guest, p.status
	p.mu.Unlock()
	if g != nil {
		g.setPaused(on || st == vmm.StatusPaused || st == vmm.StatusSaving)
	}
	if on {
		p.logf("fake: VMM frozen")
	} else {
		p.logf("fake: VMM thawed")
		d.noteRuns(p)
	}
	return nil
}

// Frozen reports whether the VM is frozen (Freezer).
func (vm *VM) Frozen() bool {
	vm.p.mu.Lock()
	defer vm.p.mu.Unlock()
	return vm.p.frozen
}

// Freezes returns how many times the VM was frozen.
func (vm *VM) Freezes() int {
	vm.p.mu.Lock()
	defer vm.p.mu.Unlock()
	return vm.p.freezes
}

// noteRuns records that p's guest runs (booted, restored or thawed): if
// another process of the same VM id runs and is not frozen, the id ran
// twice at once (Twice).
func (d *Driver) noteRuns(p *process) {
	d.mu.Lock()
	procs := make([]*process, 0, len(d.procs))
	for _, o := range d.procs {
		if o != p && o.id == p.id {
			procs = append(procs, o)
		}
	}
	d.mu.Unlock()
	for _, o := range procs {
		o.mu.Lock()
		runs := o.guest != nil && !o.frozen && !o.exited
		o.mu.Unlock()
		if runs {
			d.mu.Lock()
			if d.twice == nil {
				d.twice = map[string]bool{}
			}
			d.twice[p.id] = true
			d.mu.Unlock()
			return
		}
	}
}

// Twice reports whether VM id ever had its guest run in two processes at
// once (neither frozen): one session running on two nodes.
func (d *Driver) Twice(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.twice[id]
}
