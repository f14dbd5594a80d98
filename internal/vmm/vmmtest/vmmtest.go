// Package vmmtest is the conformance suite that every vmm.Driver runs (the
// QEMU driver and the in-process fake alike): it checks the contract in
// package vmm's docs through the real agent protocol, each behaviour in a
// subtest.
package vmmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
)

// Harness is what the suite needs of one driver.
type Harness struct {
	// Driver is the driver under test; it must be a vmm.Snapshotter too.
	Driver vmm.Driver
	// Spec returns the spec of a new VM, with a fresh directory (and
	// disk) of its own.
	Spec func(t *testing.T) vmm.Spec
	// Kill ends vm's VMM process abruptly, as a crash does.
	Kill func(t *testing.T, vm vmm.VM)
	// Pause stops the guest of the VM that spec describes from outside
	// the driver, as a save's migration cut short leaves it. The suite
	// has released vm first.
	Pause func(t *testing.T, spec vmm.Spec, vm vmm.VM)
	// Timeout bounds each wait on a guest: a connection, an exit. Zero
	// means a minute.
	Timeout time.Duration
	// MemFile is the name of a VM's RAM file in its directory.
	MemFile string
}

// Run checks the driver that newHarness returns against vmm's contract.
// newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	s := suite{newHarness}
	t.Run("BootAgentAnswers", s.bootAgentAnswers)
	t.Run("AdoptAfterRelease", s.adoptAfterRelease)
	t.Run("AdoptBadHandle", s.adoptBadHandle)
	t.Run("StopIsIdempotent", s.stopIsIdempotent)
	t.Run("DoneWhenVMMDies", s.doneWhenVMMDies)
	t.Run("StatusPausedAndResume", s.statusPausedAndResume)
	t.Run("SaveRestoreKeepsGuest", s.saveRestoreKeepsGuest)
	t.Run("RestoreHooksInOrder", s.restoreHooksInOrder)
	t.Run("FailedRestoreKeepsSnapshot", s.failedRestoreKeepsSnapshot)
	t.Run("CheckpointRunsOn", s.checkpointRunsOn)
	t.Run("FreezeThaw", s.freezeThaw)
	t.Run("KillVMsEndsOnlyMatching", s.killVMsEndsOnlyMatching)
	t.Run("DisksStackAndFlatten", s.disksStackAndFlatten)
	t.Run("DisksDiffAndRaw", s.disksDiffAndRaw)
}

type suite struct {
	newHarness func(t *testing.T) Harness
}

// rig is one subtest's harness.
type rig struct {
	Harness
	t    *testing.T
	snap vmm.Snapshotter
}

func (s suite) rig(t *testing.T) *rig {
	t.Helper()
	h := s.newHarness(t)
	if h.Timeout == 0 {
		h.Timeout = time.Minute
	}
	snap, ok := h.Driver.(vmm.Snapshotter)
	if !ok {
		t.Fatalf("%T is not a vmm.Snapshotter", h.Driver)
	}
	return &rig{Harness: h, t: t, snap: snap}
}

func (r *rig) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
	r.t.Cleanup(cancel)
	return ctx
}

// boot boots a VM for a new spec and stops it when the test ends.
func (r *rig) boot() (vmm.VM, vmm.Spec) {
	r.t.Helper()
	spec := r.Spec(r.t)
	vm, err := r.Driver.Boot(r.ctx(), spec)
	if err != nil {
		r.t.Fatalf("boot: %v", err)
	}
	r.t.Cleanup(func() { _ = vm.Stop(context.Background()) })
	return vm, spec
}

// connect connects to vm's agent with the real protocol (sync, hello,
// yamux), failing the test with the console if it does not answer.
func (r *rig) connect(vm vmm.VM, what string) *agentproto.Client {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
	defer cancel()
	go func() {
		select {
		case <-vm.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err != nil {
		r.t.Fatalf("connect %s: %v; console: %s", what, err, vm.ConsoleTail())
	}
	r.t.Cleanup(func() { c.Close() })
	return c
}

// run runs argv in the guest and returns its stdout and exit code.
func (r *rig) run(c *agentproto.Client, argv ...string) (string, int) {
	r.t.Helper()
	p, err := c.Exec(r.ctx(), agentproto.Exec{Argv: argv})
	if err != nil {
		r.t.Fatalf("exec %q: %v", argv, err)
	}
	out, exit, err := collect(p)
	if err != nil {
		r.t.Fatalf("exec %q: %v", argv, err)
	}
	return out, exit.Code
}

// collect reads a process's output to its end and waits for its exit.
func collect(p *agentproto.Process) (string, agentproto.Exit, error) {
	errc := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, p.Stderr()); errc <- err }()
	var out bytes.Buffer
	_, oerr := io.Copy(&out, p.Stdout())
	eerr := <-errc
	exit, err := p.Wait()
	if err == nil {
		err = errors.Join(oerr, eerr)
	}
	return out.String(), exit, err
}

