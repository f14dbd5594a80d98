// Package fake is an in-process vmm.Driver and vmm.Snapshotter for tests:
// no VMM runs, each VM is a fake guest in the test process whose agent
// speaks the real agentproto protocol (the sync with its hello, yamux,
// detach with its quiet line, listen, exec of a few built-in commands,
// files kept in memory). Save writes the guest's state into the state
// file and Restore brings it back, so a session parked and woken over this
// driver finds its files and its commands as it left them.
//
// The driver honours vmm's contract as the QEMU driver does (the vmmtest
// suite checks both), and fails on demand: FailNext fails the next boot,
// save, restore or load; HangNext makes the next guest never answer;
// VM.Kill ends a VM as if its VMM died; VM.Pause stops its guest as a save
// cut short leaves it. A VM's "process" lives in the Driver, not in the VM
// value, so a new session.Manager over the same Driver plays a server
// restart: it re-adopts the VMs from their handles (Disconnect first drops
// the agent connections the dead server held). Running and Find let a test
// see and reach the VMs; KillVMs and Sweep end VMs as the QEMU driver's
// end their processes. Disks are real qcow2 files made with qemu-img, as
// the QEMU driver makes them. The guest's command set is documented in
// guest.go.
package fake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qcow2"
)

// MemFile is the VM's RAM file in its directory (vmm.MemFile): the
// session manager copies and checks it.
const MemFile = vmm.MemFile

// Op names what FailNext fails.
type Op string

// Operations that can be failed.
const (
	// OpBoot fails Boot before the VM exists.
	OpBoot Op = "boot"
	// OpSave fails Save before the state file is complete: the VM runs on.
	OpSave Op = "save"
	// OpRestore fails Restore before the VMM process runs.
	OpRestore Op = "restore"
	// OpLoad fails Restore's load of the state, after Started and
	// BeforeLoad and before BeforeRun: the VMM process exits, as QEMU does
	// when an incoming migration fails.
	OpLoad Op = "load"
)

// Driver is the fake vmm.Driver. Its zero value is not usable: call New.
type Driver struct {
	mu      sync.Mutex
	procs   map[int]*process // guarded by mu: running VMs by PID
	nextPID int              // guarded by mu
	fail    map[Op]error     // guarded by mu: one-shot failures
	hang    bool             // guarded by mu: the next guest never answers
	twice   map[string]bool  // guarded by mu: VM ids whose guest ran in two processes at once (freeze.go)
}

// New returns a driver with no VMs.
func New() *Driver {
	return &Driver{procs: map[int]*process{}, nextPID: 1000, fail: map[Op]error{}}
}

// FailNext makes the next op fail with err (a generic error if nil).
func (d *Driver) FailNext(op Op, err error) {
	if err == nil {
		err = fmt.Errorf("fake: %s failed on demand", op)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail[op] = err
}

// failure takes op's pending failure, if any.
func (d *Driver) failure(op Op) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.fail[op]
	delete(d.fail, op)
	return err
}

// HangNext makes the guest of the next VM booted or restored never answer
// on its agent channel, as a guest that hangs at boot.
func (d *Driver) HangNext() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hang = true
}

// Accel is "fake".
func (d *Driver) Accel() string { return "fake" }

// Running returns the ids of the VMs whose process runs, sorted.
func (d *Driver) Running() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for _, p := range d.procs {
		ids = append(ids, p.id)
	}
	slices.Sort(ids)
	return ids
}

// Find returns a VM on the running process of the VM named id, or nil:
// how a test reaches a VM that a session manager holds (to Kill it, say).
func (d *Driver) Find(id string) *VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.procs {
		if p.id == id {
			return &VM{p: p}
		}
	}
	return nil
}

// Disks makes real qcow2 files with qemu-img, as the QEMU driver does:
// the session manager stacks overlays on them and reads their headers.
func (d *Driver) Disks() vmm.Disks { return qcow2.Disks{} }

// Sweep ends the VMs under dirRoot whose id keep does not keep, as the
// QEMU driver's Sweep kills the orphan processes a server left, and
// returns their PIDs.
func (d *Driver) Sweep(dirRoot string, keep func(id string) bool) []int {
	return d.end(dirRoot, func(id string) bool { return !keep(id) }, "swept")
}

