package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Forks.
//
// A fork is a new session restored from a checkpoint of another (its
// parent): a named one, or one taken for the fork (then an ordinary
// checkpoint of the parent, named as a default one is). Each fork gets its
// own id, owner (the parent's), identity tokens and RNG state (the hello
// that every restore says reseeds it), and its own files: a copy of the
// checkpoint's RAM file, and a copy of the disk layers the checkpoint
// rests on that live in the parent's dir (reflinks where the file system
// has them, else their data extents), rebased onto each other, with a new
// overlay on top. So a fork rests on nothing of its parent's, and removing
// the parent (or the checkpoint) leaves it working; what it shares is
// what the parent shares too: the template's or image's disk.
//
// A fork is recorded once its VM runs, as a clone of a template is: a
// server that dies before leaves a session dir without a record and a VMM
// process no record names, which recovery removes.

// MaxForks bounds the forks one call makes.
const MaxForks = 16

// forkState is the name, in a fork's dir, of the checkpoint's state file
// it is restored from (removed once it runs).
const forkState = "fork.state"

// Fork makes n sessions from checkpoint from of session id, or from a
// checkpoint taken of it now if from is "". They run when Fork returns.
func (m *Manager) Fork(ctx context.Context, id string, req api.ForkRequest) ([]api.Session, error) {
	if m.ckpt == nil || m.snap == nil {
		return nil, api.Errorf(api.CodeUnavailable, "fork: the VMM driver cannot checkpoint")
	}
	n := req.N
	if n == 0 {
		n = 1
	}
	if n < 1 || n > MaxForks {
		return nil, api.Errorf(api.CodeInvalid, "fork: n is %d, want 1 to %d", req.N, MaxForks)
	}
	if req.From != "" && !checkpointName.MatchString(req.From) {
		return nil, api.Errorf(api.CodeInvalid, "fork: checkpoint name %q is not valid", req.From)
	}
	parent, c, cm, forks, release, err := m.prepareForks(ctx, id, req.From, n)
	if err != nil {
		return nil, err
	}
	defer release()
	out := make([]api.Session, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out[i], errs[i] = m.startFork(ctx, parent, c.Name, cm, forks[i])
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// The forks that run are kept: the caller sees them in the list.
		m.cfg.Log.Warn("fork: some forks failed", "session", id, "err", err)
		return nil, fmt.Errorf("session: fork %s: %w", id, err)
	}
	m.cfg.Log.Info("session forked", "session", id, "checkpoint", c.Name, "n", n)
	return out, nil
}

