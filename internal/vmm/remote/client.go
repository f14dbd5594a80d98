package remote

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// Driver is a vmm.Driver (and vmm.Snapshotter, vmm.Checkpointer,
// vmm.Sweeper) whose VMs
// run on a node that serves Handler: the server's end. Each call opens a
// new connection with the dial function it was made with (on a node's
// control connection, a new stream); the paths in specs and disk calls
// are the node's. A call the node's driver cannot make (Save on a driver
// that is no vmm.Snapshotter) fails with an error wrapping
// errors.ErrUnsupported.
type Driver struct {
	dial   func(ctx context.Context) (net.Conn, error)
	client *http.Client

	mu    sync.Mutex
	accel string // "" until the node answered; guarded by mu
}

var (
	_ vmm.Driver       = (*Driver)(nil)
	_ vmm.Snapshotter  = (*Driver)(nil)
	_ vmm.Checkpointer = (*Driver)(nil)
	_ vmm.Sweeper      = (*Driver)(nil)
)

// New returns the driver a node serves, reached by connections that dial
// opens to its Handler (nodelink's Hub.Dial, or a TCP dial in tests).
func New(dial func(ctx context.Context) (net.Conn, error)) *Driver {
	return &Driver{dial: dial, client: &http.Client{Transport: &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives:  true, // a connection (a stream) carries one exchange
		DisableCompression: true,
	}}}
}

// do sends one request of method to path (relative to Prefix) with in as
// its JSON body (none if nil) and decodes the answer into out (if not
// nil). An answer that is not a success is an *Error.
func (d *Driver) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://node"+Prefix+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("remote vmm: %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return answerError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxBody)).Decode(out); err != nil {
		return fmt.Errorf("remote vmm: %s: answer: %w", path, err)
	}
	return nil
}

// Accel names the node's accelerator; "" if the node cannot be asked now
// (asked again next time).
func (d *Driver) Accel() string {
	d.mu.Lock()
	a := d.accel
	d.mu.Unlock()
	if a != "" {
		return a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var info infoResp
	if err := d.do(ctx, http.MethodGet, pathInfo, nil, &info); err != nil {
		return ""
	}
	d.mu.Lock()
	d.accel = info.Accel
	d.mu.Unlock()
	return info.Accel
}

// Boot boots a VM on the node. spec's hooks are not called (Boot calls
// none).
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	var info vmInfo
	if err := d.do(ctx, http.MethodPost, pathBoot, bootReq{Spec: toWire(spec)}, &info); err != nil {
		return nil, err
	}
	return d.newVM(info), nil
}

// Adopt adopts, on the node, the VM of handle (a handle a VM of this
// driver gave, or the node's driver's own).
func (d *Driver) Adopt(ctx context.Context, handle []byte) (vmm.VM, error) {
	var info vmInfo
	if err := d.do(ctx, http.MethodPost, pathAdopt, adoptReq{Handle: handle}, &info); err != nil {
		return nil, err
	}
	return d.newVM(info), nil
}

// KillVMs ends the node's VMM processes under dirRoot whose id match
// reports true; match runs here, called back over the call. A node that
// cannot be reached kills nothing: nil.
func (d *Driver) KillVMs(ctx context.Context, dirRoot string, match func(id string) bool) []int {
	var out killResp
	err := d.call(ctx, pathKillVMs, killReq{DirRoot: dirRoot}, func(_ context.Context, m callMsg) (callMsg, error) {
		if m.Call != cbMatch {
			return callMsg{}, fmt.Errorf("unexpected callback %q", m.Call)
		}
		return callMsg{Match: match(m.ID)}, nil
	}, &out)
	if err != nil {
		return nil
	}
	return out.PIDs
}

// sweepTimeout bounds a Sweep, which takes no context.
const sweepTimeout = 2 * time.Minute

// Sweep runs the node driver's Sweep (vmm.Sweeper; a driver that is none
// sweeps nothing) with keep called back here. A node that cannot be
// reached kills nothing: nil.
func (d *Driver) Sweep(dirRoot string, keep func(id string) bool) []int {
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	var out killResp
	err := d.call(ctx, pathSweep, killReq{DirRoot: dirRoot}, func(_ context.Context, m callMsg) (callMsg, error) {
		if m.Call != cbKeep {
			return callMsg{}, fmt.Errorf("unexpected callback %q", m.Call)
		}
		return callMsg{Match: keep(m.ID)}, nil
	}, &out)
	if err != nil {
		return nil
	}
	return out.PIDs
}

