package session

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// Clone files made ahead.
//
// A clone needs a RAM file of its own and a qcow2 overlay on its
// template's disk. Where the file system cannot reflink, the RAM file is
// a copy of the template's touched pages (≈110 MiB for a tiny guest):
// tens of milliseconds, and hundreds on a host that backs fresh memory
// lazily (a VM whose free pages go back to its host). The overlay is a
// program run (the driver's Disks.Overlay). So the manager keeps Config.CloneFiles sets of both made
// ahead for the current version of each ready template, each in a
// directory of its own under <Dir>/.clone-files (on the sessions' file
// system), made one at a time by one thread at nice 19. A create from the
// template that finds its pool empty renames a set into the new session's
// directory instead of copying; pool refills copy (they are background
// work already) and leave the sets to such creates. The sets are a cache:
// removed at start, never used for another version than the one they were
// made from, and dropped when the template's version changes or the
// template goes.

// cloneFilesDir is the directory, in Config.Dir, of the sets.
const cloneFilesDir = ".clone-files"

// cloneFilesDelay is how long after a create takes a set the next one is
// started.
const cloneFilesDelay = 500 * time.Millisecond

// cloneOverlay is a clone's disk, an overlay on its template's disk.
const cloneOverlay = "disk.qcow2"

// cloneFiles is one set made ahead.
type cloneFiles struct {
	version int    // the template version it is a copy of
	dir     string // holds vmm.MemFile and cloneOverlay
}

// takeCloneFiles returns the directory of a set made ahead for the given
// version of template name, or "" if none is ready. The caller owns it
// (renames or removes it). Sets of other versions are removed.
func (m *Manager) takeCloneFiles(name string, version int) string {
	m.dropCloneFiles(name, version)
	m.mu.Lock()
	defer m.mu.Unlock()
	sets := m.cloneFiles[name]
	if len(sets) == 0 {
		return ""
	}
	m.cloneFiles[name] = sets[1:]
	return sets[0].dir
}

// dropCloneFiles removes the sets made for template name except those of
// version keep (0: all).
func (m *Manager) dropCloneFiles(name string, keep int) {
	m.mu.Lock()
	var kept []cloneFiles
	var drop []string
	for _, s := range m.cloneFiles[name] {
		if keep != 0 && s.version == keep {
			kept = append(kept, s)
		} else {
			drop = append(drop, s.dir)
		}
	}
	if kept == nil {
		delete(m.cloneFiles, name)
	} else {
		m.cloneFiles[name] = kept
	}
	m.mu.Unlock()
	for _, d := range drop {
		os.RemoveAll(d)
	}
}

// wantCloneFiles asks the maker to bring template name's sets up to
// Config.CloneFiles. It returns at once.
func (m *Manager) wantCloneFiles(name string) {
	if m.cfg.CloneFiles <= 0 {
		return
	}
	m.mu.Lock()
	m.cloneWanted[name] = true
	m.mu.Unlock()
	select {
	case m.cloneKick <- struct{}{}:
	default:
	}
}

// cloneFilesLoop makes the sets wanted, one at a time, until the manager
// stops. Its thread runs at nice 19 for its whole life (the Go runtime
// ends a thread whose goroutine exits locked to it), so the copies yield
// the CPU to guests, and so do the programs the driver's Disks start.
func (m *Manager) cloneFilesLoop() {
	defer m.bg.Done()
	runtime.LockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
	for {
		select {
		case <-m.stop:
			return
		case <-m.cloneKick:
		}
		for {
			m.mu.Lock()
			var name string
			for n := range m.cloneWanted {
				name = n
				break
			}
			delete(m.cloneWanted, name)
			m.mu.Unlock()
			if name == "" {
				break
			}
			m.fillCloneFiles(name)
			select {
			case <-m.stop:
				return
			default:
			}
		}
	}
}

// fillCloneFiles makes sets for template name's current version until
// Config.CloneFiles are ready, holding the template's read lock so its
// files stay in place. A failure is logged; the next want tries again.
func (m *Manager) fillCloneFiles(name string) {
	ctx := context.Background()
	tl := m.templateLock(name)
	tl.RLock()
	defer tl.RUnlock()
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		t, err := m.cfg.Store.GetTemplate(ctx, name)
		if err != nil || t.State != api.TemplateReady {
			m.dropCloneFiles(name, 0)
			return
		}
		version := max(t.Version, 1)
		m.dropCloneFiles(name, version)
		m.mu.Lock()
		have := len(m.cloneFiles[name])
		m.mu.Unlock()
		if have >= m.cfg.CloneFiles {
			return
		}
		mach, err := parkedMachine(m.templateHere(t.Snapshot))
		if err == nil {
			var dir string
			if dir, err = m.makeCloneFiles(ctx, name, mach); err == nil {
				m.mu.Lock()
				m.cloneFiles[name] = append(m.cloneFiles[name], cloneFiles{version: version, dir: dir})
				m.mu.Unlock()
				continue
			}
		}
		m.cfg.Log.Warn("clone files not made ahead", "template", name, "version", version, "err", err)
		return
	}
}

// makeCloneFiles makes one set from the parked machine mach of template
// name and returns its directory.
func (m *Manager) makeCloneFiles(ctx context.Context, name string, mach machine) (string, error) {
	root := filepath.Join(m.cfg.Dir, cloneFilesDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(root, name+"-")
	if err != nil {
		return "", err
	}
	mem := filepath.Join(dir, vmm.MemFile)
	copyRest, err := startCopy(mach.Parked.Mem, mem)
	if err == nil {
		// Written back now, off the create's path: a guest's first
		// write to a page still dirty from the copy costs its QEMU
		// more (the file system allocates the block), and the clone's
		// first park would have to write all of it.
		err = copyRest(true)
	}
	if err == nil {
		err = makeOverlay(ctx, m.disks, mach.Disk, filepath.Join(dir, cloneOverlay))
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("make clone files: %w", err)
	}
	return dir, nil
}

// resetCloneFiles removes the sets a previous server left (they are not
// tracked across restarts).
func (m *Manager) resetCloneFiles() {
	os.RemoveAll(filepath.Join(m.cfg.Dir, cloneFilesDir))
}
