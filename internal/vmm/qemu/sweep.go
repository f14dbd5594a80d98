package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sweep removes what VMs the caller does not keep left behind under
// dirRoot: it kills their QEMU processes (and unclaimed spares), waits for
// them to exit, then removes the spare directories no process uses and
// the cgroups no process is in. keep says which VM ids are the caller's
// (a session with a record). It returns the PIDs it killed.
func (d *Driver) Sweep(dirRoot string, keep func(id string) bool) []int {
	killed := Orphans(dirRoot, keep)
	for _, pid := range killed {
		d.cfg.Log.Warn("killing orphan QEMU process", "pid", pid)
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	waitGoneFor(killed, 10*time.Second)
	if d.cfg.SpareDir != "" {
		used := map[string]bool{}
		for _, p := range Procs(d.cfg.SpareDir) {
			used[filepath.Base(p.dir())] = true
		}
		ents, _ := os.ReadDir(d.cfg.SpareDir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), spareName) && !used[e.Name()] && !d.ownSpare(e.Name()) {
				os.RemoveAll(filepath.Join(d.cfg.SpareDir, e.Name()))
			}
		}
	}
	// A cgroup with processes in it cannot be removed: only empty ones
	// go.
	d.CleanCgroups(func(string) bool { return false })
	return killed
}

// KillVMs implements vmm.Driver: it SIGKILLs the QEMU processes that run
// VMs under dirRoot (started for them, or spares they claimed) whose id
// match reports true, and waits until they are gone.
func (d *Driver) KillVMs(ctx context.Context, dirRoot string, match func(id string) bool) []int {
	var pids []int
	for _, p := range Procs(dirRoot) {
		if !p.Spare && match(p.ID) {
			pids = append(pids, p.PID)
		}
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	WaitGone(ctx, pids)
	return pids
}

// WaitGone waits until the processes pids are gone, or ctx ends. A
// killed process is gone from /proc once reaped (QEMU's parent, an
// earlier server, is gone: init reaps it); a zombie still holds its
// cgroup.
func WaitGone(ctx context.Context, pids []int) {
	for _, pid := range pids {
		for ctx.Err() == nil {
			if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err != nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// waitGoneFor is WaitGone for at most limit.
func waitGoneFor(pids []int, limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	WaitGone(ctx, pids)
}

// ownSpare reports whether name is a spare of this driver's, idle or
// starting.
func (d *Driver) ownSpare(name string) bool {
	s := d.spares
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, vms := range s.idle {
		for _, vm := range vms {
			if filepath.Base(vm.spareDir) == name {
				return true
			}
		}
	}
	// A spare being started has its directory before its process: keep
	// every directory while one starts.
	for _, n := range s.starting {
		if n > 0 {
			return true
		}
	}
	return false
}