// KillVMs implements vmm.Driver: it ends the VMs under dirRoot whose id
// match reports true, as the QEMU driver kills their processes.
func (d *Driver) KillVMs(ctx context.Context, dirRoot string, match func(id string) bool) []int {
	return d.end(dirRoot, match, "killed")
}

// end ends the VMs under dirRoot whose id match reports true and returns
// their PIDs, sorted.
func (d *Driver) end(dirRoot string, match func(id string) bool, why string) []int {
	d.mu.Lock()
	var gone []*process
	for _, p := range d.procs {
		if rel, err := filepath.Rel(dirRoot, p.dir); err == nil && !strings.HasPrefix(rel, "..") && match(p.id) {
			gone = append(gone, p)
		}
	}
	d.mu.Unlock()
	var pids []int
	for _, p := range gone {
		p.exit(why)
		pids = append(pids, p.pid)
	}
	slices.Sort(pids)
	return pids
}

// Disconnect closes the host end of every agent connection of every VM,
// as the death of the server that dialled them does: a test that plays a
// crash of an in-process session manager calls it before the next one
// starts (the guests then wait for the next connection).
func (d *Driver) Disconnect() {
	d.mu.Lock()
	procs := make([]*process, 0, len(d.procs))
	for _, p := range d.procs {
		procs = append(procs, p)
	}
	d.mu.Unlock()
	for _, p := range procs {
		p.mu.Lock()
		hosts := p.hosts
		p.hosts = nil
		p.mu.Unlock()
		for _, c := range hosts {
			c.Close()
		}
	}
}

// handle is what VM.Handle returns, versioned like the QEMU driver's.
type handle struct {
	V     int    `json:"v"`
	ID    string `json:"id"`
	Dir   string `json:"dir"`
	PID   int    `json:"pid"`
	Start string `json:"start"` // guards against a PID used again
}

const handleVersion = 1

// process is one VM's "VMM process": it outlives the VM values that refer
// to it, as a QEMU process outlives the server that started it.
type process struct {
	d     *Driver
	id    string
	dir   string
	pid   int
	start string
	spec  vmm.Spec
	done  chan struct{}
	// agentCh carries the guest's ends of new agent connections.
	agentCh chan net.Conn

	mu      sync.Mutex
	guest   *guest     // guarded by mu: nil until the guest runs
	loaded  *state     // guarded by mu: a restore's state, loaded and not yet run
	status  vmm.Status // guarded by mu
	exited  bool       // guarded by mu
	conns   []net.Conn // guarded by mu: both ends of every agent connection
	hosts   []net.Conn // guarded by mu: the host ends not yet closed by Disconnect
	console []string   // guarded by mu
	curDisk string     // guarded by mu: the disk a checkpoint switched to, if any
	frozen  bool       // guarded by mu: stopped by Freeze until Thaw
	freezes int        // guarded by mu: times frozen
}

// spawn starts a process for spec in status st; its guest is set later.
func (d *Driver) spawn(spec vmm.Spec, st vmm.Status) *process {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextPID++
	p := &process{d: d, id: spec.ID, dir: spec.Dir, pid: d.nextPID, start: hex.EncodeToString(b), spec: spec,
		done: make(chan struct{}), status: st, agentCh: make(chan net.Conn, 4)}
	d.procs[p.pid] = p
	return p
}

func (p *process) handle() []byte {
	b, _ := json.Marshal(handle{V: handleVersion, ID: p.id, Dir: p.dir, PID: p.pid, Start: p.start})
	return b
}

func (p *process) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.console = append(p.console, fmt.Sprintf(format, args...))
	if len(p.console) > 50 {
		p.console = p.console[1:]
	}
}

func (p *process) setStatus(st vmm.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status = st
}

// exit ends the process: its agent connections close, its guest stops,
// Done closes. Exiting twice is a no-op.
func (p *process) exit(why string) {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return
	}
	p.exited = true
	conns := p.conns
	p.conns = nil
	p.console = append(p.console, "fake: VMM exited: "+why)
	g := p.guest
	p.mu.Unlock()
	p.d.mu.Lock()
	delete(p.d.procs, p.pid)
	p.d.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if g != nil {
		g.stop()
	}
	close(p.done)
}

// running returns the process's guest, or nil before a restore loaded it.
func (p *process) running() *guest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.guest
}

