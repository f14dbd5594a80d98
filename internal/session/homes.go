package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// Nodes of other homes (issue 19).
//
// A node keeps its files under its home (cove server and cove node
// --home): a session's in HOME/sessions/ID, a template version's in
// HOME/templates/NAME/vN, and its images, kernel and initramfs beside
// them. The records name those files by their absolute paths, and so do
// the qcow2 overlays their backing files. Nodes need not lay out --home
// alike: each reads another's paths in its own home.
//
//   - A record's home is derived from the paths it names, not recorded:
//     a session's is the directory above its sessions dir (homeOf:
//     HOME/sessions/ID gives HOME), a template version's the directory
//     above its templates dir (versionHome: HOME/templates/NAME/vN gives
//     HOME). This node's are Manager.home and the parent of
//     Config.TemplateDir (both HOME under cove server).
//   - A session moved to this node (wakeHere, toLastSnapshot: a dead or
//     draining node's) has its record rehomed: the paths in its session
//     dir there go to its dir here, and the other paths under that node's
//     home (its kernel, initramfs, the image's root file system) to the
//     same place under this one. The record keeps that home
//     (machine.FromHome) until the session runs here: its wake rebases
//     the disk it restored from the object store, whose qcow2 header
//     names the backing file under the old home, onto the same file
//     here (an unsafe rebase: only the name changes; the file here was
//     restored by content from the same manifest, or built from the same
//     image key).
//   - A template version's record stays as the node that built it wrote
//     it; each node reads it in its own home (versionHere): its files are
//     restored into this node's templates dir, and its disk, once
//     restored, rebased onto this node's copy of its image.
//   - A kernel or initramfs the record names that is missing here is made
//     by this node's image builder before the wake (Images.Kernel and
//     Initramfs): the nodes of a fleet run one kernel version.

// home is this node's home: the directory its sessions dir lies in.
func (m *Manager) home() string { return filepath.Dir(m.cfg.Dir) }

// homeOf is the home of the node whose session dir is dir (HOME/sessions/ID).
func homeOf(dir string) string { return filepath.Dir(filepath.Dir(dir)) }

// within returns p's path relative to root if p lies in root.
func within(p, root string) (string, bool) {
	if p == "" || root == "" {
		return "", false
	}
	rel, err := filepath.Rel(root, p)
	if err != nil || !filepath.IsLocal(rel) {
		return "", false
	}
	return rel, true
}

// moveHome returns p moved from home from to home to: p itself when it
// does not lie in from, or lies in to more deeply (it is there already).
func moveHome(p, from, to string) string {
	if from == to {
		return p
	}
	rel, ok := within(p, from)
	if !ok {
		return p
	}
	if _, in := within(p, to); in && len(to) > len(from) {
		return p
	}
	return filepath.Join(to, rel)
}

// relocate moves the paths of machine mach: those in session dir fromDir
// into toDir first, then those in home fromHome into toHome. The last
// stored snapshot's record moves from its own session dir and home.
func relocate(mach machine, fromDir, toDir, fromHome, toHome string) machine {
	move := func(p *string) {
		if rel, ok := within(*p, fromDir); ok && fromDir != toDir {
			*p = filepath.Join(toDir, rel)
			return
		}
		*p = moveHome(*p, fromHome, toHome)
	}
	for _, p := range []*string{&mach.Kernel, &mach.Initrd, &mach.Disk, &mach.NextDisk, &mach.Rollback, &mach.MemFrom} {
		move(p)
	}
	if mach.Parked != nil {
		p := *mach.Parked
		move(&p.State)
		move(&p.Mem)
		mach.Parked = &p
	}
	if fromHome != toHome && fromHome != "" && mach.FromHome == "" {
		mach.FromHome = fromHome
	}
	if mach.LastStored != nil {
		ls := *mach.LastStored
		if lm, err := decodeMachine(ls.Machine); err == nil {
			dir := sessionDirOf(ls.Machine)
			if dir == "" {
				dir = fromDir
			}
			ls.Machine = relocate(lm, dir, toDir, homeOf(dir), toHome).encode()
		}
		mach.LastStored = &ls
	}
	return mach
}

