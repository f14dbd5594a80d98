package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Rollback.
//
// A rollback makes the session parked at the checkpoint, then wakes it.
// The checkpoint's files are staged first, while the VM runs on, in
// rollbackStage: a copy of its RAM file and of its state, and a new
// overlay on its disk layer. Then the session is recorded parking with
// the staged dir named (machine.Rollback) and its disk the new overlay;
// its VM is stopped; the staged files are moved in (the state file last:
// see recoverParking) and the session is recorded parked. The wake is an
// ordinary wake. A server that dies before the record finds the VM running
// and removes the staged dir; one that dies after it finishes the move
// (finishRollback) and leaves the session parked at the checkpoint.
//
// The session keeps its id, owner, network policy and checkpoints; its
// tokens die (as at a park), and commands attached to its old VM end with
// a message that says it was rolled back.

// rollbackStage is the directory, in a session dir, of a rollback's files.
const rollbackStage = "rollback.tmp"

// rollbackMark is the last rollback of a session: commands started on a
// VM before it end, rather than re-attach to the restored guest.
type rollbackMark struct {
	gen  int
	name string
}

// rollbackGen is the count of session id's rollbacks by this manager.
func (m *Manager) rollbackGen(id string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rollbacks[id].gen
}

// rolledBack says whether session id was rolled back since gen, and to
// which checkpoint.
func (m *Manager) rolledBack(id string, gen int) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rb := m.rollbacks[id]
	return rb.name, rb.gen != gen
}

// Rollback puts session id back to its checkpoint name: memory, processes
// and disk as they were when it was taken. The session must be running,
// parked or failed (a checkpoint is a failed session's way back); it runs
// when Rollback returns.
func (m *Manager) Rollback(ctx context.Context, id, name string) (api.Session, error) {
	return m.rollback(ctx, id, name, CauseAPI)
}

// rollback is Rollback for cause (see Event).
func (m *Manager) rollback(ctx context.Context, id, name string, cause Cause) (api.Session, error) {
	if m.ckpt == nil || m.snap == nil {
		return api.Session{}, api.Errorf(api.CodeUnavailable, "rollback: the VMM driver cannot checkpoint")
	}
	if name == "" {
		return api.Session{}, api.Errorf(api.CodeInvalid, "rollback %s: no checkpoint named", id)
	}
	if err := validCheckpointName(name); err != nil {
		return api.Session{}, err
	}
	if err := m.rollbackToParked(ctx, id, name, cause == CauseGuest); err != nil {
		return api.Session{}, err
	}
	s, err := m.wake(ctx, id, cause, "")
	if err != nil {
		return api.Session{}, fmt.Errorf("session: rollback %s to %s: the session is parked at the checkpoint, and its wake failed: %w", id, name, err)
	}
	m.cfg.Log.Info("session rolled back", "session", id, "checkpoint", name)
	return s, nil
}

// rollbackToParked makes session id parked at its checkpoint name. With
// running, only a running session is (a guest asked, from the VM it
// would stop).
func (m *Manager) rollbackToParked(ctx context.Context, id, name string, running bool) error {
	unlock := m.lock(id)
	defer unlock()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return notFound(id, err)
	}
	if running && rec.State != api.StateRunning {
		return api.Errorf(api.CodeConflict, "rollback %s: session is %s", id, rec.State)
	}
	// A failed session is put back too: its checkpoints are its last
	// good states (its VM is gone, or is ended here).
	if rec.State != api.StateRunning && rec.State != api.StateParked && rec.State != api.StateFailed {
		return api.Errorf(api.CodeConflict, "rollback %s: session is %s", id, rec.State)
	}
	c, err := m.cfg.Store.GetCheckpoint(ctx, id, name)
	if err != nil {
		return checkpointNotFound(id, name, err)
	}
	cm, err := parkedMachine(c.Manifest)
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "rollback %s: checkpoint %s unusable: %v", id, name, err)
	}
	// The staging must finish once begun, even if the client goes away.
	ctx = context.WithoutCancel(ctx)
	dir := m.dir(id)
	if err := roomFor(dir, m.memBytes(ctx, cm.Parked), "rollback "+id); err != nil {
		return err
	}
	stage := filepath.Join(dir, rollbackStage)
	disk := fmt.Sprintf("disk-%d.qcow2", time.Now().UnixNano())
	if err := m.stageRollback(ctx, cm, stage, disk); err != nil {
		os.RemoveAll(stage)
		return fmt.Errorf("session: rollback %s to %s: %w", id, name, err)
	}
	m.crashPoint("rollback.staged")
	m.stopUpload(id) // a parked session's files are about to change
	mach := cm
	mach.Parked, mach.NextDisk = nil, ""
	mach.Disk, mach.Rollback = filepath.Join(dir, disk), stage
	mach.GuestRequest, mach.Restore, mach.MemFrom = 0, nil, name
	if cm.GuestRequest != 0 {
		// The checkpoint's guest waits in 'cove-agent checkpoint': its
		// wake tells it where it is.
		mach.Restore = &agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: name, Request: cm.GuestRequest}
	}
	rec.State, rec.Snapshot, rec.UpdatedAt = api.StateParking, mach.encode(), time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		os.RemoveAll(stage)
		return fmt.Errorf("session: rollback %s to %s: %w", id, name, err)
	}
	m.crashPoint("rollback.recorded")
	m.mu.Lock()
	m.rollbacks[id] = rollbackMark{gen: m.rollbacks[id].gen + 1, name: name}
	l := m.live[id]
	if l != nil {
		l.deleting = true
		delete(m.live, id)
	}
	m.mu.Unlock()
	if _, err := m.cfg.Store.BumpTokenGen(ctx, id); err != nil {
		m.cfg.Log.Warn("rollback: revoke the old VM's tokens", "session", id, "err", err)
	}
	if l != nil {
		l.client().Close()
		if err := l.vm.Stop(ctx); err != nil {
			m.cfg.Log.Warn("rollback: stop the VM", "session", id, "err", err)
		}
	}
	m.killStray(ctx, id)
	m.crashPoint("rollback.stopped")
	if err := m.finishRollback(ctx, rec, mach); err != nil {
		return err
	}
	m.collectLayers(ctx, id) // the top it left, unless a checkpoint rests on it
	return nil
}

