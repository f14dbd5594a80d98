package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Checkpoints.
//
// A checkpoint is a running session's whole machine saved while it runs
// on (vmm.Checkpointer): the guest is paused; its disk is switched to a
// new qcow2 overlay on the one it wrote, which from then on is never
// written again and is the checkpoint's disk; its device state goes to a
// file; its RAM file is copied (only the data extents, or a reflink); the
// guest runs again. A checkpoint is then a parked machine (state, RAM
// file, disk) that a rollback or a fork restores as a wake does.
//
// Files. A session dir holds its disk layers (disk.qcow2, the first, on
// the template's or image's disk; disk-N.qcow2 stacked by checkpoints),
// and checkpoints/NAME/{state,mem}. Checkpoints share every layer beneath
// their own, with each other and with the session, and the template's or
// image's disk beneath all. A layer goes once neither the session's disk
// nor a checkpoint rests on it (collectLayers, after a checkpoint's
// removal and after a rollback), or with the session.
//
// Durability: the disk the VM will be switched to is recorded first
// (machine.NextDisk); the checkpoint is made in checkpoints/.tmp-NAME,
// synced, renamed to its name, then recorded in the store. A server that
// dies on the way leaves the session running: recovery resumes a guest
// left paused, asks the VM which disk it writes and records that one (the
// switch may or may not have happened), and removes checkpoint dirs the
// store does not name (recoverCheckpoints).
//
// A parked session is not checkpointed (409: wake it first): its snapshot
// is consumed by the wake, so a checkpoint of it would have to copy the
// whole snapshot, and the API would then hold two ways to keep a machine
// that is not running.

// checkpointsDir is the directory, in a session dir, of its checkpoints.
const checkpointsDir = "checkpoints"

// checkpointTmp prefixes the name of a checkpoint being made.
const checkpointTmp = ".tmp-"

// checkpointTimeout bounds a checkpoint: the pause, the copy and the
// syncs.
const checkpointTimeout = 2 * time.Minute

// checkpointName is what a checkpoint's name must match.
var checkpointName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// validCheckpointName refuses a name a checkpoint cannot have ("" is the
// default's).
func validCheckpointName(name string) error {
	if name != "" && !checkpointName.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "checkpoint name %q: want 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", name)
	}
	return nil
}

func (m *Manager) checkpointDir(id, name string) string {
	return filepath.Join(m.dir(id), checkpointsDir, name)
}

func checkpointAPI(c store.Checkpoint) api.Checkpoint {
	out := api.Checkpoint{Session: c.SessionID, Name: c.Name, CreatedAt: c.CreatedAt, Bytes: c.Bytes, PauseMillis: c.PauseMillis}
	if cm, err := decodeMachine(c.Manifest); err == nil && cm.Parked != nil {
		out.MemShared = cm.Parked.MemFormat == memQcow2
	}
	return out
}

func checkpointNotFound(id, name string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "session %s has no checkpoint %q", id, name)
	}
	return fmt.Errorf("session: checkpoint %s of %s: %w", name, id, err)
}

// CreateCheckpoint saves running session id's whole machine as a
// checkpoint named req.Name (default ckpt-N); the session runs on.
func (m *Manager) CreateCheckpoint(ctx context.Context, id string, req api.CheckpointRequest) (api.Checkpoint, error) {
	return m.createCheckpoint(ctx, id, req, 0)
}

// createCheckpoint is CreateCheckpoint; guestReq is the request of the
// guest tool that asks for it, if one does (machine.GuestRequest).
func (m *Manager) createCheckpoint(ctx context.Context, id string, req api.CheckpointRequest, guestReq int64) (api.Checkpoint, error) {
	if m.ckpt == nil || m.snap == nil {
		return api.Checkpoint{}, api.Errorf(api.CodeUnavailable, "checkpoint: the VMM driver cannot checkpoint")
	}
	if err := validCheckpointName(req.Name); err != nil {
		return api.Checkpoint{}, err
	}
	unlock := m.lock(id)
	defer unlock()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return api.Checkpoint{}, notFound(id, err)
	}
	switch rec.State {
	case api.StateRunning:
	case api.StateParked:
		return api.Checkpoint{}, api.Errorf(api.CodeConflict, "checkpoint %s: session is parked: wake it first", id)
	default:
		return api.Checkpoint{}, api.Errorf(api.CodeConflict, "checkpoint %s: session is %s", id, rec.State)
	}
	m.mu.Lock()
	l := m.live[id]
	m.mu.Unlock()
	if l == nil {
		return api.Checkpoint{}, api.Errorf(api.CodeConflict, "checkpoint %s: no running VM", id)
	}
	name, err := m.newCheckpointName(ctx, id, req.Name)
	if err != nil {
		return api.Checkpoint{}, err
	}
	c, err := m.checkpoint(context.WithoutCancel(ctx), rec, l, name, guestReq)
	if err != nil {
		return api.Checkpoint{}, err
	}
	m.cfg.Log.Info("checkpoint taken", "session", id, "checkpoint", name, "pause_ms", c.PauseMillis, "bytes", c.Bytes)
	return checkpointAPI(c), nil
}

