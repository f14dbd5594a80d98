package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Templates from checkpoints.
//
// A template's first version can be a checkpoint of a session (cove
// template create NAME --from-checkpoint ID:CKPT) instead of a boot and a
// setup: its RAM file and state are copied into the version's dir, and its
// disk, a chain of layers in the session's dir on the template's or
// image's disk, becomes one overlay on the image's root file system
// (the driver's Disks.Flatten onto that backing), as every template version's disk
// is: it rests on nothing the session or another template may remove.

// checkpointRef names a checkpoint of a session.
type checkpointRef struct{ session, name string }

// checkpointForTemplate checks req.FromCheckpoint and fills req's machine
// and env from the session it names.
func (m *Manager) checkpointForTemplate(ctx context.Context, req *api.CreateTemplateRequest) (*checkpointRef, error) {
	id, name, ok := strings.Cut(req.FromCheckpoint, ":")
	if !ok || id == "" || !checkpointName.MatchString(name) {
		return nil, api.Errorf(api.CodeInvalid, "from_checkpoint %q: want SESSION:NAME", req.FromCheckpoint)
	}
	if req.Image != "" || req.MemoryMiB != 0 || req.CPUs != 0 || len(req.Setup) > 0 || req.Start != "" || req.Repo != "" {
		return nil, api.Errorf(api.CodeInvalid, "from_checkpoint: the template is the checkpoint's machine: image, memory, cpus, setup, start and repo must not be given")
	}
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return nil, notFound(id, err)
	}
	if _, err := m.cfg.Store.GetCheckpoint(ctx, id, name); err != nil {
		return nil, checkpointNotFound(id, name, err)
	}
	req.Image, req.MemoryMiB, req.CPUs = rec.Image, rec.MemoryMiB, rec.CPUs
	env := map[string]string{}
	for k, v := range rec.Env {
		env[k] = v
	}
	for k, v := range req.Env {
		env[k] = v
	}
	if len(env) > 0 {
		req.Env = env
	}
	return &checkpointRef{session: id, name: name}, nil
}

// versionFromCheckpoint makes template t's version v from checkpoint from,
// under its session's lock (the checkpoint stays meanwhile).
func (m *Manager) versionFromCheckpoint(ctx context.Context, t store.Template, v store.TemplateVersion, from checkpointRef) (machine, error) {
	unlock := m.lock(from.session)
	defer unlock()
	c, err := m.cfg.Store.GetCheckpoint(ctx, from.session, from.name)
	if err != nil {
		return machine{}, checkpointNotFound(from.session, from.name, err)
	}
	cm, err := parkedMachine(c.Manifest)
	if err != nil {
		return machine{}, api.Errorf(api.CodeUnavailable, "template %s: checkpoint %s of %s unusable: %v", t.Name, from.name, from.session, err)
	}
	dir := m.versionDir(t.Name, v.Version)
	os.RemoveAll(dir)
	// Traversable by the VMM's user, which reads the disk as its clones'
	// backing file (0444 below).
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return machine{}, fmt.Errorf("template %s: %w", t.Name, err)
	}
	err = m.copyMem(ctx, cm.Parked, filepath.Join(dir, vmm.MemFile))
	if err == nil {
		err = copyFileSync(cm.Parked.State, filepath.Join(dir, stateFile))
	}
	if err != nil {
		return machine{}, fmt.Errorf("template %s: copy the checkpoint: %w", t.Name, err)
	}
	disk := filepath.Join(dir, cloneOverlay)
	if err := flattenOnto(ctx, m.disks, cm.Disk, disk); err != nil {
		return machine{}, fmt.Errorf("template %s: %w", t.Name, err)
	}
	p, err := manifest(dir, 0)
	if err != nil {
		return machine{}, fmt.Errorf("template %s: %w", t.Name, err)
	}
	// The version's files are its clones' base from now on.
	for _, f := range []string{p.Mem, p.State, disk} {
		_ = os.Chmod(f, 0o444)
	}
	mach := cm
	mach.Disk, mach.Parked, mach.NextDisk, mach.Rollback = disk, p, "", ""
	// A guest tool waiting in the checkpoint is not told of clones: it
	// fails there as one whose host went away.
	mach.GuestRequest, mach.Restore, mach.MemFrom = 0, nil, ""
	m.cfg.Log.Info("template version made from a checkpoint", "template", t.Name, "session", from.session, "checkpoint", from.name)
	return mach, nil
}

// flattenOnto writes disk (created) as a qcow2 overlay, on the raw file
// at the bottom of src's chain (the image's root file system), holding
// what src's chain holds above it.
func flattenOnto(ctx context.Context, disks vmm.Disks, src, disk string) error {
	base := src
	for range 128 {
		b, _, err := disks.Backing(ctx, base)
		if errors.Is(err, vmm.ErrNotQcow2) {
			break
		}
		if err != nil {
			return fmt.Errorf("flatten: %w", err)
		}
		if b == "" {
			return fmt.Errorf("flatten: %s rests on no image", src)
		}
		base = b
	}
	if base == src {
		return fmt.Errorf("flatten: %s is not a qcow2 overlay", src)
	}
	if err := disks.Flatten(ctx, src, disk, base, "raw"); err != nil {
		return fmt.Errorf("flatten: %w", err)
	}
	return nil
}