func (p *process) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// ensureMem creates the VM's RAM file (sparse, of the VM's memory size)
// if it is missing, as QEMU's file-backed memory does.
func ensureMem(spec vmm.Spec) error {
	f, err := os.OpenFile(filepath.Join(spec.Dir, MemFile), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if want := int64(spec.MemoryMiB) << 20; fi.Size() != want {
		return f.Truncate(want)
	}
	return nil
}

// Boot starts a fake VM for spec: its RAM file appears in spec.Dir and its
// guest boots with an empty file system.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	if spec.CPUs <= 0 || spec.MemoryMiB <= 0 {
		return nil, fmt.Errorf("fake: boot %s: cpus and memory must be positive", spec.ID)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fake: boot %s: %w", spec.ID, err)
	}
	if err := d.failure(OpBoot); err != nil {
		return nil, fmt.Errorf("fake: boot %s: %w", spec.ID, err)
	}
	if err := ensureMem(spec); err != nil {
		return nil, fmt.Errorf("fake: boot %s: memory file: %w", spec.ID, err)
	}
	p := d.spawn(spec, vmm.StatusRunning)
	p.run(newState())
	p.logf("fake: guest %s booted", spec.ID)
	return &VM{p: p}, nil
}

// run starts the process's guest from st, unless it runs already.
func (p *process) run(st *state) {
	d := p.d
	d.mu.Lock()
	hang := d.hang
	d.hang = false
	d.mu.Unlock()
	p.mu.Lock()
	if p.guest != nil || p.exited {
		p.mu.Unlock()
		return
	}
	g := newGuest(p, st, hang)
	p.guest, p.loaded, p.status = g, nil, vmm.StatusRunning
	go g.serve()
	p.mu.Unlock()
	d.noteRuns(p)
}

// Adopt returns a VM on the process the handle names, if it still runs.
func (d *Driver) Adopt(ctx context.Context, raw []byte) (vmm.VM, error) {
	var h handle
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("fake: adopt: bad handle: %w", err)
	}
	if h.V != handleVersion {
		return nil, fmt.Errorf("fake: adopt %s: handle version %d, want %d", h.ID, h.V, handleVersion)
	}
	d.mu.Lock()
	p := d.procs[h.PID]
	d.mu.Unlock()
	if p == nil || p.start != h.Start || !p.alive() {
		return nil, fmt.Errorf("fake: adopt %s: process %d is gone", h.ID, h.PID)
	}
	return &VM{p: p}, nil
}

// VM is one client's hold on a fake VM process.
type VM struct {
	p *process

	mu       sync.Mutex
	released bool // guarded by mu
}

var _ vmm.VM = (*VM)(nil)

func (vm *VM) control(op string) error {
	vm.mu.Lock()
	released := vm.released
	vm.mu.Unlock()
	if released {
		return fmt.Errorf("fake: %s %s: released", op, vm.p.id)
	}
	if !vm.p.alive() {
		return fmt.Errorf("fake: %s %s: VMM exited", op, vm.p.id)
	}
	if vm.Frozen() {
		return fmt.Errorf("fake: %s %s: VMM frozen: it answers nothing until thawed", op, vm.p.id)
	}
	return nil
}

// DialAgent connects to the guest's agent channel. As on a QEMU chardev,
// the guest serves one connection at a time: a second waits until the
// first closes, and a dial waits while several wait.
func (vm *VM) DialAgent(ctx context.Context) (net.Conn, error) {
	p := vm.p
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fake: dial agent of %s: %w", p.id, err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fake: dial agent of %s: %w", p.id, err)
	}
	host, err := fileConn(fds[0], "host")
	if err != nil {
		syscall.Close(fds[1])
		return nil, fmt.Errorf("fake: dial agent of %s: %w", p.id, err)
	}
	guest, err := fileConn(fds[1], "guest")
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("fake: dial agent of %s: %w", p.id, err)
	}
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		host.Close()
		guest.Close()
		return nil, fmt.Errorf("fake: dial agent of %s: VMM exited", p.id)
	}
	p.conns = append(p.conns, host, guest)
	p.hosts = append(p.hosts, host)
	p.mu.Unlock()
	// Connections the guest has not taken yet wait in a short queue, as
	// in a listening socket's backlog; past it the dial waits.
	select {
	case p.agentCh <- guest:
		return host, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-p.done:
		err = errors.New("VMM exited")
	}
	host.Close()
	guest.Close()
	return nil, fmt.Errorf("fake: dial agent of %s: %w", p.id, err)
}