// Prewarm asks the node's driver to start VMM processes for VMs of this
// shape ahead, if it does that; it returns once the node has the hint.
func (d *Driver) Prewarm(memMiB, cpus int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = d.do(ctx, http.MethodPost, pathPrewarm, prewarmReq{MemoryMiB: memMiB, CPUs: cpus}, nil)
}

// Disks makes and changes disk files on the node.
func (d *Driver) Disks() vmm.Disks { return disks{d} }

// Save saves vm, a VM of this driver, on the node. vm's Done is closed
// when it succeeds (the VMM process has ended).
func (d *Driver) Save(ctx context.Context, v vmm.VM, statePath string) (vmm.SaveStats, error) {
	vm, err := d.own(v)
	if err != nil {
		return vmm.SaveStats{}, err
	}
	var stats vmm.SaveStats
	if err := vm.do(ctx, http.MethodPost, pathSave, saveReq{State: statePath}, &stats); err != nil {
		return vmm.SaveStats{}, err
	}
	vm.markDone()
	return stats, nil
}

// Restore restores a VM on the node; spec's hooks run here, called back
// over the call, in the order the node's driver calls them.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, statePath string) (vmm.VM, vmm.RestoreStats, error) {
	req := restoreReq{Spec: toWire(spec), State: statePath,
		Started: spec.Started != nil, BeforeLoad: spec.BeforeLoad != nil, BeforeRun: spec.BeforeRun != nil}
	var out restoreResp
	err := d.call(ctx, pathRestore, req, func(ctx context.Context, m callMsg) (callMsg, error) {
		switch {
		case m.Call == cbStarted && spec.Started != nil:
			return callMsg{}, spec.Started(ctx, m.Handle)
		case m.Call == cbBeforeLoad && spec.BeforeLoad != nil:
			return callMsg{}, spec.BeforeLoad(ctx)
		case m.Call == cbBeforeRun && spec.BeforeRun != nil:
			return callMsg{}, spec.BeforeRun(ctx)
		}
		return callMsg{}, fmt.Errorf("unexpected callback %q", m.Call)
	}, &out)
	if err != nil {
		return nil, vmm.RestoreStats{}, err
	}
	return d.newVM(out.VM), out.Stats, nil
}

// Checkpoint checkpoints vm on the node; req.WhilePaused runs here,
// called back while the guest is paused.
func (d *Driver) Checkpoint(ctx context.Context, v vmm.VM, req vmm.CheckpointRequest) (vmm.CheckpointStats, error) {
	vm, err := d.own(v)
	if err != nil {
		return vmm.CheckpointStats{}, err
	}
	var out checkpointResp
	path, _ := vm.path(pathCheckpoint)
	err = d.call(ctx, path, checkpointReq{State: req.State, NewDisk: req.NewDisk, WhilePaused: req.WhilePaused != nil},
		func(ctx context.Context, m callMsg) (callMsg, error) {
			if m.Call != cbWhilePaused || req.WhilePaused == nil {
				return callMsg{}, fmt.Errorf("unexpected callback %q", m.Call)
			}
			return callMsg{}, req.WhilePaused(ctx)
		}, &out)
	if err != nil {
		return vmm.CheckpointStats{}, err
	}
	vm.setHandle(out.Handle)
	return out.Stats, nil
}

// Disk asks the node which disk vm writes now.
func (d *Driver) Disk(ctx context.Context, v vmm.VM) (string, error) {
	vm, err := d.own(v)
	if err != nil {
		return "", err
	}
	var out diskResp
	if err := vm.do(ctx, http.MethodGet, pathDisk, nil, &out); err != nil {
		return "", err
	}
	return out.Disk, nil
}

// Freeze freezes the VM on the node (vmm.Freezer); a node whose driver
// cannot fails with errors.ErrUnsupported.
func (d *Driver) Freeze(ctx context.Context, v vmm.VM) error {
	vm, err := d.own(v)
	if err != nil {
		return err
	}
	return vm.do(ctx, http.MethodPost, pathFreeze, nil, nil)
}

// Thaw lets a frozen VM on the node run on (vmm.Freezer).
func (d *Driver) Thaw(ctx context.Context, v vmm.VM) error {
	vm, err := d.own(v)
	if err != nil {
		return err
	}
	return vm.do(ctx, http.MethodPost, pathThaw, nil, nil)
}

var _ vmm.Freezer = (*Driver)(nil)

// own returns v as a VM of this driver.
func (d *Driver) own(v vmm.VM) (*VM, error) {
	vm, ok := v.(*VM)
	if !ok || vm.d != d {
		return nil, fmt.Errorf("remote vmm: %T is not a VM of this driver", v)
	}
	return vm, nil
}

// disks is Driver.Disks.
type disks struct{ d *Driver }

