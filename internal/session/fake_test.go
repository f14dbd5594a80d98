package session_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// The session state machine over the in-process fake driver
// (internal/vmm/fake): the same manager, store and qemu-img overlays as
// the VM tests, with guests that boot, park and wake in microseconds, so
// these run in milliseconds and under the race detector. Every test name
// starts with TestFake: 'make test' runs them again with -race.

// fakeImages is the image builder of a rig over the fake driver: one image,
// "tiny", whose root file system, kernel and initramfs are empty files
// (the fake guest reads none of them; qemu-img overlays the root).
type fakeImages struct{ dir string }

func newFakeImages(t *testing.T) fakeImages {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fakeImages{dir: dir}
}

func (f fakeImages) Get(_ context.Context, name string) (image.Image, error) {
	if name != "tiny" {
		return image.Image{}, api.Errorf(api.CodeInvalid, "unknown image %q (known: tiny)", name)
	}
	return image.Image{Manifest: image.Manifest{Name: name}, RootFS: filepath.Join(f.dir, "rootfs.raw")}, nil
}

func (f fakeImages) Kernel(context.Context, func(string)) (image.Kernel, error) {
	return image.Kernel{Version: "fake", Vmlinux: filepath.Join(f.dir, "vmlinux")}, nil
}

func (f fakeImages) Initramfs(image.Kernel) (string, error) {
	return filepath.Join(f.dir, "initrd"), nil
}

// fakeRig is a manager over the fake driver and a real SQLite store. A
// restart opens a new manager over the same store file, sessions dir and
// driver: the driver's VMs outlive the manager, as QEMU processes do.
type fakeRig struct {
	t      *testing.T
	driver *fake.Driver
	images fakeImages
	dir    string
	db     string

	mgr   *session.Manager
	store *sqlite.Store
	crash *crashHook // the current manager's CrashPoint
	// config, if set, changes each manager's configuration.
	config func(*session.Config)
}

func newFakeRig(t *testing.T) *fakeRig { return newFakeRigWith(t, nil) }

