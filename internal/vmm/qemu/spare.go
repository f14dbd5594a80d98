package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/vmm"
)

// A spare is a QEMU process started before it is needed, waiting in
// preconfig (--preconfig, -incoming defer): its binary and libraries are
// loaded, its accelerator set up and its command-line backends made, but
// it has no RAM, disk or devices yet. Restore claims one of the machine's
// shape (memory size, CPUs), adds the VM's memory file and disk over QMP,
// leaves preconfig and loads the state: about half of QEMU's start (its
// page faults: heap, binary, libraries) is off the wake path.
//
// A spare lives in a directory of its own under Config.SpareDir, on the
// VMs' file system: when claimed, its sockets and logs are renamed into
// the VM's directory, so everything that finds a VM there (Adopt,
// DialAgent, the logs) works as for any other, and an owner file in the
// spare's directory names the VM, for Orphans (its command line still
// names the spare).

// spareOwner is the file in a claimed spare's directory that names its VM.
const spareOwner = "owner"

// spareName prefixes the names (-name cove-spare-…, directory) of spares.
const spareName = "spare-"

// stateFD names the state file handed to a claimed spare (getfd).
const stateFD = "state"

// maxShapes bounds the machine shapes spares are kept for: those of the
// latest restores.
const maxShapes = 2

type shape struct{ memMiB, cpus int }

// spareStartTimeout bounds a spare's start. It starts at nice 19 and may
// get little CPU while guests run, so it is generous.
const spareStartTimeout = 2 * time.Minute

// A failed spare start is tried again after spareRetryMin, doubling with
// each failure in a row up to spareRetryMax, while its shape is among the
// latest.
const (
	spareRetryMin = time.Second
	spareRetryMax = 5 * time.Minute
)

type spares struct {
	mu       sync.Mutex
	idle     map[shape][]*VM // guarded by mu
	starting map[shape]int   // guarded by mu
	failures map[shape]int   // guarded by mu: failed starts in a row
	recent   []shape         // guarded by mu: least recently used first
	closed   bool            // guarded by mu
	wg       sync.WaitGroup
	// stop ends the starts in flight when the driver closes: a spare
	// starts at the lowest priority and, on a loaded host, could hold
	// a server's exit for its whole start timeout.
	stop   context.Context
	cancel context.CancelFunc
}

// Prewarm starts spares for VMs of this shape (see Config.Spares), so the
// first restore of one finds one ready. It returns at once.
func (d *Driver) Prewarm(memMiB, cpus int) {
	d.refill(shape{memMiB, cpus})
}

// HasSpares reports whether the driver keeps spares (Config.SpareDir).
func (d *Driver) HasSpares() bool { return d.spares != nil }

// ReadySpares is how many spares of this shape wait to be claimed.
func (d *Driver) ReadySpares(memMiB, cpus int) int {
	s := d.spares
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.idle[shape{memMiB, cpus}])
}

// Close stops the spare processes and cuts short those starting (see
// spares.stop). VMs are left running.
func (d *Driver) Close() {
	s := d.spares
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	var idle []*VM
	for _, vms := range s.idle {
		idle = append(idle, vms...)
	}
	s.idle = map[shape][]*VM{}
	s.mu.Unlock()
	s.cancel()
	for _, vm := range idle {
		vm.discard()
	}
	s.wg.Wait()
}

// takeSpare returns a ready spare of shape sh, or nil.
func (d *Driver) takeSpare(sh shape) *VM {
	s := d.spares
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.idle[sh]) > 0 {
		vm := s.idle[sh][0]
		s.idle[sh] = s.idle[sh][1:]
		select {
		case <-vm.done: // it died waiting
			vm.qmp.Close()
		default:
			return vm
		}
	}
	return nil
}

// refill starts spares of shape sh in the background until Config.Spares
// are ready or starting, and retires the spares of shapes no longer among
// the latest maxShapes.
func (d *Driver) refill(sh shape) { d.startSpares(sh, true) }