func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileConn(f)
}

// Handle describes the VM for Adopt.
func (vm *VM) Handle() []byte { return vm.p.handle() }

// PID is the fake process id (no OS process has it).
func (vm *VM) PID() int { return vm.p.pid }

// Stop ends the VM at once; stopping a stopped VM is a no-op.
func (vm *VM) Stop(ctx context.Context) error {
	vm.p.exit("stopped")
	return nil
}

// Release lets go of the VM; it runs on and can be adopted.
func (vm *VM) Release() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.released = true
	return nil
}

// Done is closed when the VM's process exits.
func (vm *VM) Done() <-chan struct{} { return vm.p.done }

// Diagnose says the fake VM's state: it has no devices to look into.
func (vm *VM) Diagnose(context.Context) string {
	select {
	case <-vm.Done():
		return "fake VM: stopped"
	default:
		return "fake VM: running"
	}
}

// ConsoleTail returns the last lines the fake VM logged.
func (vm *VM) ConsoleTail() string {
	vm.p.mu.Lock()
	defer vm.p.mu.Unlock()
	return strings.Join(vm.p.console, "\n")
}

// Status says what the VM is doing.
func (vm *VM) Status(ctx context.Context) (vmm.Status, error) {
	if err := vm.control("status"); err != nil {
		return "", err
	}
	vm.p.mu.Lock()
	defer vm.p.mu.Unlock()
	return vm.p.status, nil
}

// Resume lets a paused guest run again; a running one is left be.
func (vm *VM) Resume(ctx context.Context) error {
	if err := vm.control("resume"); err != nil {
		return err
	}
	p := vm.p
	p.mu.Lock()
	st, loaded := p.status, p.loaded
	if st == vmm.StatusPaused || st == vmm.StatusSaving {
		p.status = vmm.StatusRunning
	}
	p.mu.Unlock()
	if st == vmm.StatusIncoming {
		return fmt.Errorf("fake: resume %s: no state loaded yet", p.id)
	}
	if loaded != nil {
		// A restore loaded the state and its caller never let the guest
		// run (it died in BeforeRun, say): the guest runs now, as QEMU's
		// does on cont.
		p.run(loaded)
	}
	if g := p.running(); g != nil {
		g.setPaused(false)
	}
	return nil
}

// Kill ends the VM's process as if the VMM crashed: Done closes, the
// agent's connections drop.
func (vm *VM) Kill() { vm.p.exit("killed") }

// Pause stops the guest as a save's migration does (Status says Paused):
// it answers nothing until Resume.
func (vm *VM) Pause() {
	p := vm.p
	p.setStatus(vmm.StatusPaused)
	if g := p.running(); g != nil {
		g.setPaused(true)
	}
}

// Save writes the guest's state to statePath (to a temp name, synced,
// renamed), syncs the RAM file and ends the VM.
func (d *Driver) Save(ctx context.Context, v vmm.VM, statePath string) (vmm.SaveStats, error) {
	var stats vmm.SaveStats
	start := time.Now()
	vm, ok := v.(*VM)
	if !ok {
		return stats, errors.New("fake: save: not a fake VM")
	}
	p := vm.p
	if err := vm.control("save"); err != nil {
		return stats, err
	}
	if err := d.failure(OpSave); err != nil {
		return stats, fmt.Errorf("fake: save %s: %w", p.id, err)
	}
	g := p.running()
	p.setStatus(vmm.StatusSaving)
	g.setPaused(true)
	resume := func() {
		p.setStatus(vmm.StatusRunning)
		g.setPaused(false)
	}
	b, err := g.snapshot(p.spec)
	if err != nil {
		resume()
		return stats, fmt.Errorf("fake: save %s: %w", p.id, err)
	}
	if err := writeFileSync(statePath, b); err != nil {
		resume()
		return stats, fmt.Errorf("fake: save %s: %w", p.id, err)
	}
	stats.Migrate = time.Since(start)
	p.setStatus(vmm.StatusPaused)
	syncStart := time.Now()
	if err := syncFile(filepath.Join(p.dir, MemFile)); err != nil {
		return stats, fmt.Errorf("fake: save %s: sync memory: %w", p.id, err)
	}
	stats.Sync = time.Since(syncStart)
	stats.StateBytes = int64(len(b))
	p.exit("saved")
	stats.Total = time.Since(start)
	return stats, nil
}