// newFakeRigWith is newFakeRig with config changing the managers'
// configuration.
func newFakeRigWith(t *testing.T, config func(*session.Config)) *fakeRig {
	t.Helper()
	r := &fakeRig{t: t, driver: fake.New(), images: newFakeImages(t), dir: t.TempDir(),
		db: filepath.Join(t.TempDir(), "state.db"), config: config}
	// Registered first, so it runs last: after the last manager removed
	// its sessions, no fake VM may be left running.
	t.Cleanup(func() {
		if ids := r.driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	r.open()
	return r
}

// open starts a manager over the rig's store file, dir and driver, and
// recovers (which starts its background loops).
func (r *fakeRig) open() {
	t := r.t
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, r.db)
	if err != nil {
		t.Fatal(err)
	}
	r.crash = &crashHook{}
	cfg := session.Config{Store: st, Driver: r.driver, Images: r.images, Dir: r.dir,
		TemplateDir: filepath.Join(r.dir, "templates"), DefaultMemoryMiB: 64,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), CrashPoint: r.crash.step}
	if r.config != nil {
		r.config(&cfg)
	}
	m, err := session.New(cfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := m.Recover(ctx); err != nil {
		t.Fatalf("recover: %v", err)
	}
	r.mgr, r.store = m, st
	t.Cleanup(func() {
		if r.mgr != m {
			return // replaced by a restart
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := m.List(ctx); err == nil {
			for _, s := range ss {
				if err := m.Delete(ctx, s.ID); err != nil {
					t.Errorf("cleanup: delete %s: %v", s.ID, err)
				}
			}
		}
		if ts, err := m.ListTemplates(ctx); err == nil {
			for _, tp := range ts {
				if err := m.DeleteTemplate(ctx, tp.Name); err != nil {
					t.Errorf("cleanup: delete template %s: %v", tp.Name, err)
				}
			}
		}
		m.StopAll(ctx)
		st.Close()
	})
}

// restart plays a server restart: the manager lets go of its VMs (they run
// on), its agent connections drop as a dead process's do, and a new
// manager recovers from the same store file and driver.
func (r *fakeRig) restart() {
	r.t.Helper()
	r.mgr.Close()
	r.driver.Disconnect()
	r.store.Close()
	r.open()
}

// crashAt runs op on a goroutine and plays a server crash at the named
// step: there, before runs (if set), then the step never returns (that
// goroutine is the dead server's), and the manager is restarted.
func (r *fakeRig) crashAt(step string, before func(), op func(*session.Manager)) {
	r.t.Helper()
	reached := r.crash.arm(step, before)
	go op(r.mgr)
	select {
	case <-reached:
		r.restart()
	case <-time.After(30 * time.Second):
		r.restart() // the cleanup's deletes must not wait for the stuck one
		r.t.Fatalf("step %s not reached", step)
	}
}

// crashHook is a Config.CrashPoint that stops the goroutine reaching its
// armed step for good.
type crashHook struct {
	mu      sync.Mutex
	at      string        // guarded by mu
	before  func()        // guarded by mu
	reached chan struct{} // guarded by mu
}

func (h *crashHook) arm(step string, before func()) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.at, h.before, h.reached = step, before, make(chan struct{})
	return h.reached
}

func (h *crashHook) step(name string) {
	h.mu.Lock()
	hit := name == h.at
	before, reached := h.before, h.reached
	if hit {
		h.at = ""
	}
	h.mu.Unlock()
	if !hit {
		return
	}
	if before != nil {
		before()
	}
	close(reached)
	select {} // the server died here
}

func (r *fakeRig) create(req api.CreateSessionRequest) api.Session {
	r.t.Helper()
	s, err := r.mgr.Create(context.Background(), testOwner, req)
	if err != nil {
		r.t.Fatalf("create: %v", err)
	}
	if s.State != api.StateRunning {
		r.t.Fatalf("created session is %s", s.State)
	}
	return s
}

func (r *fakeRig) get(id string) api.Session {
	r.t.Helper()
	s, err := r.mgr.Get(context.Background(), id)
	if err != nil {
		r.t.Fatalf("get %s: %v", id, err)
	}
	return s
}

// wantState fails the test unless session id is in state (and, if
// errPart is set, its error mentions it).
func (r *fakeRig) wantState(id, state, errPart string) api.Session {
	r.t.Helper()
	s := r.get(id)
	if s.State != state || !strings.Contains(s.Error, errPart) {
		r.t.Fatalf("session %s is %s (error %q), want %s with an error mentioning %q", id, s.State, s.Error, state, errPart)
	}
	return s
}

// eventually waits for cond, failing the test after a generous deadline.
func (r *fakeRig) eventually(what string, cond func() bool) {
	r.t.Helper()
	if !waitFor(30*time.Second, cond) {
		r.t.Fatalf("%s: not after 30s", what)
	}
}

func (r *fakeRig) write(id, path, content string) {
	r.t.Helper()
	if err := r.mgr.WriteFile(context.Background(), id, path, 0o644, strings.NewReader(content)); err != nil {
		r.t.Fatalf("write %s: %v", path, err)
	}
}

// wantFile fails the test unless the guest of session id has path with
// content (reading it wakes a parked session).
func (r *fakeRig) wantFile(id, path, content string) {
	r.t.Helper()
	rc, err := r.mgr.Open(context.Background(), id, path)
	if err != nil {
		r.t.Fatalf("open %s: %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil || string(b) != content {
		r.t.Fatalf("%s in the guest: %q, %v; want %q", path, b, err, content)
	}
}

func (r *fakeRig) echo(id string) {
	r.t.Helper()
	res := r.run(r.t, id, api.ExecRequest{Argv: []string{"echo", "alive"}})
	if res.stdout != "alive\n" || res.status.Code != 0 {
		r.t.Fatalf("echo in %s: %+v", id, res)
	}
}

func (r *fakeRig) run(t testing.TB, id string, req api.ExecRequest) result {
	t.Helper()
	res, err := runCmd(r.mgr, id, req, nil)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return res
}

func (r *fakeRig) park(id string) api.Session {
	r.t.Helper()
	s, err := r.mgr.Park(context.Background(), id)
	if err != nil {
		r.t.Fatalf("park: %v", err)
	}
	if s.State != api.StateParked || s.Snapshot == nil {
		r.t.Fatalf("parked session is %s, snapshot %v", s.State, s.Snapshot)
	}
	return s
}

// vmOf returns the fake VM of session id, failing the test if none runs.
func (r *fakeRig) vmOf(id string) *fake.VM {
	r.t.Helper()
	vm := r.driver.Find(id)
	if vm == nil {
		r.t.Fatalf("no fake VM runs for session %s", id)
	}
	return vm
}

// TestFakeLifecycle creates, parks, wakes (explicitly and by an exec) and
// deletes a session: its files, env and a command detached from its stream
// survive, no VM runs while it is parked, and nothing is left at the end.
func TestFakeLifecycle(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "kept\n")
	// cat runs until its stdin closes: it spans the parks.
	p, err := r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	var out strings.Builder
	copied := make(chan error, 1)
	go func() { _, err := io.Copy(&out, p.Stdout()); copied <- err }()
	if _, err := p.Stdin().Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	// The first park may cut the stream with the echo on its way, or not
	// yet read by the host: the re-attach sends it again, once.
	for i := range 3 {
		r.park(s.ID)
		if vm := r.driver.Find(s.ID); vm != nil {
			t.Fatalf("cycle %d: a VM runs for the parked session", i)
		}
		if i%2 == 0 {
			if w, err := r.mgr.Wake(ctx, s.ID); err != nil || w.State != api.StateRunning {
				t.Fatalf("cycle %d: wake: %+v, %v", i, w, err)
			}
		}
		r.wantFile(s.ID, "/root/f", "kept\n") // wakes on odd cycles
	}
	if _, err := p.Stdin().Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Stdin().Close(); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("cat across parks: %+v, %v", st, err)
	}
	if err := <-copied; err != nil || out.String() != "one\ntwo\n" {
		t.Fatalf("cat across parks wrote %q, %v", out.String(), err)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if ids := r.driver.Running(); len(ids) != 0 {
		t.Fatalf("VMs after delete: %v", ids)
	}
	if _, err := os.Stat(filepath.Join(r.dir, s.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("session dir after delete: %v", err)
	}
}

// TestFakeWakeKeepsEnv checks a session's environment reaches commands
// after a wake as before the park.
func TestFakeWakeKeepsEnv(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{Env: map[string]string{"WHO": "me"}}).ID
	env := func() string {
		return r.run(t, id, api.ExecRequest{Argv: []string{"env"}, Env: map[string]string{"REQ": "x"}}).stdout
	}
	if got := env(); got != "REQ=x\nWHO=me\n" {
		t.Fatalf("env before the park: %q", got)
	}
	r.park(id)
	if got := env(); got != "REQ=x\nWHO=me\n" {
		t.Fatalf("env after a wake: %q, want the session's env as before the park", got)
	}
}

// TestFakeRecoverRunning restarts the server under two running sessions,
// one of whose VMs dies while no server runs: the live one is re-adopted
// (same VM, same guest), the dead one fails saying why.
func TestFakeRecoverRunning(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	keep := r.create(api.CreateSessionRequest{})
	lost := r.create(api.CreateSessionRequest{})
	r.write(keep.ID, "/root/f", "kept\n")
	pid := r.vmOf(keep.ID).PID()
	r.mgr.Close()
	r.vmOf(lost.ID).Kill()
	r.store.Close()
	r.open()
	r.wantState(keep.ID, api.StateRunning, "")
	if got := r.vmOf(keep.ID).PID(); got != pid {
		t.Fatalf("re-adopted session runs in VM %d, want %d", got, pid)
	}
	r.wantFile(keep.ID, "/root/f", "kept\n")
	r.wantState(lost.ID, api.StateFailed, "restart")
	_, err := r.mgr.Exec(context.Background(), lost.ID, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "exec in the lost session", err, api.CodeConflict)
}

// TestFakeRecoverCrashes crashes the server at each step of create, park,
// wake and delete, restarts it, and checks what recovery makes of the
// session: never a silent loss, never a VM left that no record names.
func TestFakeRecoverCrashes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		step string
		// parked: the session is parked before the crashed operation.
		parked bool
		op     func(m *session.Manager, id string)
		// want is the state after recovery ("" for gone); kept whether
		// the guest's file is still there.
		want, errPart string
		kept          bool
	}{
		{step: "create.booted", want: api.StateFailed, errPart: "created"},
		{step: "park.recorded", op: park, want: api.StateRunning, kept: true},
		{step: "park.detached", op: park, want: api.StateRunning, kept: true},
		{step: "park.saved", op: park, want: api.StateParked, kept: true},
		{step: "wake.recorded", parked: true, op: wake, want: api.StateParked, kept: true},
		{step: "wake.handle-recorded", parked: true, op: wake, want: api.StateParked, kept: true},
		{step: "wake.connected", parked: true, op: wake, want: api.StateRunning, kept: true},
		{step: "rm.recorded", op: remove, want: ""},
		{step: "rm.stopped", op: remove, want: ""},
	} {
		t.Run(tc.step, func(t *testing.T) {
			r := newFakeRig(t)
			var id string
			if tc.op == nil { // the crash is in the create
				r.crashAt(tc.step, nil, func(m *session.Manager) { _, _ = m.Create(ctx, testOwner, api.CreateSessionRequest{}) })
				ss, err := r.mgr.List(ctx)
				if err != nil || len(ss) != 1 {
					t.Fatalf("sessions after a crashed create: %+v, %v", ss, err)
				}
				id = ss[0].ID
			} else {
				id = r.create(api.CreateSessionRequest{}).ID
				r.write(id, "/root/f", "kept\n")
				if tc.parked {
					r.park(id)
				}
				r.crashAt(tc.step, nil, func(m *session.Manager) { tc.op(m, id) })
			}
			if tc.want == "" {
				if _, err := r.mgr.Get(ctx, id); !api.IsCode(err, api.CodeNotFound) {
					t.Fatalf("session after recovery: %v, want it gone", err)
				}
			} else {
				r.wantState(id, tc.want, tc.errPart)
			}
			running := tc.want == api.StateRunning
			if vm := r.driver.Find(id); (vm != nil) != running {
				t.Fatalf("after recovery to %q a VM runs: %v, want %v", tc.want, vm != nil, running)
			}
			if tc.kept {
				r.wantFile(id, "/root/f", "kept\n") // wakes a parked one
				r.echo(id)
			}
		})
	}
}

