package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
)

// Checkpoints (vmm.Checkpointer): the guest is paused (stop); its disk is
// switched to a new overlay on the one it used (blockdev-snapshot-sync,
// which flushes the old one and leaves it read-only beneath the new); its
// device state is migrated into a file as Save does, but QEMU is not
// quit; the caller copies the RAM file; cont lets the guest run on. The
// disk switch comes before the migration: a completed migration leaves
// the source's block nodes inactive (handed to a destination) until cont
// takes them back, and an inactive node cannot be snapshotted.

var _ vmm.Checkpointer = (*Driver)(nil)

// Checkpoint implements vmm.Checkpointer.
func (d *Driver) Checkpoint(ctx context.Context, v vmm.VM, req vmm.CheckpointRequest) (stats vmm.CheckpointStats, err error) {
	vm, ok := v.(*VM)
	if !ok {
		return stats, errors.New("qemu: checkpoint: not a QEMU VM")
	}
	if vm.qmp == nil {
		return stats, fmt.Errorf("qemu: checkpoint %s: no QMP connection", vm.id)
	}
	fail := func(step string, err error) (vmm.CheckpointStats, error) {
		return stats, fmt.Errorf("qemu: checkpoint %s: %s: %w", vm.id, step, err)
	}
	if _, err := vm.qmp.Execute(ctx, "migrate-set-capabilities", migrationCaps); err != nil {
		return fail("migration capabilities", err)
	}
	node, _, err := vm.topDisk(ctx)
	if err != nil {
		return fail("find the disk", err)
	}
	f, err := os.OpenFile(req.State, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fail("state file", err)
	}
	defer f.Close()
	complete := false
	defer func() {
		if !complete {
			os.Remove(req.State)
		}
	}()
	paused := time.Now()
	if _, err := vm.qmp.Execute(ctx, "stop", nil); err != nil {
		return fail("pause", err)
	}
	// From here on the guest runs again whatever happens, unless QEMU is
	// gone (or this process: recovery resumes it).
	defer func() {
		if _, cerr := vm.qmp.Execute(context.WithoutCancel(ctx), "cont", nil); cerr != nil && err == nil {
			err = fmt.Errorf("qemu: checkpoint %s: resume: %w", vm.id, cerr)
		}
		stats.Pause = time.Since(paused)
	}()
	d.crashPoint("checkpoint.stopped")
	start := time.Now()
	if _, err := vm.qmp.Execute(ctx, "blockdev-snapshot-sync", map[string]any{
		"node-name": node, "snapshot-file": req.NewDisk, "snapshot-node-name": fmt.Sprintf("disk-%d", time.Now().UnixNano()),
		"format": "qcow2", "mode": "absolute-paths",
	}); err != nil {
		return fail("switch the disk", err)
	}
	stats.Disk = time.Since(start)
	d.crashPoint("checkpoint.disk-switched")
	start = time.Now()
	if _, err := vm.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "migfd"}, f); err != nil {
		return fail("pass the state file", err)
	}
	events := vm.qmp.Events()
	if _, err := vm.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:migfd"}); err != nil {
		return fail("migrate", err)
	}
	if err := waitMigration(ctx, vm.qmp, events); err != nil {
		return fail("migrate", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync the state file", err)
	}
	stats.Migrate = time.Since(start)
	if fi, err := f.Stat(); err == nil {
		stats.StateBytes = fi.Size()
	}
	d.crashPoint("checkpoint.migrated")
	if req.WhilePaused != nil {
		start = time.Now()
		if err := req.WhilePaused(ctx); err != nil {
			return fail("while paused", err)
		}
		stats.Copy = time.Since(start)
	}
	complete = true
	syncDir(filepath.Dir(req.State))
	return stats, nil
}

// Disk implements vmm.Checkpointer: the file of the disk's top node.
func (d *Driver) Disk(ctx context.Context, v vmm.VM) (string, error) {
	vm, ok := v.(*VM)
	if !ok {
		return "", errors.New("qemu: disk: not a QEMU VM")
	}
	if vm.qmp == nil {
		return "", fmt.Errorf("qemu: disk %s: no QMP connection", vm.id)
	}
	_, file, err := vm.topDisk(ctx)
	if err != nil {
		return "", fmt.Errorf("qemu: disk %s: %w", vm.id, err)
	}
	return file, nil
}

// topDisk returns the node name and file of the block node the guest's
// disk device writes (query-block): the VM has one disk.
func (vm *VM) topDisk(ctx context.Context) (node, file string, err error) {
	raw, err := vm.qmp.Execute(ctx, "query-block", nil)
	if err != nil {
		return "", "", err
	}
	var devs []struct {
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return "", "", fmt.Errorf("query-block: %w", err)
	}
	for _, dv := range devs {
		if dv.Inserted != nil && dv.Inserted.NodeName != "" {
			return dv.Inserted.NodeName, dv.Inserted.File, nil
		}
	}
	return "", "", errors.New("query-block: no disk")
}