// startSpares is refill; touch marks sh as restored now. A retry after a
// failed start does not: it only goes on while sh is among the latest.
func (d *Driver) startSpares(sh shape, touch bool) {
	s := d.spares
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.closed || !touch && !containsShape(s.recent, sh) {
		s.mu.Unlock()
		return
	}
	if touch {
		s.recent = append(deleteShape(s.recent, sh), sh)
	}
	var retired []*VM
	for len(s.recent) > maxShapes {
		old := s.recent[0]
		s.recent = s.recent[1:]
		retired = append(retired, s.idle[old]...)
		delete(s.idle, old)
	}
	need := d.cfg.Spares - len(s.idle[sh]) - s.starting[sh]
	if need > 0 {
		s.starting[sh] += need
		s.wg.Add(1)
	}
	s.mu.Unlock()
	for _, vm := range retired {
		vm.discard()
	}
	if need <= 0 {
		return
	}
	go func() {
		defer s.wg.Done()
		for left := need; left > 0; left-- {
			vm, err := d.startSpare(sh)
			s.mu.Lock()
			if err != nil && s.closed {
				s.mu.Unlock()
				return // cut short by Close
			}
			s.starting[sh]--
			keep := err == nil && !s.closed && containsShape(s.recent, sh)
			if keep {
				s.idle[sh] = append(s.idle[sh], vm)
			}
			var retry time.Duration
			if err != nil {
				// The rest are not tried now: the retry starts them.
				s.starting[sh] -= left - 1
				retry = min(spareRetryMin<<min(s.failures[sh], 16), spareRetryMax)
				s.failures[sh]++
			} else {
				delete(s.failures, sh)
			}
			s.mu.Unlock()
			if err != nil {
				d.cfg.Log.Warn("qemu spare process did not start; trying again later", "memory_mib", sh.memMiB, "cpus", sh.cpus,
					"retry_in", retry, "err", err)
				time.AfterFunc(retry, func() { d.startSpares(sh, false) })
				return
			}
			if !keep {
				vm.discard()
			}
		}
	}()
}

func deleteShape(list []shape, sh shape) []shape {
	out := list[:0]
	for _, x := range list {
		if x != sh {
			out = append(out, x)
		}
	}
	return out
}

func containsShape(list []shape, sh shape) bool {
	for _, x := range list {
		if x == sh {
			return true
		}
	}
	return false
}

// spareArgs is the command line of a spare: the machine without its RAM,
// kernel or disk, stopped before it is made.
func spareArgs(accel string, spec vmm.Spec) []string {
	return append(machineArgs(accel, 0, spec, false), "--preconfig", "-incoming", "defer", "-S")
}

// startSpare starts one spare of shape sh and waits until its QMP answers.
func (d *Driver) startSpare(sh shape) (*VM, error) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := spareName + hex.EncodeToString(b)
	dir := filepath.Join(d.cfg.SpareDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu: spare: %w", err)
	}
	spec := vmm.Spec{ID: name, Dir: dir, MemoryMiB: sh.memMiB, CPUs: sh.cpus}
	ctx, cancel := context.WithTimeout(d.spares.stop, spareStartTimeout)
	defer cancel()
	// Its cgroups are made now, with the limits of its shape. It starts
	// while a woken guest runs, so it yields the CPU; only root can give
	// the priority back when it is claimed.
	opts := spawnOpts{spareDir: dir}
	if os.Geteuid() == 0 {
		opts.nice = 19
	}
	vm, err := d.spawn(ctx, spec, spareArgs(d.accel, spec), opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return vm, nil
}

// discard ends a spare that is not (or no longer) to be claimed.
func (vm *VM) discard() {
	_ = vm.kill()
	vm.qmp.Close()
}

// setNice sets the nice value of every thread of pid (nice is per thread
// on Linux).
func setNice(pid, nice int) {
	tids, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tids {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		}
	}
}

// claim makes spare vm the VM of spec: it adds spec's memory file and
// disk, leaves preconfig (QEMU then waits for the incoming state), moves
// the spare's sockets and logs into spec.Dir and hands QEMU state, the
// state file (named stateFD). On error the caller discards vm.
func (d *Driver) claim(ctx context.Context, vm *VM, spec vmm.Spec, state *os.File) error {
	if vm.niced {
		setNice(vm.pid, 0)
	}
	if err := d.own(spec); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vm.spareDir, spareOwner), []byte(spec.ID), 0o600); err != nil {
		return fmt.Errorf("claim spare: %w", err)
	}
	steps := []struct {
		cmd  string
		args any
	}{
		{"object-add", map[string]any{"qom-type": "memory-backend-file", "id": memBackend,
			"size": uint64(spec.MemoryMiB) << 20, "mem-path": filepath.Join(spec.Dir, MemFile), "share": true}},
		{"qom-set", map[string]any{"path": "/machine", "property": "memory-backend", "value": memBackend}},
		// What -drive file=…,format=qcow2,discard=unmap,cache=writeback
		// makes.
		{"blockdev-add", map[string]any{"driver": "qcow2", "node-name": diskNode, "discard": "unmap",
			"cache": map[string]any{"direct": false, "no-flush": false},
			"file":  map[string]any{"driver": "file", "filename": spec.Disk, "discard": "unmap"}}},
		{"x-exit-preconfig", nil},
	}
	for _, s := range steps {
		if _, err := vm.qmp.Execute(ctx, s.cmd, s.args); err != nil {
			return fmt.Errorf("claim spare: %s: %w", s.cmd, err)
		}
	}
	for _, f := range []string{QMPSocket, AgentSocket, QEMULog} {
		if err := os.Rename(filepath.Join(vm.dir, f), filepath.Join(spec.Dir, f)); err != nil {
			return fmt.Errorf("claim spare: %w", err)
		}
	}
	// The console's files are written where they are moved to.
	vm.conMu.Lock()
	con := vm.console
	vm.conMu.Unlock()
	if con != nil {
		if err := con.move(spec.Dir); err != nil {
			return fmt.Errorf("claim spare: %w", err)
		}
	}
	vm.id, vm.dir = spec.ID, spec.Dir
	if _, err := vm.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": stateFD}, state); err != nil {
		return fmt.Errorf("claim spare: %w", err)
	}
	return nil
}