// writeFileSync writes path atomically: a temp file, synced, renamed, the
// directory synced.
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		_ = dir.Sync()
		dir.Close()
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Restore starts a VM for spec from a state file written by Save: it
// calls spec.Started, spec.BeforeLoad, loads the state and calls
// spec.BeforeRun, then the guest runs. On error the process is gone and
// the snapshot's files are as they were.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, statePath string) (vmm.VM, vmm.RestoreStats, error) {
	var stats vmm.RestoreStats
	start := time.Now()
	if _, err := os.Stat(statePath); err != nil {
		return nil, stats, fmt.Errorf("fake: restore %s: %w", spec.ID, err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, MemFile)); err != nil {
		return nil, stats, fmt.Errorf("fake: restore %s: memory file: %w", spec.ID, err)
	}
	if err := d.failure(OpRestore); err != nil {
		return nil, stats, fmt.Errorf("fake: restore %s: %w", spec.ID, err)
	}
	p := d.spawn(spec, vmm.StatusIncoming)
	stats.Spawn = time.Since(start)
	fail := func(err error) (vmm.VM, vmm.RestoreStats, error) {
		p.exit("restore failed")
		return nil, stats, fmt.Errorf("fake: restore %s: %w", spec.ID, err)
	}
	if spec.Started != nil {
		if err := spec.Started(ctx, p.handle()); err != nil {
			return fail(err)
		}
	}
	if spec.BeforeLoad != nil {
		if err := spec.BeforeLoad(ctx); err != nil {
			return fail(err)
		}
	}
	loadStart := time.Now()
	st, err := loadState(statePath, spec)
	if err != nil {
		return fail(err)
	}
	if err := d.failure(OpLoad); err != nil {
		return fail(err)
	}
	stats.Load = time.Since(loadStart)
	p.mu.Lock()
	p.loaded, p.status = st, vmm.StatusPaused
	p.mu.Unlock()
	if spec.BeforeRun != nil {
		if err := spec.BeforeRun(ctx); err != nil {
			return fail(err)
		}
	}
	if !p.alive() {
		return nil, stats, fmt.Errorf("fake: restore %s: VMM exited", spec.ID)
	}
	p.run(st)
	p.logf("fake: guest %s restored", spec.ID)
	stats.Total = time.Since(start)
	return &VM{p: p}, stats, nil
}

// kernelID names the kernel at path as a machine knows it: by its
// version's directory and file name (HOME/kernels/VERSION/vmlinux), not
// where a host keeps it: a snapshot restores on another host's copy of
// the same kernel, under another home.
func kernelID(path string) string {
	return filepath.Join(filepath.Base(filepath.Dir(path)), filepath.Base(path))
}

// loadState reads a state file and checks it is of the machine spec
// describes.
func loadState(path string, spec vmm.Spec) (*state, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	if st.V != stateVersion {
		return nil, fmt.Errorf("load state: version %d, want %d", st.V, stateVersion)
	}
	if st.MemoryMiB != spec.MemoryMiB || st.CPUs != spec.CPUs || kernelID(st.Kernel) != kernelID(spec.Kernel) {
		return nil, fmt.Errorf("load state: saved from a %d MiB, %d CPU machine with kernel %q; spec says %d MiB, %d CPUs, kernel %q",
			st.MemoryMiB, st.CPUs, st.Kernel, spec.MemoryMiB, spec.CPUs, spec.Kernel)
	}
	fi, err := os.Stat(filepath.Join(spec.Dir, MemFile))
	if err != nil {
		return nil, fmt.Errorf("load state: memory file: %w", err)
	}
	if fi.Size() != int64(spec.MemoryMiB)<<20 {
		return nil, fmt.Errorf("load state: memory file is %d bytes, want %d", fi.Size(), int64(spec.MemoryMiB)<<20)
	}
	if st.Files == nil {
		st.Files = map[string]*file{}
	}
	return &st, nil
}