func park(m *session.Manager, id string)   { _, _ = m.Park(context.Background(), id) }
func wake(m *session.Manager, id string)   { _, _ = m.Wake(context.Background(), id) }
func remove(m *session.Manager, id string) { _ = m.Delete(context.Background(), id) }

// TestFakeRecoverPausedPark crashes the server in a park after the save
// paused the guest and before the snapshot was complete: recovery resumes
// the guest, and the session runs on.
func TestFakeRecoverPausedPark(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{}).ID
	r.write(id, "/root/f", "kept\n")
	vm := r.vmOf(id)
	r.crashAt("park.detached", vm.Pause, func(m *session.Manager) { park(m, id) })
	r.wantState(id, api.StateRunning, "")
	if st, err := r.vmOf(id).Status(context.Background()); err != nil || st != vmm.StatusRunning {
		t.Fatalf("VM after recovery: %s, %v; want running", st, err)
	}
	r.wantFile(id, "/root/f", "kept\n")
}

// TestFakeParkFailureKeepsRunning fails the save of a park: the park
// fails, and the session runs on with its guest.
func TestFakeParkFailureKeepsRunning(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{}).ID
	r.write(id, "/root/f", "kept\n")
	r.driver.FailNext(fake.OpSave, errors.New("disk full"))
	if _, err := r.mgr.Park(context.Background(), id); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("park with a failing save: %v, want the save's error", err)
	}
	r.wantState(id, api.StateRunning, "")
	r.wantFile(id, "/root/f", "kept\n")
	r.echo(id)
	r.park(id) // and a park works again
}