// own gives the unprivileged QEMU user spec's directory, disk and memory
// file.
func (d *Driver) own(spec vmm.Spec) error {
	if d.uid < 0 {
		return nil
	}
	for _, p := range []string{spec.Dir, spec.Disk, filepath.Join(spec.Dir, MemFile)} {
		if p == "" {
			continue
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("qemu: %s: %w", spec.ID, err)
		}
	}
	return nil
}

// cleanSpares kills the unclaimed spares an earlier driver left (a server
// that died) and removes the directories of spares that are gone. Claimed
// ones are VMs: their sessions adopt them, or Orphans finds them.
func (d *Driver) cleanSpares() {
	live := map[string]bool{}
	var killed []int
	for _, p := range Procs(d.cfg.SpareDir) {
		if p.Spare {
			d.cfg.Log.Warn("killing a spare QEMU process left by an earlier server", "pid", p.PID)
			_ = unix.Kill(p.PID, unix.SIGKILL)
			killed = append(killed, p.PID)
		} else if name := filepath.Base(p.dir()); strings.HasPrefix(name, spareName) {
			live[name] = true
		}
	}
	// Gone before their cgroups are cleaned (Sweep): a cgroup with a
	// process in it stays.
	waitGoneFor(killed, 10*time.Second)
	ents, _ := os.ReadDir(d.cfg.SpareDir)
	for _, e := range ents {
		if !live[e.Name()] {
			os.RemoveAll(filepath.Join(d.cfg.SpareDir, e.Name()))
		}
	}
}

// Proc is a QEMU process started by a cove driver.
type Proc struct {
	PID int
	// ID is the VM it runs: the id on its command line, or for a claimed
	// spare the one its owner file names; an unclaimed spare's own name.
	ID    string
	Spare bool // an unclaimed spare: it runs no VM yet
	Args  []string
}

// Procs lists the QEMU processes started by a cove driver whose command
// line names a path under dirRoot.
func Procs(dirRoot string) []Proc {
	ents, _ := os.ReadDir("/proc")
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		p := Proc{PID: pid, Args: strings.Split(string(b), "\x00")}
		name, under := "", false
		for i, a := range p.Args {
			if a == "-name" && i+1 < len(p.Args) {
				n, _, _ := strings.Cut(p.Args[i+1], ",")
				if id, ok := strings.CutPrefix(n, "cove-"); ok {
					name = id
				}
			}
			if strings.Contains(a, "path="+dirRoot+"/") {
				under = true
			}
		}
		if name == "" || !under {
			continue
		}
		p.ID = name
		if strings.HasPrefix(name, spareName) {
			if b, err := os.ReadFile(filepath.Join(p.dir(), spareOwner)); err == nil && len(b) > 0 {
				p.ID = string(b)
			} else {
				p.Spare = true
			}
		}
		out = append(out, p)
	}
	return out
}

// dir is the directory of the QMP socket on the command line, or "".
func (p Proc) dir() string {
	for i, a := range p.Args {
		if a == "-qmp" && i+1 < len(p.Args) {
			path, _, _ := strings.Cut(strings.TrimPrefix(p.Args[i+1], "unix:"), ",")
			return filepath.Dir(path)
		}
	}
	return ""
}

// PIDOf returns the PID of the QEMU process that runs VM id under dirRoot
// (one started for it, or a spare it claimed), or 0.
func PIDOf(dirRoot, id string) int {
	for _, p := range Procs(dirRoot) {
		if !p.Spare && p.ID == id {
			return p.PID
		}
	}
	return 0
}

// Orphans returns the PIDs of QEMU processes started by a cove driver
// for VMs under dirRoot whose id keep reports false; a spare is under
// dirRoot when its directory is, and an unclaimed one is never kept.
func Orphans(dirRoot string, keep func(id string) bool) []int {
	var out []int
	for _, p := range Procs(dirRoot) {
		if p.Spare || !keep(p.ID) {
			out = append(out, p.PID)
		}
	}
	return out
}