// versionHome is the home of the node whose template version dir is dir
// (HOME/templates/NAME/vN).
func versionHome(dir string) string { return filepath.Dir(filepath.Dir(filepath.Dir(dir))) }

// versionHere returns template version machine mach, as the node that
// built it recorded it, with its paths in this node's home: its files in
// this node's dir for the version, the others (kernel, initramfs) in
// this node's home; or as it is where none of those are here but the
// builder's own files are within reach (another server's dirs on this
// host). A machine without a snapshot is returned as it is.
func (m *Manager) versionHere(mach machine) machine {
	if mach.Parked == nil {
		return mach
	}
	dir := filepath.Dir(mach.Parked.Mem)
	from := versionHome(dir)
	to := filepath.Dir(m.cfg.TemplateDir)
	if from == to {
		return mach
	}
	here := filepath.Join(m.cfg.TemplateDir, filepath.Base(filepath.Dir(dir)), filepath.Base(dir))
	moved := relocate(mach, dir, here, from, to)
	if filesGone(moved) && !filesGone(mach) {
		// The builder's own files are within this node's reach (servers
		// of one host, each with its own dirs) and none were restored
		// here: read those.
		return mach
	}
	return moved
}

// templateHere is versionHere for a template version's machine record b
// (a template's current one, store.Template.Snapshot); a record that
// does not decode is returned as it is, for its reader to refuse.
func (m *Manager) templateHere(b []byte) []byte {
	mach, err := decodeMachine(b)
	if err != nil || mach.Parked == nil {
		return b
	}
	return m.versionHere(mach).encode()
}

// rebaseHome makes the qcow2 file disk, if its backing file lies in home
// from (another node's), rest on the same file in home to (this node's):
// the files restored here from the object store name the backing file
// they rested on where they were made.
func (m *Manager) rebaseHome(ctx context.Context, disk, from, to string) error {
	if from == "" || from == to {
		return nil
	}
	b, format, err := m.disks.Backing(ctx, disk)
	if errors.Is(err, vmm.ErrNotQcow2) || err == nil && b == "" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("disk %s: %w", disk, err)
	}
	nb := moveHome(b, from, to)
	if nb == b {
		return nil
	}
	if format == "" {
		format = "raw"
		if _, _, err := m.disks.Backing(ctx, nb); !errors.Is(err, vmm.ErrNotQcow2) {
			format = "qcow2"
		}
	}
	if err := m.disks.Rebase(ctx, disk, nb, format, false); err != nil {
		return fmt.Errorf("disk %s: rest it on this node's %s (was %s): %w", disk, nb, b, err)
	}
	m.cfg.Log.Info("disk made on another node rests on this node's file now", "disk", disk, "backing", nb, "was", b)
	return nil
}

// bootFilesHere makes the kernel and initramfs parked machine mach names
// where they are missing from this host (a session moved from a node of
// another home names this node's paths for them, which this node may not
// have made yet), with this node's image builder; what it makes must be
// at those paths (the same kernel version), or the wake is refused.
func (m *Manager) bootFilesHere(ctx context.Context, id string, mach machine) error {
	missing := func() string {
		for _, p := range []string{mach.Kernel, mach.Initrd} {
			if _, err := os.Stat(p); p != "" && errors.Is(err, os.ErrNotExist) {
				return p
			}
		}
		return ""
	}
	if missing() == "" {
		return nil
	}
	k, err := m.cfg.Images.Kernel(ctx, func(msg string) { m.cfg.Log.Info(msg) })
	if err == nil {
		_, err = m.cfg.Images.Initramfs(k)
	}
	if err != nil {
		return fmt.Errorf("session: wake %s: make this node's kernel: %w", id, err)
	}
	if p := missing(); p != "" {
		return api.Errorf(api.CodeUnavailable, "wake %s: its snapshot was taken with %s, which this node does not have (its kernel is %s): it wakes on a node that runs the same kernel", id, p, k.Vmlinux)
	}
	return nil
}