// newCheckpointName returns want if session id has no checkpoint of that
// name, or the first free ckpt-N from N = its count + 1 if want is "";
// it refuses a session that holds the most checkpoints it may.
func (m *Manager) newCheckpointName(ctx context.Context, id, want string) (string, error) {
	list, err := m.cfg.Store.ListCheckpoints(ctx, id)
	if err != nil {
		return "", fmt.Errorf("session: checkpoint %s: %w", id, err)
	}
	if most := m.maxCheckpoints(); len(list) >= most {
		return "", api.Errorf(api.CodeConflict, "checkpoint %s: the session holds %d checkpoints, the most it may: remove one first", id, most)
	}
	taken := map[string]bool{}
	for _, c := range list {
		taken[c.Name] = true
	}
	if want != "" {
		if taken[want] {
			return "", api.Errorf(api.CodeConflict, "session %s has a checkpoint named %q already", id, want)
		}
		return want, nil
	}
	for n := len(list) + 1; ; n++ {
		if name := "ckpt-" + strconv.Itoa(n); !taken[name] {
			return name, nil
		}
	}
}

// checkpoint takes checkpoint name of the running session rec, whose VM l
// holds, under the session's lock; guestReq is the guest's request for
// it, if any (machine.GuestRequest).
func (m *Manager) checkpoint(ctx context.Context, rec store.Session, l *live, name string, guestReq int64) (store.Checkpoint, error) {
	if err := m.frozenErr(rec.ID); err != nil {
		return store.Checkpoint{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	if err := m.settleLive(ctx, &rec, l); err != nil {
		return store.Checkpoint{}, err
	}
	id, dir := rec.ID, m.dir(rec.ID)
	root := filepath.Join(dir, checkpointsDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: %w", id, err)
	}
	tmp := filepath.Join(root, checkpointTmp+name)
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: %w", id, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	// Its RAM copy needs room: refused before the guest pauses or its
	// disk switches, rather than failing part way.
	if err := roomFor(root, allocated(filepath.Join(dir, vmm.MemFile)), "checkpoint "+id); err != nil {
		return store.Checkpoint{}, err
	}
	layer := l.mach.Disk // the checkpoint's disk, once switched away from
	next := filepath.Join(dir, fmt.Sprintf("disk-%d.qcow2", time.Now().UnixNano()))
	mach := l.mach
	mach.NextDisk = next
	rec.Snapshot, rec.UpdatedAt = mach.encode(), time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: %w", id, err)
	}
	m.crashPoint("checkpoint.recorded")
	stats, err := m.ckpt.Checkpoint(ctx, l.vm, vmm.CheckpointRequest{
		State:   filepath.Join(tmp, stateFile),
		NewDisk: next,
		WhilePaused: func(context.Context) error {
			m.crashPoint("checkpoint.paused")
			// The copy is written back after the guest runs again.
			copyRest, err := startCopy(filepath.Join(dir, vmm.MemFile), filepath.Join(tmp, vmm.MemFile))
			if err == nil {
				err = copyRest(false)
			}
			if err != nil {
				return fmt.Errorf("copy memory: %w", err)
			}
			return nil
		},
	})
	// Whatever happened, the record names the disk the VM writes now. A
	// checkpoint that succeeded switched it; one that failed may have,
	// and only the VM can say: where it does not, NextDisk stays
	// recorded and both disks are kept (see settleDisk).
	if err == nil {
		mach.Disk, mach.NextDisk = next, ""
	} else if _, derr := m.settleDisk(ctx, id, l.vm, &mach); derr != nil {
		m.cfg.Log.Warn("checkpoint failed and the VM does not say which disk it writes; both are kept", "session", id, "err", derr)
	}
	l.mach.Disk, l.mach.NextDisk = mach.Disk, mach.NextDisk
	rec.Snapshot, rec.UpdatedAt = mach.encode(), time.Now().UTC()
	if rerr := m.cfg.Store.UpdateSession(ctx, &rec); rerr != nil {
		// A restart asks the VM (NextDisk is still recorded).
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: record its disk: %w", id, rerr)
	}
	if err != nil {
		m.cfg.Log.Warn("checkpoint failed; the session runs on", "session", id, "checkpoint", name, "err", err)
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: %w; the session runs on", id, err)
	}
	m.crashPoint("checkpoint.switched")
	// Tokens the guest holds went into the checkpoint's memory, which a
	// rollback or a fork brings back: they die now, as at a park (the
	// guest's tools ask again).
	if _, err := m.cfg.Store.BumpTokenGen(ctx, id); err != nil {
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: revoke the tokens it holds: %w", id, err)
	}
	// The RAM copy and the frozen layer are made durable while the guest
	// runs; the state file is synced already.
	for _, f := range []string{filepath.Join(tmp, vmm.MemFile), layer} {
		if err := syncPath(f); err != nil {
			return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: sync %s: %w", id, filepath.Base(f), err)
		}
	}
	final := filepath.Join(root, name)
	if err := os.Rename(tmp, final); err != nil {
		return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: %w", id, err)
	}
	done = true
	syncDirPath(root)
	m.crashPoint("checkpoint.renamed")
	cmach := l.mach
	cmach.Disk, cmach.NextDisk, cmach.Rollback = layer, "", ""
	cmach.GuestRequest, cmach.Restore = guestReq, nil
	p, err := manifest(final, stats.Pause)
	if err == nil {
		cmach.Parked = p
		c := store.Checkpoint{SessionID: id, Name: name, CreatedAt: p.CreatedAt,
			Bytes: p.DiskBytes + allocated(layer), PauseMillis: stats.Pause.Milliseconds(), Manifest: cmach.encode()}
		if err = m.cfg.Store.CreateCheckpoint(ctx, c); err == nil {
			l.mach.MemFrom = name // recorded with the machine's next record
			m.cfg.Log.Info("checkpoint files", "session", id, "checkpoint", name, "disk_ms", stats.Disk.Milliseconds(),
				"migrate_ms", stats.Migrate.Milliseconds(), "copy_ms", stats.Copy.Milliseconds(), "state_bytes", stats.StateBytes)
			m.encodeLater(id, name) // once this lock is let go
			return c, nil
		}
	}
	os.RemoveAll(final)
	return store.Checkpoint{}, fmt.Errorf("session: checkpoint %s: record: %w", id, err)
}

func syncPath(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDirPath(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// ListCheckpoints returns session id's checkpoints, oldest first.
func (m *Manager) ListCheckpoints(ctx context.Context, id string) ([]api.Checkpoint, error) {
	if _, err := m.cfg.Store.GetSession(ctx, id); err != nil {
		return nil, notFound(id, err)
	}
	list, err := m.cfg.Store.ListCheckpoints(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("session: checkpoints of %s: %w", id, err)
	}
	out := make([]api.Checkpoint, 0, len(list))
	for _, c := range list {
		out = append(out, checkpointAPI(c))
	}
	return out, nil
}

// GetCheckpoint returns checkpoint name of session id.
func (m *Manager) GetCheckpoint(ctx context.Context, id, name string) (api.Checkpoint, error) {
	if _, err := m.cfg.Store.GetSession(ctx, id); err != nil {
		return api.Checkpoint{}, notFound(id, err)
	}
	c, err := m.cfg.Store.GetCheckpoint(ctx, id, name)
	if err != nil {
		return api.Checkpoint{}, checkpointNotFound(id, name, err)
	}
	return checkpointAPI(c), nil
}

// DeleteCheckpoint removes checkpoint name of session id: its record,
// then its state and RAM copy, and its disk layer unless the session's
// disk or another checkpoint rests on it (collectLayers).
func (m *Manager) DeleteCheckpoint(ctx context.Context, id, name string) error {
	unlock := m.lock(id)
	defer unlock()
	if _, err := m.cfg.Store.GetSession(ctx, id); err != nil {
		return notFound(id, err)
	}
	c, err := m.cfg.Store.GetCheckpoint(ctx, id, name)
	if err != nil {
		return checkpointNotFound(id, name, err)
	}
	list, err := m.cfg.Store.ListCheckpoints(ctx, id)
	if err != nil {
		return fmt.Errorf("session: remove checkpoint %s of %s: %w", name, id, err)
	}
	// The RAM of later checkpoints may rest on this one's: rebased first.
	if err := m.rebaseMemChildren(context.WithoutCancel(ctx), id, c, list); err != nil {
		return fmt.Errorf("session: remove checkpoint %s of %s: %w; it is kept", name, id, err)
	}
	if err := m.cfg.Store.DeleteCheckpoint(ctx, id, name); err != nil {
		return checkpointNotFound(id, name, err)
	}
	if err := os.RemoveAll(m.checkpointDir(id, name)); err != nil {
		m.cfg.Log.Warn("checkpoint files not removed (swept at the next start)", "session", id, "checkpoint", name, "err", err)
	}
	m.collectLayers(ctx, id)
	m.cfg.Log.Info("checkpoint removed", "session", id, "checkpoint", name)
	return nil
}

// recoverCheckpoints removes, in the dir of each session in recs, the
// checkpoint dirs the store does not name: made by a checkpoint cut short
// before its record.
func (m *Manager) recoverCheckpoints(ctx context.Context, recs []store.Session) {
	for _, rec := range recs {
		if mach, err := decodeMachine(rec.Snapshot); err == nil && mach.Rollback == "" {
			os.RemoveAll(filepath.Join(m.dir(rec.ID), rollbackStage)) // a rollback cut short before its record
		}
		root := filepath.Join(m.dir(rec.ID), checkpointsDir)
		ents, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		list, err := m.cfg.Store.ListCheckpoints(ctx, rec.ID)
		if err != nil {
			continue
		}
		known := map[string]bool{}
		for _, c := range list {
			known[c.Name] = true
		}
		for _, e := range ents {
			if !known[e.Name()] || strings.HasPrefix(e.Name(), checkpointTmp) {
				m.cfg.Log.Warn("removing a checkpoint cut short by a server stop", "session", rec.ID, "dir", e.Name())
				os.RemoveAll(filepath.Join(root, e.Name()))
			}
		}
		m.recoverMemFiles(rec.ID, list)
	}
}

// settleDisk corrects the machine record of a session whose checkpoint
// was cut short (NextDisk set) by asking its VM which disk it writes. It
// returns whether mach changed. Where the VM does not say, nothing
// changes: both disks are kept and NextDisk stays recorded, so that the
// next park, checkpoint or restart asks again (removing either disk
// could remove the one the guest writes).
func (m *Manager) settleDisk(ctx context.Context, id string, vm vmm.VM, mach *machine) (bool, error) {
	if mach.NextDisk == "" {
		return false, nil
	}
	if m.ckpt == nil {
		return false, errors.New("the VMM driver cannot say which disk its VM writes")
	}
	disk, err := m.ckpt.Disk(ctx, vm)
	if err != nil {
		return false, fmt.Errorf("ask the VM for its disk: %w", err)
	}
	if disk != mach.NextDisk {
		os.Remove(mach.NextDisk)
	}
	mach.Disk, mach.NextDisk = disk, ""
	m.cfg.Log.Info("a checkpoint cut short is settled: the session runs on", "session", id, "disk", filepath.Base(disk))
	return true, nil
}

// settleLive settles the disk of running session rec, held by l, before
// an operation that needs to know it (a park, a checkpoint), and records
// the answer. The caller holds the session's lock.
func (m *Manager) settleLive(ctx context.Context, rec *store.Session, l *live) error {
	if l.mach.NextDisk == "" {
		return nil
	}
	mach := l.mach
	if _, err := m.settleDisk(ctx, rec.ID, l.vm, &mach); err != nil {
		return api.Errorf(api.CodeUnavailable, "session %s: a checkpoint cut short left which disk its VM writes unknown, and the VM does not say (%v); both disks are kept: try again", rec.ID, err)
	}
	rec.Snapshot, rec.UpdatedAt = mach.encode(), time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, rec); err != nil {
		return fmt.Errorf("session %s: record its disk: %w", rec.ID, err)
	}
	l.mach = mach
	return nil
}

// layered reports whether session rec's disk rests on a layer in its own
// dir (it took checkpoints, or is a fork of a session that did).
func (m *Manager) layered(ctx context.Context, rec store.Session) bool {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.Disk == "" {
		return false
	}
	b, err := m.backingFile(ctx, mach.Disk)
	return err == nil && b != "" && filepath.Dir(b) == filepath.Dir(mach.Disk)
}

// collectLayers removes the disk layers in session id's dir that neither
// its disk nor any of its checkpoints rests on: the tops a rollback left
// behind, and the layers of removed checkpoints that nothing stacked on.
// It runs under the session's lock; where it cannot tell (a record it
// cannot read, a layer whose header it cannot read), it removes nothing.
func (m *Manager) collectLayers(ctx context.Context, id string) {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return
	}
	dir := m.dir(id)
	keep := map[string]bool{}
	walk := func(disk string) bool {
		for l := disk; filepath.Dir(l) == dir; {
			keep[l] = true
			b, err := m.backingFile(ctx, l)
			if err != nil {
				return false
			}
			l = b
		}
		return true
	}
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.Disk == "" || mach.NextDisk != "" || mach.Rollback != "" || !walk(mach.Disk) {
		return
	}
	list, err := m.cfg.Store.ListCheckpoints(ctx, id)
	if err != nil {
		return
	}
	for _, c := range list {
		cm, err := decodeMachine(c.Manifest)
		if err != nil || !walk(cm.Disk) {
			return
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), "disk") && strings.HasSuffix(e.Name(), ".qcow2") && !keep[p] {
			m.cfg.Log.Info("removing a disk layer nothing rests on", "session", id, "layer", e.Name())
			os.Remove(p)
		}
	}
}