func (r *rig) writeFile(c *agentproto.Client, path, content string) {
	r.t.Helper()
	if err := c.Write(r.ctx(), path, 0o644, strings.NewReader(content)); err != nil {
		r.t.Fatalf("write %s: %v", path, err)
	}
}

func (r *rig) readFile(c *agentproto.Client, path string) string {
	r.t.Helper()
	rc, err := c.Read(r.ctx(), path)
	if err != nil {
		r.t.Fatalf("read %s: %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		r.t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

// waitDone fails the test unless vm's Done closes within the timeout.
func (r *rig) waitDone(vm vmm.VM, what string) {
	r.t.Helper()
	select {
	case <-vm.Done():
	case <-time.After(r.Timeout):
		r.t.Fatalf("%s: Done not closed after %s", what, r.Timeout)
	}
}

// wantGone fails the test if handle can still be adopted.
func (r *rig) wantGone(handle []byte, what string) {
	r.t.Helper()
	if vm, err := r.Driver.Adopt(r.ctx(), handle); err == nil {
		_ = vm.Stop(context.Background())
		r.t.Fatalf("%s: Adopt of its handle succeeded, want an error: the VMM process is gone", what)
	}
}

func (r *rig) status(vm vmm.VM) vmm.Status {
	r.t.Helper()
	st, err := vm.Status(r.ctx())
	if err != nil {
		r.t.Fatalf("status: %v", err)
	}
	return st
}

// save detaches the agent as the session manager does before a park, and
// saves vm into its directory.
func (r *rig) save(vm vmm.VM, c *agentproto.Client, spec vmm.Spec) string {
	r.t.Helper()
	if err := c.Detach(r.ctx()); err != nil {
		r.t.Fatalf("detach: %v", err)
	}
	state := filepath.Join(spec.Dir, "state")
	if _, err := r.snap.Save(r.ctx(), vm, state); err != nil {
		r.t.Fatalf("save: %v", err)
	}
	c.Close()
	return state
}

// A booted guest's agent answers the real protocol: hello, exec with its
// output and exit code.
func (s suite) bootAgentAnswers(t *testing.T) {
	r := s.rig(t)
	vm, _ := r.boot()
	c := r.connect(vm, "after boot")
	if _, err := c.Hello(r.ctx()); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if out, code := r.run(c, "echo", "hello", "guest"); out != "hello guest\n" || code != 0 {
		t.Fatalf("echo: %q, exit %d", out, code)
	}
	if _, code := r.run(c, "false"); code != 1 {
		t.Fatalf("false: exit %d, want 1", code)
	}
	if st := r.status(vm); st != vmm.StatusRunning {
		t.Fatalf("status of a booted VM: %s, want %s", st, vmm.StatusRunning)
	}
	if err := vm.Resume(r.ctx()); err != nil {
		t.Fatalf("resume of a running VM: %v, want a no-op", err)
	}
}

// A released VM runs on, and Adopt of its handle gives the same VM: same
// process, same guest.
func (s suite) adoptAfterRelease(t *testing.T) {
	r := s.rig(t)
	vm, _ := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/adopt", "same guest\n")
	c.Close()
	handle := vm.Handle()
	if err := vm.Release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	select {
	case <-vm.Done():
		t.Fatal("Release ended the VM")
	default:
	}
	adopted, err := r.Driver.Adopt(r.ctx(), handle)
	if err != nil {
		t.Fatalf("adopt after release: %v", err)
	}
	if adopted.PID() != vm.PID() {
		t.Fatalf("adopted PID %d, want %d", adopted.PID(), vm.PID())
	}
	if !bytes.Equal(adopted.Handle(), handle) {
		t.Fatalf("adopted handle %s, want %s", adopted.Handle(), handle)
	}
	if st := r.status(adopted); st != vmm.StatusRunning {
		t.Fatalf("status of the adopted VM: %s", st)
	}
	c2 := r.connect(adopted, "after adopt")
	if got := r.readFile(c2, "/tmp/adopt"); got != "same guest\n" {
		t.Fatalf("file in the adopted guest: %q", got)
	}
	c2.Close()
	if err := adopted.Stop(r.ctx()); err != nil {
		t.Fatalf("stop adopted: %v", err)
	}
	r.waitDone(adopted, "stopped adopted VM")
	r.waitDone(vm, "the released VM whose adopter stopped it")
}

// Adopt of a handle that is garbage, or of a VM that is gone, fails.
func (s suite) adoptBadHandle(t *testing.T) {
	r := s.rig(t)
	for _, h := range [][]byte{nil, []byte("garbage"), []byte(`{"v":9999}`)} {
		if vm, err := r.Driver.Adopt(r.ctx(), h); err == nil {
			_ = vm.Stop(context.Background())
			t.Errorf("Adopt(%q) succeeded, want an error", h)
		}
	}
}

// Stop ends the VM; a second Stop is a no-op; the handle goes stale.
func (s suite) stopIsIdempotent(t *testing.T) {
	r := s.rig(t)
	vm, _ := r.boot()
	r.connect(vm, "after boot")
	if err := vm.Stop(r.ctx()); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("Done not closed when Stop returned")
	}
	if err := vm.Stop(r.ctx()); err != nil {
		t.Fatalf("second stop: %v, want a no-op", err)
	}
	r.wantGone(vm.Handle(), "stopped VM")
}

// Done closes when the VMM process dies on its own.
func (s suite) doneWhenVMMDies(t *testing.T) {
	r := s.rig(t)
	vm, _ := r.boot()
	c := r.connect(vm, "after boot")
	r.Kill(t, vm)
	r.waitDone(vm, "killed VM")
	select {
	case <-c.Done():
	case <-time.After(r.Timeout):
		t.Fatal("the agent's connection outlived the killed VMM")
	}
	r.wantGone(vm.Handle(), "killed VM")
	if err := vm.Stop(r.ctx()); err != nil {
		t.Fatalf("stop of a dead VM: %v, want a no-op", err)
	}
}

// A guest paused from outside reads as Paused; Resume runs it again and
// its agent answers.
func (s suite) statusPausedAndResume(t *testing.T) {
	r := s.rig(t)
	vm, spec := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/paused", "kept\n")
	c.Close()
	handle := vm.Handle()
	if err := vm.Release(); err != nil {
		t.Fatal(err)
	}
	r.Pause(t, spec, vm)
	adopted, err := r.Driver.Adopt(r.ctx(), handle)
	if err != nil {
		t.Fatalf("adopt a paused VM: %v", err)
	}
	if st := r.status(adopted); st != vmm.StatusPaused {
		t.Fatalf("status of a paused VM: %s, want %s", st, vmm.StatusPaused)
	}
	if err := adopted.Resume(r.ctx()); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st := r.status(adopted); st != vmm.StatusRunning {
		t.Fatalf("status after resume: %s, want %s", st, vmm.StatusRunning)
	}
	c2 := r.connect(adopted, "after resume")
	if got := r.readFile(c2, "/tmp/paused"); got != "kept\n" {
		t.Fatalf("file after resume: %q", got)
	}
}

// Save ends the VMM process and Restore brings the guest back exactly: a
// file, and a command that was running (detached from its stream) with
// its stdin still open. Twice, so a restored VM saves again.
func (s suite) saveRestoreKeepsGuest(t *testing.T) {
	r := s.rig(t)
	vm, spec := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/kept", "in the guest's memory\n")
	// cat copies stdin to stdout: it runs until its stdin closes.
	p, err := c.Exec(r.ctx(), agentproto.Exec{Argv: []string{"cat"}})
	if err != nil {
		t.Fatalf("exec cat: %v", err)
	}
	pid := p.PID
	if _, err := p.Write([]byte("before\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("before\n"))
	if _, err := io.ReadFull(p.Stdout(), got); err != nil || string(got) != "before\n" {
		t.Fatalf("cat echoed %q, %v", got, err)
	}
	p.Close() // the command runs on, detached
	for i := range 2 {
		handle := vm.Handle()
		state := r.save(vm, c, spec)
		select {
		case <-vm.Done():
		default:
			t.Fatalf("cycle %d: the VMM process runs on after Save", i)
		}
		r.wantGone(handle, fmt.Sprintf("cycle %d: saved VM", i))
		restored, _, err := r.snap.Restore(r.ctx(), spec, state)
		if err != nil {
			t.Fatalf("cycle %d: restore: %v", i, err)
		}
		t.Cleanup(func() { _ = restored.Stop(context.Background()) })
		vm = restored
		if st := r.status(vm); st != vmm.StatusRunning {
			t.Fatalf("cycle %d: status after restore: %s", i, st)
		}
		c = r.connect(vm, fmt.Sprintf("cycle %d: after restore", i))
		if got := r.readFile(c, "/tmp/kept"); got != "in the guest's memory\n" {
			t.Fatalf("cycle %d: file after restore: %q", i, got)
		}
	}
	p, err = c.Attach(r.ctx(), pid)
	if err != nil {
		t.Fatalf("attach to the command after restores: %v", err)
	}
	if _, err := p.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	out, exit, err := collect(p)
	if err != nil || out != "after\n" || exit.Code != 0 {
		t.Fatalf("the command after restores: output %q, exit %+v, %v; want %q, 0", out, exit, err, "after\n")
	}
}

// Restore calls Started (with a handle Adopt takes), BeforeLoad and
// BeforeRun, in that order, once each.
func (s suite) restoreHooksInOrder(t *testing.T) {
	r := s.rig(t)
	vm, spec := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/hooks", "x")
	state := r.save(vm, c, spec)
	var calls []string
	var started []byte
	spec.Started = func(_ context.Context, h []byte) error {
		calls = append(calls, "Started")
		started = h
		return nil
	}
	spec.BeforeLoad = func(context.Context) error { calls = append(calls, "BeforeLoad"); return nil }
	spec.BeforeRun = func(context.Context) error { calls = append(calls, "BeforeRun"); return nil }
	restored, _, err := r.snap.Restore(r.ctx(), spec, state)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Cleanup(func() { _ = restored.Stop(context.Background()) })
	if want := []string{"Started", "BeforeLoad", "BeforeRun"}; !slices.Equal(calls, want) {
		t.Fatalf("hooks called %v, want %v", calls, want)
	}
	// The first connection after a restore may be one the driver made
	// before the load (QEMU's is): take it, and let go of it, before the
	// VM changes hands.
	r.connect(restored, "after restore").Close()
	if err := restored.Release(); err != nil {
		t.Fatal(err)
	}
	adopted, err := r.Driver.Adopt(r.ctx(), started)
	if err != nil {
		t.Fatalf("adopt the handle Started gave: %v", err)
	}
	if adopted.PID() != restored.PID() {
		t.Fatalf("Started's handle names PID %d, the restored VM is %d", adopted.PID(), restored.PID())
	}
	c2 := r.connect(adopted, "after adopting the restored VM")
	if got := r.readFile(c2, "/tmp/hooks"); got != "x" {
		t.Fatalf("file after restore: %q", got)
	}
}

// A restore that fails in BeforeLoad or in BeforeRun leaves no VMM process
// and the snapshot as good as before: the next restore brings the guest
// back.
func (s suite) failedRestoreKeepsSnapshot(t *testing.T) {
	r := s.rig(t)
	vm, spec := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/snap", "still here\n")
	state := r.save(vm, c, spec)
	hookErr := errors.New("hook refuses")
	for _, hook := range []string{"BeforeLoad", "BeforeRun"} {
		fspec := spec
		var handle []byte
		fspec.Started = func(_ context.Context, h []byte) error { handle = h; return nil }
		fail := func(context.Context) error { return hookErr }
		if hook == "BeforeLoad" {
			fspec.BeforeLoad = fail
		} else {
			fspec.BeforeRun = fail
		}
		if vm, _, err := r.snap.Restore(r.ctx(), fspec, state); err == nil {
			_ = vm.Stop(context.Background())
			t.Fatalf("restore with a failing %s succeeded", hook)
		} else if !errors.Is(err, hookErr) && !strings.Contains(err.Error(), hookErr.Error()) {
			t.Errorf("restore with a failing %s: %v, want the hook's error in it", hook, err)
		}
		if handle == nil {
			t.Fatalf("restore with a failing %s did not call Started", hook)
		}
		r.wantGone(handle, "restore failed in "+hook)
	}
	restored, _, err := r.snap.Restore(r.ctx(), spec, state)
	if err != nil {
		t.Fatalf("restore after failed ones: %v", err)
	}
	t.Cleanup(func() { _ = restored.Stop(context.Background()) })
	c2 := r.connect(restored, "after failed restores")
	if got := r.readFile(c2, "/tmp/snap"); got != "still here\n" {
		t.Fatalf("file after failed restores: %q", got)
	}
}

// A frozen VM (vmm.Freezer) answers nothing: an exec in its guest gets no
// answer within a bounded wait. Thawed, its guest runs on as it was; a
// frozen VM stops at once.
func (s suite) freezeThaw(t *testing.T) {
	r := s.rig(t)
	fz, ok := r.Driver.(vmm.Freezer)
	if !ok {
		t.Skipf("%T is not a vmm.Freezer", r.Driver)
	}
	vm, _ := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/kept", "before the freeze\n")
	if err := fz.Freeze(r.ctx(), vm); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := c.Exec(ctx, agentproto.Exec{Argv: []string{"true"}})
	cancel()
	if err == nil {
		t.Fatal("an exec in a frozen guest was answered")
	}
	if err := fz.Freeze(r.ctx(), vm); err != nil {
		t.Fatalf("freezing a frozen VM: %v", err)
	}
	if err := fz.Thaw(r.ctx(), vm); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	c.Close()
	c = r.connect(vm, "after the thaw")
	if got := r.readFile(c, "/tmp/kept"); got != "before the freeze\n" {
		t.Fatalf("the guest after the thaw: %q", got)
	}
	if err := fz.Freeze(r.ctx(), vm); err != nil {
		t.Fatalf("freeze again: %v", err)
	}
	if err := vm.Stop(r.ctx()); err != nil {
		t.Fatalf("stop a frozen VM: %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Fatal("a frozen VM's process runs after Stop")
	}
}

// A checkpoint (vmm.Checkpointer) lets the guest run on, on the new disk,
// and Restore takes it as it takes a saved VM's state: a VM restored from
// it, with a copy of the RAM file made while paused and an overlay on the
// old disk, finds the guest as it was, while the original has moved on.
func (s suite) checkpointRunsOn(t *testing.T) {
	r := s.rig(t)
	ck, ok := r.Driver.(vmm.Checkpointer)
	if !ok {
		t.Skipf("%T is not a vmm.Checkpointer: it has no checkpoints to check", r.Driver)
	}
	vm, spec := r.boot()
	c := r.connect(vm, "after boot")
	r.writeFile(c, "/tmp/kept", "at the checkpoint\n")
	saved := filepath.Join(t.TempDir(), "state")
	mem := filepath.Join(t.TempDir(), r.MemFile)
	next := filepath.Join(spec.Dir, "next.qcow2")
	paused := false
	_, err := ck.Checkpoint(r.ctx(), vm, vmm.CheckpointRequest{State: saved, NewDisk: next,
		WhilePaused: func(context.Context) error {
			paused = r.status(vm) != vmm.StatusRunning
			return copyFile(filepath.Join(spec.Dir, r.MemFile), mem)
		}})
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if !paused {
		t.Error("WhilePaused ran while the guest ran")
	}
	if st := r.status(vm); st != vmm.StatusRunning {
		t.Fatalf("status after the checkpoint: %s, want running", st)
	}
	if d, err := ck.Disk(r.ctx(), vm); err != nil || d != next {
		t.Fatalf("Disk after the checkpoint: %q, %v; want %q", d, err, next)
	}
	r.writeFile(c, "/tmp/kept", "moved on\n")
	if got := r.readFile(c, "/tmp/kept"); got != "moved on\n" {
		t.Fatalf("the guest after its checkpoint: %q", got)
	}

	rspec := r.Spec(t)
	if err := os.Remove(rspec.Disk); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", spec.Disk, "-F", "qcow2", rspec.Disk).CombinedOutput(); err != nil {
		t.Fatalf("overlay on the checkpoint's disk: %v: %s", err, out)
	}
	if err := copyFile(mem, filepath.Join(rspec.Dir, r.MemFile)); err != nil {
		t.Fatal(err)
	}
	restored, _, err := r.snap.Restore(r.ctx(), rspec, saved)
	if err != nil {
		t.Fatalf("restore the checkpoint: %v", err)
	}
	t.Cleanup(func() { _ = restored.Stop(context.Background()) })
	c2 := r.connect(restored, "restored from the checkpoint")
	if got := r.readFile(c2, "/tmp/kept"); got != "at the checkpoint\n" {
		t.Fatalf("the restored checkpoint: %q, want the file as it was", got)
	}
	if got := r.readFile(c, "/tmp/kept"); got != "moved on\n" {
		t.Fatalf("the original after the restore: %q", got)
	}
}

// copyFile copies src to dst (created, 0600; holes are written as data).
func copyFile(src, dst string) error {
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
	return out.Close()
}