// prepareForks admits n VMs of session id's size, finds (or takes) the
// checkpoint, and makes each fork's dir with its files, under the
// parent's lock (the checkpoint cannot go meanwhile). release gives back
// the admission and removes the dirs no fork took.
func (m *Manager) prepareForks(ctx context.Context, id, from string, n int) (parent store.Session, c store.Checkpoint, cm machine, forks []forkDir, release func(), err error) {
	if err := m.takesVMs("fork " + id); err != nil {
		return parent, c, cm, nil, nil, err
	}
	unlock := m.lock(id)
	defer unlock()
	parent, err = m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return parent, c, cm, nil, nil, notFound(id, err)
	}
	// Forks are made where the parent's files are: on this server's
	// node, which must take new sessions.
	if !m.nodeSchedulable(ctx) {
		return parent, c, cm, nil, nil, m.notSchedulable("fork " + id)
	}
	var (
		releases []func()
		made     []forkDir // forks is nil on error returns
	)
	cleanup := func() {
		for _, r := range releases {
			r()
		}
		for _, f := range made {
			os.RemoveAll(f.dir) // a fork that runs renamed its dir: gone from here
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	for range n {
		r, err := m.admit("fork", parent.MemoryMiB, parent.CPUs)
		if err != nil {
			return parent, c, cm, nil, nil, err
		}
		releases = append(releases, r)
	}
	if from == "" {
		if parent.State != api.StateRunning {
			return parent, c, cm, nil, nil, api.Errorf(api.CodeConflict, "fork %s: session is %s: fork it from one of its checkpoints (--from), or wake it first", id, parent.State)
		}
		m.mu.Lock()
		l := m.live[id]
		m.mu.Unlock()
		if l == nil {
			return parent, c, cm, nil, nil, api.Errorf(api.CodeConflict, "fork %s: no running VM", id)
		}
		name, err := m.newCheckpointName(ctx, id, "")
		if err != nil {
			return parent, c, cm, nil, nil, err
		}
		if c, err = m.checkpoint(context.WithoutCancel(ctx), parent, l, name, 0); err != nil {
			return parent, c, cm, nil, nil, err
		}
	} else if c, err = m.cfg.Store.GetCheckpoint(ctx, id, from); err != nil {
		return parent, c, cm, nil, nil, checkpointNotFound(id, from, err)
	}
	if cm, err = parkedMachine(c.Manifest); err != nil {
		return parent, c, cm, nil, nil, api.Errorf(api.CodeUnavailable, "fork %s: checkpoint %s unusable: %v", id, c.Name, err)
	}
	root := filepath.Join(m.cfg.Dir, cloneFilesDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return parent, c, cm, nil, nil, fmt.Errorf("session: fork %s: %w", id, err)
	}
	if err := roomFor(root, int64(n)*m.forkBytes(ctx, id, cm), "fork "+id); err != nil {
		return parent, c, cm, nil, nil, err
	}
	m.crashPoint("fork.copying")
	var mem *parked // once one fork holds the RAM raw, the others copy it
	for range n {
		d, err := os.MkdirTemp(root, "fork-")
		if err != nil {
			return parent, c, cm, nil, nil, fmt.Errorf("session: fork %s: %w", id, err)
		}
		made = append(made, forkDir{dir: d})
		if made[len(made)-1].disk, err = m.forkFiles(ctx, m.dir(id), c, d, mem); err != nil {
			return parent, c, cm, nil, nil, fmt.Errorf("session: fork %s: %w", id, err)
		}
		m.crashPoint("fork.copied")
		if mem == nil && cm.Parked.MemFormat == memQcow2 {
			mem = &parked{Mem: filepath.Join(d, vmm.MemFile)}
		}
	}
	return parent, c, cm, made, cleanup, nil
}

// forkFiles makes in dir a fork's files from checkpoint c of the session
// whose dir is parent: the RAM file (copied from mem if set: a raw file
// that holds the checkpoint's RAM, another fork's), the state (forkState), and copies of
// the disk layers in parent that the checkpoint's disk rests on, with a
// new overlay on them, whose name it returns (a name in dir: the dir is
// renamed to the fork's session dir, and the layers' backing names are
// made relative to their own dir, so they hold there).
func (m *Manager) forkFiles(ctx context.Context, parent string, c store.Checkpoint, dir string, mem *parked) (string, error) {
	disks := m.disks
	cm, err := parkedMachine(c.Manifest)
	if err != nil {
		return "", err
	}
	if mem == nil {
		mem = cm.Parked
	}
	if err := m.copyMem(ctx, mem, filepath.Join(dir, vmm.MemFile)); err != nil {
		return "", fmt.Errorf("copy memory: %w", err)
	}
	if err := copyFileSync(cm.Parked.State, filepath.Join(dir, forkState)); err != nil {
		return "", fmt.Errorf("copy state: %w", err)
	}
	// The layers in the parent's dir, top (the checkpoint's) first.
	var layers []string
	for l := cm.Disk; filepath.Dir(l) == parent; {
		layers = append(layers, l)
		b, _, err := disks.Backing(ctx, l)
		if err != nil {
			return "", fmt.Errorf("disk layer %s: %w", filepath.Base(l), err)
		}
		if len(layers) > 64 {
			return "", errors.New("disk chain too long")
		}
		l = b
	}
	for i, l := range layers {
		dst := filepath.Join(dir, filepath.Base(l))
		copyRest, err := startCopy(l, dst)
		if err == nil {
			err = copyRest(true)
		}
		if err == nil {
			// Read by the VMM, which may run as another user (the top
			// layer alone is given to it): as the driver makes layers.
			err = os.Chmod(dst, 0o644)
		}
		if err != nil {
			return "", fmt.Errorf("copy disk layer %s: %w", filepath.Base(l), err)
		}
		if i+1 < len(layers) {
			// Relative: resolved against the layer's own dir.
			if err := disks.Rebase(ctx, dst, filepath.Base(layers[i+1]), "qcow2", false); err != nil {
				return "", fmt.Errorf("rebase disk layer %s: %w", filepath.Base(l), err)
			}
		}
	}
	top := fmt.Sprintf("disk-%d.qcow2", time.Now().UnixNano())
	if len(layers) == 0 {
		// The checkpoint's disk is outside the parent's dir: rest on it.
		return top, makeOverlay(ctx, disks, cm.Disk, filepath.Join(dir, top))
	}
	if err := disks.Overlay(ctx, filepath.Join(dir, top), filepath.Base(layers[0]), "qcow2"); err != nil {
		return "", fmt.Errorf("overlay: %w", err)
	}
	return top, nil
}

// forkBytes is what forkFiles copies for one fork of checkpoint cm of
// session id: its RAM file's data and its disk layers in the session's
// dir (as far as their headers can be read).
func (m *Manager) forkBytes(ctx context.Context, id string, cm machine) int64 {
	dir := m.dir(id)
	return m.memBytes(ctx, cm.Parked) + m.chainBytes(ctx, cm.Disk, func(l string) bool { return filepath.Dir(l) == dir })
}

// forkDir is a fork's files made ahead: its dir, and its disk's name in
// it.
type forkDir struct{ dir, disk string }

// startFork restores one fork of session parent from its checkpoint
// (machine cm) with the files f, whose dir is renamed to the fork's
// session dir, and records it.
func (m *Manager) startFork(ctx context.Context, parent store.Session, from string, cm machine, f forkDir) (api.Session, error) {
	id := newID()
	dir := m.dir(id)
	if err := os.Rename(f.dir, dir); err != nil {
		return api.Session{}, fmt.Errorf("fork: %w", err)
	}
	start := time.Now()
	mach := cm
	mach.Parked, mach.NextDisk, mach.Rollback = nil, "", ""
	mach.GuestRequest, mach.Restore = 0, nil
	mach.MemFrom = "" // the parent's checkpoints are not the fork's
	mach.Disk = filepath.Join(dir, f.disk)
	rctx, cancel := context.WithTimeout(ctx, m.cfg.DefaultBootTimeout)
	defer cancel()
	l, err := m.restore(rctx, id, dir, mach, filepath.Join(dir, forkState), hooks{})
	if err != nil {
		os.RemoveAll(dir)
		return api.Session{}, fmt.Errorf("fork: restore: %w", err)
	}
	os.Remove(filepath.Join(dir, forkState))
	m.crashPoint("fork.restored")
	l.env = parent.Env
	if cm.GuestRequest != 0 {
		// The guest's 'cove-agent checkpoint' waits in the fork too.
		l.setRestore(&agentproto.Restored{Kind: agentproto.RestoredFork, Checkpoint: from, Request: cm.GuestRequest, Parent: parent.ID})
	}
	now := time.Now().UTC()
	rec := store.Session{ID: id, State: api.StateRunning, Image: parent.Image, MemoryMiB: parent.MemoryMiB, CPUs: parent.CPUs,
		Env: parent.Env, Accel: m.cfg.Driver.Accel(), CreatedAt: now, UpdatedAt: now,
		BootMillis: time.Since(start).Milliseconds(), Handle: l.vm.Handle(), Snapshot: l.mach.encode(),
		Template: parent.Template, TemplateVersion: parent.TemplateVersion, IdleTimeout: parent.IdleTimeout,
		NoAutoWake: parent.NoAutoWake, Owner: parent.Owner, Agent: parent.Agent, Allow: parent.Allow, Node: m.cfg.Node,
		Parent: parent.ID, FromCheckpoint: from}
	if err := m.cfg.Store.CreateSession(ctx, &rec); err != nil {
		l.client().Close()
		_ = l.vm.Stop(context.Background())
		os.RemoveAll(dir)
		return api.Session{}, fmt.Errorf("fork: record: %w", err)
	}
	m.adoptLive(id, l)
	m.cfg.Log.Info("session forked", "session", id, "parent", parent.ID, "checkpoint", from, "ms", rec.BootMillis, "owner", rec.Owner)
	return m.toAPI(rec), nil
}