func (k disks) Overlay(ctx context.Context, path, backing, backingFormat string) error {
	return k.d.do(ctx, http.MethodPost, pathOverlay, overlayReq{Path: path, Backing: backing, BackingFormat: backingFormat}, nil)
}

func (k disks) Rebase(ctx context.Context, path, backing, backingFormat string, copy bool) error {
	return k.d.do(ctx, http.MethodPost, pathRebase, rebaseReq{Path: path, Backing: backing, BackingFormat: backingFormat, Copy: copy}, nil)
}

func (k disks) Flatten(ctx context.Context, src, dst, base, baseFormat string) error {
	return k.d.do(ctx, http.MethodPost, pathFlatten, flattenReq{Src: src, Dst: dst, Base: base, BaseFormat: baseFormat}, nil)
}

func (k disks) Diff(ctx context.Context, path, src, backing, backingFormat string) error {
	return k.d.do(ctx, http.MethodPost, pathDiff, diffReq{Path: path, Src: src, Backing: backing, BackingFormat: backingFormat}, nil)
}

func (k disks) Raw(ctx context.Context, src, srcFormat, dst string) error {
	return k.d.do(ctx, http.MethodPost, pathRaw, rawReq{Src: src, SrcFormat: srcFormat, Dst: dst}, nil)
}

func (k disks) Backing(ctx context.Context, path string) (string, string, error) {
	var out backingResp
	if err := k.d.do(ctx, http.MethodPost, pathBacking, backingReq{Path: path}, &out); err != nil {
		return "", "", err
	}
	return out.File, out.Format, nil
}

// VM is a VM on the node. Its Done is a long poll on the node, made again
// after a dropped connection until the node answers.
//
// A node that restarted has forgotten its refs: a VM not released is then
// adopted again on the node by its handle (once per call that finds its
// ref unknown) and the call sent again; one whose VMM is gone meanwhile
// reads as Done. A released VM is not adopted again (another process may
// hold it): its Done closes when the node forgets it.
type VM struct {
	d   *Driver
	pid int

	done     chan struct{}
	doneOnce sync.Once

	adopting sync.Mutex // one adoption again at a time

	mu       sync.Mutex
	ref      string // the node's name for it; guarded by mu
	handle   []byte // guarded by mu
	released bool   // guarded by mu
}

var _ vmm.VM = (*VM)(nil)

func (d *Driver) newVM(info vmInfo) *VM {
	vm := &VM{d: d, pid: info.PID, ref: info.Ref, handle: info.Handle, done: make(chan struct{})}
	go vm.watch()
	return vm
}

// path is the vms/ route p of vm, and the ref it names.
func (vm *VM) path(p string) (string, string) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return fmt.Sprintf(p, vm.ref), vm.ref
}

// do sends a call about vm (route p); a ref the node no longer knows is
// adopted again, and the call sent again.
func (vm *VM) do(ctx context.Context, method, p string, in, out any) error {
	path, ref := vm.path(p)
	err := vm.d.do(ctx, method, path, in, out)
	if !errors.Is(err, ErrUnknownVM) {
		return err
	}
	if err := vm.readopt(ctx, ref); err != nil {
		return err
	}
	path, _ = vm.path(p)
	return vm.d.do(ctx, method, path, in, out)
}

// readopt adopts vm again on the node by its handle, after the node
// answered that it does not know ref. It returns nil once vm has a ref
// the node knows; an error wrapping ErrUnknownVM where the node cannot
// adopt it (its VMM is gone) or must not (vm was released); another error
// where the node could not be asked.
func (vm *VM) readopt(ctx context.Context, ref string) error {
	vm.adopting.Lock()
	defer vm.adopting.Unlock()
	vm.mu.Lock()
	released, handle, now := vm.released, vm.handle, vm.ref
	vm.mu.Unlock()
	switch {
	case now != ref:
		return nil // another call adopted it meanwhile
	case released:
		return fmt.Errorf("remote vmm: vm %s: released, and the node no longer knows it: %w", ref, ErrUnknownVM)
	case vm.isDone():
		return fmt.Errorf("remote vmm: vm %s: gone: %w", ref, ErrUnknownVM)
	}
	var info vmInfo
	if err := vm.d.do(ctx, http.MethodPost, pathAdopt, adoptReq{Handle: handle}, &info); err != nil {
		if re, ok := errors.AsType[*Error](err); ok && re.Code == api.CodeNotFound {
			return fmt.Errorf("remote vmm: vm %s: the node no longer knows it and cannot adopt it again: %w (%w)", ref, ErrUnknownVM, err)
		}
		return err
	}
	if info.PID != vm.pid {
		return fmt.Errorf("remote vmm: vm %s: adopted again as PID %d, was %d: %w", ref, info.PID, vm.pid, ErrUnknownVM)
	}
	vm.mu.Lock()
	vm.ref = info.Ref
	vm.mu.Unlock()
	return nil
}