// stageRollback puts into stage (created) a copy of checkpoint cm's RAM
// file and state, and a new overlay, named disk, on its disk layer; all
// synced.
func (m *Manager) stageRollback(ctx context.Context, cm machine, stage, disk string) error {
	os.RemoveAll(stage)
	if err := os.Mkdir(stage, 0o700); err != nil {
		return err
	}
	if err := m.copyMem(ctx, cm.Parked, filepath.Join(stage, vmm.MemFile)); err != nil {
		return fmt.Errorf("copy memory: %w", err)
	}
	if err := copyFileSync(cm.Parked.State, filepath.Join(stage, stateFile)); err != nil {
		return fmt.Errorf("copy state: %w", err)
	}
	if err := makeOverlay(ctx, m.disks, cm.Disk, filepath.Join(stage, disk)); err != nil {
		return err
	}
	syncDirPath(stage)
	return nil
}

func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// finishRollback moves a rollback's staged files (mach.Rollback) into
// session rec's dir, the state file last, and records the session parked
// at the checkpoint. The session's VM is gone. It can run again after a
// crash: a file already moved is skipped.
func (m *Manager) finishRollback(ctx context.Context, rec store.Session, mach machine) error {
	id, dir, stage := rec.ID, m.dir(rec.ID), mach.Rollback
	moves := [][2]string{
		{filepath.Join(stage, filepath.Base(mach.Disk)), mach.Disk},
		{filepath.Join(stage, vmm.MemFile), filepath.Join(dir, vmm.MemFile)},
		{filepath.Join(stage, stateFile), filepath.Join(dir, stateFile)},
	}
	os.Remove(filepath.Join(dir, wokenFile))
	for _, mv := range moves {
		if err := os.Rename(mv[0], mv[1]); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.fail(id, "rollback: move the checkpoint's files in: "+err.Error())
			return fmt.Errorf("session: rollback %s: %w", id, err)
		}
		if mv[1] == filepath.Join(dir, vmm.MemFile) {
			m.crashPoint("rollback.moving")
		}
	}
	syncDirPath(dir)
	os.RemoveAll(stage)
	p, err := manifest(dir, 0)
	if err != nil {
		m.fail(id, "rollback: the checkpoint's files: "+err.Error())
		return fmt.Errorf("session: rollback %s: %w", id, err)
	}
	mach.Parked, mach.Rollback = p, ""
	rec.State, rec.Handle, rec.Snapshot, rec.Error, rec.UpdatedAt = api.StateParked, nil, mach.encode(), "", time.Now().UTC()
	rec.StoredManifest, rec.StoredBytes = "", 0
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		m.recordFollows(rec)
		return fmt.Errorf("session: rollback %s: the session is parked at the checkpoint, but its record is not written yet (tried again until the store takes it): %w", id, err)
	}
	return nil
}

// recoverRollback finishes a rollback that a server stop cut short after
// its record (see rollbackToParked): the session ends parked at the
// checkpoint. It reports false if rec is no such session.
func (m *Manager) recoverRollback(ctx context.Context, rec store.Session) bool {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.Rollback == "" {
		return false
	}
	m.killLeftover(ctx, rec)
	m.killStray(ctx, rec.ID)
	if err := m.finishRollback(ctx, rec, mach); err != nil {
		m.cfg.Log.Error("rollback cut short by a server stop, and finishing it failed", "session", rec.ID, "err", err)
		return true
	}
	m.cfg.Log.Info("rollback cut short by a server stop: finished; the session is parked at the checkpoint", "session", rec.ID)
	return true
}