// TestFakeWakeFailureBeforeRun fails a wake's restore before the guest
// ran (the VMM does not start; the state does not load): the session stays
// parked with its snapshot, and the next wake brings the guest back.
func TestFakeWakeFailureBeforeRun(t *testing.T) {
	t.Parallel()
	for _, op := range []fake.Op{fake.OpRestore, fake.OpLoad} {
		t.Run(string(op), func(t *testing.T) {
			r := newFakeRig(t)
			id := r.create(api.CreateSessionRequest{}).ID
			r.write(id, "/root/f", "kept\n")
			r.park(id)
			r.driver.FailNext(op, errors.New("no luck"))
			_, err := r.mgr.Wake(context.Background(), id)
			wantCode(t, "wake with a failing restore", err, api.CodeUnavailable)
			r.wantState(id, api.StateParked, "no luck")
			if ids := r.driver.Running(); len(ids) != 0 {
				t.Fatalf("VMs after a failed wake: %v", ids)
			}
			r.wantFile(id, "/root/f", "kept\n")
		})
	}
}

// TestFakeVMMDies kills a running session's VMM: the session fails with
// the reason, calls are refused, and it can be deleted.
func TestFakeVMMDies(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{}).ID
	other := r.create(api.CreateSessionRequest{}).ID
	r.vmOf(id).Kill()
	r.eventually("the killed session fails", func() bool { return r.get(id).State == api.StateFailed })
	r.wantState(id, api.StateFailed, "exited unexpectedly")
	_, err := r.mgr.Exec(context.Background(), id, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "exec in the killed session", err, api.CodeConflict)
	r.echo(other)
	if err := r.mgr.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

