package fake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
)

// OpCheckpoint fails Checkpoint before anything changes: the guest runs
// on, on its old disk.
const OpCheckpoint Op = "checkpoint"

// OpDisk fails Disk: the VM does not say which disk it writes, as a QEMU
// that does not answer its QMP socket.
const OpDisk Op = "disk"

var _ vmm.Checkpointer = (*Driver)(nil)

// Checkpoint implements vmm.Checkpointer as the QEMU driver does: the
// guest is paused, its disk switched to req.NewDisk (a real qcow2
// overlay, made as Disks makes it, on the old disk: the session manager
// copies and stacks on such chains), its state written to req.State,
// req.WhilePaused called, and the guest let run again.
func (d *Driver) Checkpoint(ctx context.Context, v vmm.VM, req vmm.CheckpointRequest) (stats vmm.CheckpointStats, err error) {
	vm, ok := v.(*VM)
	if !ok {
		return stats, errors.New("fake: checkpoint: not a fake VM")
	}
	p := vm.p
	if err := vm.control("checkpoint"); err != nil {
		return stats, err
	}
	if err := d.failure(OpCheckpoint); err != nil {
		return stats, fmt.Errorf("fake: checkpoint %s: %w", p.id, err)
	}
	g := p.running()
	if g == nil {
		return stats, fmt.Errorf("fake: checkpoint %s: the guest does not run", p.id)
	}
	paused := time.Now()
	p.setStatus(vmm.StatusPaused)
	g.setPaused(true)
	defer func() {
		if p.alive() {
			p.setStatus(vmm.StatusRunning)
			g.setPaused(false)
		}
		stats.Pause = time.Since(paused)
	}()
	old := p.disk()
	start := time.Now()
	if err := d.Disks().Overlay(ctx, req.NewDisk, old, "qcow2"); err != nil {
		return stats, fmt.Errorf("fake: checkpoint %s: new disk: %w", p.id, err)
	}
	p.mu.Lock()
	p.curDisk = req.NewDisk
	p.mu.Unlock()
	stats.Disk = time.Since(start)
	start = time.Now()
	b, err := g.snapshot(p.spec)
	if err != nil {
		return stats, fmt.Errorf("fake: checkpoint %s: %w", p.id, err)
	}
	if err := writeFileSync(req.State, b); err != nil {
		return stats, fmt.Errorf("fake: checkpoint %s: %w", p.id, err)
	}
	stats.Migrate, stats.StateBytes = time.Since(start), int64(len(b))
	if req.WhilePaused != nil {
		start = time.Now()
		if err := req.WhilePaused(ctx); err != nil {
			os.Remove(req.State)
			return stats, fmt.Errorf("fake: checkpoint %s: %w", p.id, err)
		}
		stats.Copy = time.Since(start)
	}
	return stats, nil
}

// Disk implements vmm.Checkpointer.
func (d *Driver) Disk(ctx context.Context, v vmm.VM) (string, error) {
	vm, ok := v.(*VM)
	if !ok {
		return "", errors.New("fake: disk: not a fake VM")
	}
	if err := vm.control("disk"); err != nil {
		return "", err
	}
	if err := d.failure(OpDisk); err != nil {
		return "", fmt.Errorf("fake: disk %s: %w", vm.p.id, err)
	}
	return vm.p.disk(), nil
}

// disk is the disk the process's VM writes.
func (p *process) disk() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.curDisk != "" {
		return p.curDisk
	}
	return p.spec.Disk
}