func (vm *VM) markDone() { vm.doneOnce.Do(func() { close(vm.done) }) }

func (vm *VM) isDone() bool {
	select {
	case <-vm.done:
		return true
	default:
		return false
	}
}

// watch closes done once the node says the VMM process exited, or that it
// no longer knows the VM and cannot adopt it again.
func (vm *VM) watch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-vm.done: // a Stop or a Save that took ends the poll
			cancel()
		case <-ctx.Done():
		}
	}()
	wait := 100 * time.Millisecond
	for {
		err := vm.do(ctx, http.MethodGet, pathDone, nil, nil)
		if err == nil || (errors.Is(err, ErrUnknownVM) && ctx.Err() == nil) {
			vm.markDone() // the VMM exited, or the node forgot a VM it cannot (or must not) adopt again
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// DialAgent connects to the guest agent through the node: the bytes go
// over one connection (stream) to the node, which relays them to the
// agent's channel. The connection keeps its deadlines.
func (vm *VM) DialAgent(ctx context.Context) (net.Conn, error) {
	path, ref := vm.path(pathAgent)
	conn, br, err := vm.d.upgrade(ctx, path, struct{}{}, protoAgent)
	if errors.Is(err, ErrUnknownVM) {
		if err = vm.readopt(ctx, ref); err == nil {
			path, _ = vm.path(pathAgent)
			conn, br, err = vm.d.upgrade(ctx, path, struct{}{}, protoAgent)
		}
	}
	if err != nil {
		return nil, err
	}
	if br.Buffered() == 0 {
		return conn, nil
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn is a connection whose first bytes were read ahead into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Handle is the node's driver's handle of the VM: Adopt, of this driver or
// of the node's, takes it.
func (vm *VM) Handle() []byte {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.handle
}

func (vm *VM) setHandle(h []byte) {
	if len(h) == 0 {
		return
	}
	vm.mu.Lock()
	vm.handle = h
	vm.mu.Unlock()
}

// PID is the VMM process id on the node.
func (vm *VM) PID() int { return vm.pid }

// stopSlack is how much longer than its deadline a Stop waits for the
// node's answer: the node ends the VM by force at the deadline.
const stopSlack = 30 * time.Second

// Stop stops the VM on the node: gracefully within ctx's deadline, then by
// force, even if the connection drops meanwhile.
func (vm *VM) Stop(ctx context.Context) error {
	if vm.isDone() {
		return nil
	}
	var req stopReq
	if dl, ok := ctx.Deadline(); ok {
		grace := max(time.Until(dl), time.Millisecond)
		req.GraceMS = grace.Milliseconds() + 1
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), grace+stopSlack)
		defer cancel()
	}
	err := vm.do(ctx, http.MethodPost, pathStop, req, nil)
	if err != nil && !errors.Is(err, ErrUnknownVM) {
		return err
	}
	vm.markDone()
	return nil
}

// Release lets go of the VM on the node; Done still closes when its VMM
// process exits.
func (vm *VM) Release() error {
	vm.mu.Lock()
	vm.released = true
	vm.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path, _ := vm.path(pathRelease)
	return vm.d.do(ctx, http.MethodPost, path, nil, nil)
}

// Done is closed when the VMM process exits (or the node no longer knows
// it).
func (vm *VM) Done() <-chan struct{} { return vm.done }

// ConsoleTail asks the node for the console's last bytes; what went wrong
// asking, if it cannot.
func (vm *VM) ConsoleTail() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out consoleResp
	if err := vm.do(ctx, http.MethodGet, pathConsole, nil, &out); err != nil {
		return fmt.Sprintf("(no console: %v)", err)
	}
	return out.Tail
}

// Diagnose asks the node's driver; what went wrong asking, if it cannot.
func (vm *VM) Diagnose(ctx context.Context) string {
	var out diagnoseResp
	if err := vm.do(ctx, http.MethodGet, pathDiagnose, nil, &out); err != nil {
		return fmt.Sprintf("remote vmm: no diagnosis: %v", err)
	}
	return out.Line
}

// Status asks the node what the VM is doing.
func (vm *VM) Status(ctx context.Context) (vmm.Status, error) {
	var out statusResp
	if err := vm.do(ctx, http.MethodGet, pathStatus, nil, &out); err != nil {
		return "", err
	}
	return out.Status, nil
}

// Resume resumes the VM's guest on the node.
func (vm *VM) Resume(ctx context.Context) error {
	return vm.do(ctx, http.MethodPost, pathResume, nil, nil)
}