// TestFakeBootFailures fails a boot in the VMM and hangs a guest: both
// creates fail with a clear code, the records say failed, nothing runs.
func TestFakeBootFailures(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	r.driver.FailNext(fake.OpBoot, errors.New("no memory"))
	if _, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{}); err == nil || !strings.Contains(err.Error(), "no memory") {
		t.Fatalf("create with a failing boot: %v", err)
	}
	r.driver.HangNext()
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{BootTimeout: "1s"})
	wantCode(t, "create of a hung guest", err, api.CodeTimeout)
	ss, err := r.mgr.List(ctx)
	if err != nil || len(ss) != 2 {
		t.Fatalf("sessions: %+v, %v", ss, err)
	}
	for _, s := range ss {
		if s.State != api.StateFailed || s.Error == "" {
			t.Errorf("session %s after a failed boot: %s %q, want failed with the reason", s.ID, s.State, s.Error)
		}
	}
	if ids := r.driver.Running(); len(ids) != 0 {
		t.Fatalf("VMs after failed boots: %v", ids)
	}
}

// TestFakeWarmPool builds a template with a pool of two: creates claim
// pooled clones that carry the template's guest, the pool refills, and a
// restart sweeps the pooled VMs (no record names them) and refills.
func TestFakeWarmPool(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	tp, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}, Pool: 2})
	if err != nil {
		t.Fatal(err)
	}
	if tp.State != api.TemplateReady {
		t.Fatalf("template is %s", tp.State)
	}
	ready := func() int {
		tp, err := r.mgr.GetTemplate(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		return tp.PoolReady
	}
	r.eventually("the pool fills", func() bool { return ready() == 2 })
	var ids []string
	for range 3 { // one more than the pool holds
		s := r.create(api.CreateSessionRequest{Template: "web"})
		ids = append(ids, s.ID)
		if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
			t.Fatalf("clone %s lacks the template's file: %v", s.ID, err)
		}
	}
	r.eventually("the pool refills", func() bool { return ready() == 2 })
	r.write(ids[0], "/root/mine", "0")
	r.wantFile(ids[0], "/root/mine", "0")
	if _, err := r.mgr.Stat(ctx, ids[1], "/root/mine"); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("a file of one clone shows in another: %v", err)
	}
	// Clones park and wake like any session.
	r.park(ids[0])
	r.wantFile(ids[0], "/root/mine", "0")

	r.restart()
	r.eventually("the pool refills after a restart", func() bool { return ready() == 2 })
	// Running: the 3 sessions and 2 pooled clones; the pooled VMs of the
	// last manager were swept.
	r.eventually("the old pool's VMs are gone", func() bool { return len(r.driver.Running()) == 5 })
	for _, id := range ids {
		r.wantState(id, api.StateRunning, "")
	}
}

