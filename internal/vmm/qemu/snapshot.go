package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/qmp"
	"github.com/cove-dev/cove/internal/vmm"
)

// The snapshot recipe for QEMU 7.2 (see DESIGN.md): guest RAM lives in a
// shared file (MemFile), so a save migrates only device state, with
// x-ignore-shared, into a state file handed to QEMU as a descriptor (an
// exec: URI is forbidden by -sandbox spawn=deny). Restore starts QEMU with
// the same arguments plus -incoming defer, feeds it the state file, and
// continues the guest.

var migrationCaps = map[string]any{
	"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": true},
		{"capability": "events", "state": true},
	},
}

// Save stops the VM into statePath: device state in that file, RAM in the
// VM's MemFile, both fsynced before it returns. The QEMU process is gone
// afterwards. On error before the migration completes, the VM keeps
// running.
func (d *Driver) Save(ctx context.Context, v vmm.VM, statePath string) (vmm.SaveStats, error) {
	vm, ok := v.(*VM)
	if !ok {
		return vmm.SaveStats{}, fmt.Errorf("qemu: save: not a QEMU VM")
	}
	var stats vmm.SaveStats
	start := time.Now()
	if vm.qmp == nil {
		return stats, fmt.Errorf("qemu: save %s: no QMP connection", vm.id)
	}
	if _, err := vm.qmp.Execute(ctx, "migrate-set-capabilities", migrationCaps); err != nil {
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	tmp := statePath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	defer os.Remove(tmp)
	defer f.Close()
	if _, err := vm.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "migfd"}, f); err != nil {
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	events := vm.qmp.Events()
	if _, err := vm.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:migfd"}); err != nil {
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	d.crashPoint("save.migrating")
	if err := waitMigration(ctx, vm.qmp, events); err != nil {
		// The source resumes on a failed migration; make sure it runs.
		_, _ = vm.qmp.Execute(context.Background(), "cont", nil)
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	stats.Migrate = time.Since(start)
	d.crashPoint("save.migrated")
	// The guest is paused now. Make both files durable before the VM goes.
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("qemu: save %s: sync state: %w", vm.id, err)
	}
	syncStart := time.Now()
	if err := syncFile(filepath.Join(vm.dir, MemFile)); err != nil {
		return stats, fmt.Errorf("qemu: save %s: sync memory: %w", vm.id, err)
	}
	stats.Sync = time.Since(syncStart)
	if err := f.Close(); err != nil {
		return stats, err
	}
	d.crashPoint("save.synced")
	if err := os.Rename(tmp, statePath); err != nil {
		return stats, fmt.Errorf("qemu: save %s: %w", vm.id, err)
	}
	syncDir(filepath.Dir(statePath))
	d.crashPoint("save.renamed")
	if fi, err := os.Stat(statePath); err == nil {
		stats.StateBytes = fi.Size()
	}
	// The disk lock is released when the migration completes; quitting can
	// overlap whatever comes next.
	if err := vm.Stop(ctx); err != nil {
		return stats, err
	}
	stats.Total = time.Since(start)
	return stats, nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// waitMigration waits for the migration to complete, from MIGRATION
// events, polling query-migrate as a fallback.
func waitMigration(ctx context.Context, c *qmp.Conn, events <-chan qmp.Event) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	check := func() (bool, error) {
		raw, err := c.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return false, err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return false, err
		}
		switch st.Status {
		case "completed":
			return true, nil
		case "failed", "cancelled":
			return false, fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		return false, nil
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return errors.New("QMP connection closed during migration")
			}
			if ev.Name != "MIGRATION" {
				continue
			}
			var data struct {
				Status string `json:"status"`
			}
			_ = json.Unmarshal(ev.Data, &data)
			switch data.Status {
			case "completed":
				return nil
			case "failed", "cancelled":
				_, err := check()
				if err == nil {
					err = fmt.Errorf("migration %s", data.Status)
				}
				return err
			}
		case <-tick.C:
			done, err := check()
			if err != nil || done {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Restore starts QEMU for spec from a state file written by Save; spec.Dir
// must hold the RAM file (MemFile) that belongs to it, and spec.Disk the
// disk as it was at the save. The guest runs when Restore returns.
//
// The agent's channel is connected before the state loads, and the first
// DialAgent returns that connection. A guest saved while its host was
// connected (how the session manager parks) then sees nothing of the
// change of QEMU process: no hang-up, no new connection, only the next
// sync on the port it is reading. One saved without a host sees the port
// open, as at any connection.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, statePath string) (vmm.VM, vmm.RestoreStats, error) {
	var stats vmm.RestoreStats
	start := time.Now()
	state, err := os.Open(statePath)
	if err != nil {
		return nil, stats, fmt.Errorf("qemu: restore %s: %w", spec.ID, err)
	}
	defer state.Close()
	if _, err := os.Stat(filepath.Join(spec.Dir, MemFile)); err != nil {
		return nil, stats, fmt.Errorf("qemu: restore %s: memory file: %w", spec.ID, err)
	}
	sh := shape{spec.MemoryMiB, spec.CPUs}
	defer d.refill(sh)
	// The state file is the child's fd 3 (first of ExtraFiles), or a
	// claimed spare's fd named stateFD.
	uri := "fd:3"
	vm := d.takeSpare(sh)
	if vm != nil {
		if err := d.claim(ctx, vm, spec, state); err != nil {
			d.cfg.Log.Warn("qemu spare process unusable: starting a new one", "session", spec.ID, "err", err)
			vm.discard()
			vm = nil
		} else {
			uri = "fd:" + stateFD
			stats.Spare = true
		}
	}
	if vm == nil {
		a := append(d.Args(spec), "-incoming", "defer", "-S")
		if vm, err = d.spawn(ctx, spec, a, spawnOpts{extra: []*os.File{state}}); err != nil {
			return nil, stats, err
		}
	}
	stats.Spawn = time.Since(start)
	fail := func(err error) (vmm.VM, vmm.RestoreStats, error) {
		_ = vm.kill()
		return nil, stats, fmt.Errorf("qemu: restore %s: %w; qemu said: %s", spec.ID, err, vm.logTail(QEMULog, 1000))
	}
	d.crashPoint("restore.spawned")
	if spec.Started != nil {
		if err := spec.Started(ctx, vm.Handle()); err != nil {
			return fail(err)
		}
	}
	if _, err := vm.qmp.Execute(ctx, "migrate-set-capabilities", migrationCaps); err != nil {
		return fail(err)
	}
	// No self-announce after the load: it is for a VM that moved to
	// another host, and the guest would answer it by notifying its
	// network peers — kernel work on the wake path, for nothing.
	if _, err := vm.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"announce-rounds": 0}); err != nil {
		return fail(err)
	}
	if err := vm.connectAgentEarly(ctx); err != nil {
		return fail(err)
	}
	if spec.BeforeLoad != nil {
		if err := spec.BeforeLoad(ctx); err != nil {
			return fail(err)
		}
	}
	events := vm.qmp.Events()
	loadStart := time.Now()
	if _, err := vm.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}); err != nil {
		return fail(err)
	}
	if err := waitMigration(ctx, vm.qmp, events); err != nil {
		return fail(err)
	}
	stats.Load = time.Since(loadStart)
	d.crashPoint("restore.loaded")
	if spec.BeforeRun != nil {
		if err := spec.BeforeRun(ctx); err != nil {
			return fail(err)
		}
		// A QEMU that died meanwhile never ran the guest: say so, the
		// snapshot is unchanged.
		if _, err := vm.runState(ctx); err != nil {
			return fail(fmt.Errorf("%w: %w", vmm.ErrNotRun, err))
		}
	}
	if _, err := vm.qmp.Execute(ctx, "cont", nil); err != nil {
		return fail(err)
	}
	d.crashPoint("restore.continued")
	stats.Total = time.Since(start)
	return vm, stats, nil
}