// TestFakeParkUntilEvent parks a session until an event: an unrelated one
// changes nothing, the matching one wakes it and is written into the
// guest exactly once, a replay and a second match are not delivered.
func TestFakeParkUntilEvent(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	id := r.create(api.CreateSessionRequest{}).ID
	if _, err := r.mgr.ParkUntil(ctx, id, []string{"deploys:deploy-done env=staging"}, 0); err != nil {
		t.Fatal(err)
	}
	if s := r.wantState(id, api.StateParked, ""); s.Waiting == nil {
		t.Fatalf("parked until an event, but not waiting: %+v", s)
	}
	event := func(delivery, env string) trigger.Event {
		ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done","env":"`+env+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		ev.ID, ev.Received = delivery, time.Now()
		return ev
	}
	pending := func() int {
		ds, err := r.store.ListDeliveries(ctx, store.DeliveryPending)
		if err != nil {
			t.Fatal(err)
		}
		return len(ds)
	}
	if dup, err := r.mgr.Accept(ctx, event("d1", "prod")); err != nil || dup {
		t.Fatalf("accept unrelated: dup %v, %v", dup, err)
	}
	if n := pending(); n != 0 {
		t.Fatalf("an unrelated event made %d deliveries", n)
	}
	r.wantState(id, api.StateParked, "")
	if dup, err := r.mgr.Accept(ctx, event("d2", "staging")); err != nil || dup {
		t.Fatalf("accept matching: dup %v, %v", dup, err)
	}
	if dup, err := r.mgr.Accept(ctx, event("d2", "staging")); err != nil || !dup {
		t.Fatalf("replayed delivery: dup %v, %v; want dup", dup, err)
	}
	r.eventually("the event is delivered", func() bool {
		ds, err := r.store.ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})
	r.wantState(id, api.StateRunning, "")
	// The subscription was consumed: a second match is no delivery.
	if _, err := r.mgr.Accept(ctx, event("d3", "staging")); err != nil {
		t.Fatal(err)
	}
	if n := pending(); n != 0 {
		t.Fatalf("a match after the subscription was consumed made %d deliveries", n)
	}
	files, err := r.mgr.ListDir(ctx, id, "/run/cove/events")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Fatalf("events in the guest: %+v, want one", files)
	}
	rc, err := r.mgr.Open(ctx, id, "/run/cove/events/"+files[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.Contains(string(b), `"id": "d2"`) || !strings.Contains(string(b), `"env": "staging"`) {
		t.Fatalf("event in the guest: %s", b)
	}
	if s := r.get(id); s.Waiting != nil {
		t.Fatalf("still waiting after its event: %+v", s.Waiting)
	}
}

// TestFakeExecsAcrossParks runs commands from several goroutines while the
// session is parked and woken over and over (by Wake and by the commands'
// auto-wake): every command either runs with its output intact or fails
// with an API error, none hangs, and the session ends up running with its
// guest. Under -race it checks the manager's locking of live sessions.
func TestFakeExecsAcrossParks(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	id := r.create(api.CreateSessionRequest{}).ID
	r.write(id, "/root/f", "kept\n")
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				want := fmt.Sprintf("w%d-%d\n", w, i)
				res, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"echo", strings.TrimSpace(want)}}, nil)
				switch {
				case err != nil && api.CodeOf(err) == "":
					errs <- fmt.Errorf("exec %d/%d: %v (not an API error)", w, i, err)
				case err == nil && (res.stdout != want || res.status.Code != 0):
					errs <- fmt.Errorf("exec %d/%d: %+v, want %q", w, i, res, want)
				}
			}
		}()
	}
	for i := range 5 {
		if _, err := r.mgr.Park(ctx, id); err != nil && api.CodeOf(err) == "" {
			t.Errorf("park %d: %v (not an API error)", i, err)
		}
		if _, err := r.mgr.Wake(ctx, id); err != nil && api.CodeOf(err) == "" {
			t.Errorf("wake %d: %v (not an API error)", i, err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r.wantFile(id, "/root/f", "kept\n")
	r.wantState(id, api.StateRunning, "")
}

// TestFakeLateDetachAnswer parks a session whose guest answers the park's
// detach only after the park gave up (a guest slow under load): the park
// rolls back with 504, and once the guest runs again the session answers
// again. The guest ended its side of the connection when it acted on the
// late detach: a manager that kept using that connection would see every
// later call go unanswered (make soak saw one session so for minutes).
func TestFakeLateDetachAnswer(t *testing.T) {
	// Not parallel: its guest must answer within a 300 ms answer
	// timeout, which a fake guest starved by the tests beside it (under
	// the race detector on 2 cores) missed.
	r := newFakeRigWith(t, func(c *session.Config) { c.AnswerTimeout = 300 * time.Millisecond })
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/kept", "before the park")
	vm := r.vmOf(s.ID)
	vm.Pause()
	_, err := r.mgr.Park(ctx, s.ID)
	wantCode(t, "park of a guest that answers too late", err, api.CodeTimeout)
	if got := r.get(s.ID); got.State != api.StateRunning {
		t.Fatalf("after the rolled-back park: %s (%q), want running", got.State, got.Error)
	}
	// The guest runs again and acts on the detach it read.
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	r.eventually("the session answers again", func() bool {
		res, err := runCmd(r.mgr, s.ID, api.ExecRequest{Argv: []string{"cat", "/root/kept"}}, nil)
		return err == nil && res.stdout == "before the park"
	})
	// And it parks and wakes as any other.
	r.park(s.ID)
	if _, err := r.mgr.Wake(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	r.wantFile(s.ID, "/root/kept", "before the park")
}

// TestFakeWakeAgentLate wakes a session whose restored guest runs but
// never answers its agent channel in time: its snapshot is consumed, so
// the session is not failed or its VM stopped; it is running, the wake
// says why it answered 503, and an rm ends it.
func TestFakeWakeAgentLate(t *testing.T) {
	// Not parallel: its boots must answer within a 500 ms boot timeout,
	// which a fake guest starved by the tests beside it (under the race
	// detector on 2 cores) would miss.
	r := newFakeRigWith(t, func(c *session.Config) { c.DefaultBootTimeout = 500 * time.Millisecond })
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.park(s.ID)
	r.driver.HangNext()
	_, err := r.mgr.Wake(ctx, s.ID)
	wantCode(t, "wake of a guest whose agent is late", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "has not answered yet") {
		t.Errorf("wake error %q does not say the agent is late", err)
	}
	if got := r.get(s.ID); got.State != api.StateRunning {
		t.Fatalf("after a wake whose agent is late: %s (%q), want running", got.State, got.Error)
	}
	if ids := r.driver.Running(); !slices.Contains(ids, s.ID) {
		t.Fatalf("the woken VM was stopped: running %v", ids)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatalf("rm of the session: %v", err)
	}
	if ids := r.driver.Running(); len(ids) != 0 {
		t.Fatalf("VMs after rm: %v", ids)
	}
}

// TestFakeExecAsUserNeedsAnAgentThatCan: a command to run as a user goes
// only to a guest agent that said (in its hello) it runs commands as
// users; the fake guest, like an agent before that, did not, so it is
// refused (409) rather than run as root, and the session runs on; "root"
// named goes to any agent.
func TestFakeExecAsUserNeedsAnAgentThatCan(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{}).ID
	_, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"touch", "/root/ran"}, User: "user"}, nil)
	if api.CodeOf(err) != api.CodeConflict || !strings.Contains(fmt.Sprint(err), "predates") {
		t.Fatalf("exec as user on an agent without it: %v, want a conflict", err)
	}
	if _, err := r.mgr.Stat(context.Background(), id, "/root/ran"); api.CodeOf(err) != api.CodeNotFound {
		t.Errorf("the refused command ran: stat %v", err)
	}
	// Root, named or not, is what every agent runs commands as.
	for _, user := range []string{"", "root"} {
		if res, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"echo", "root"}, User: user}, nil); err != nil || res.stdout != "root\n" {
			t.Errorf("exec as %q after: %+v, %v", user, res, err)
		}
	}
}
