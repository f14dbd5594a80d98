package session_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// rig is a Manager wired the way 'cove server' wires it: a real SQLite
// store, the real QEMU driver and the images of the vmtest cache.
type rig struct {
	mgr    *session.Manager
	store  *sqlite.Store
	driver *qemu.Driver
	dir    string // the sessions dir (Config.Dir)
	db     string // the SQLite file

	mu     sync.Mutex
	closed bool // guarded by mu: Close was called; cleanup leaves it be
}

// rigOptions adjust a rig's manager.
type rigOptions struct {
	images session.Images              // default: the vmtest builder
	driver func(vmm.Driver) vmm.Driver // wraps the QEMU driver
	dir    string                      // reuse a sessions dir
	db     string                      // reuse a SQLite file
	// qemuStep, if set, is the QEMU driver's CrashPoint hook: called at
	// each named step of a save and a restore.
	qemuStep func(name string)
	// answerTimeout is the manager's AnswerTimeout.
	answerTimeout time.Duration
	// admission is the manager's Admission.
	admission session.Admission
	// adjust, if set, changes the manager's Config last, for a field the
	// options above do not carry (a lifecycle CrashPoint, a server default
	// idle timeout, a log to read).
	adjust func(*session.Config)
}

// parallelVM marks t as a VM test that could run beside one other VM
// test: it boots its guests one at a time, keeps everything in its rig's
// own dirs, and times nothing tightly. For now they run alone, in the
// serial part of the package, before the fake driver's tests: two at once
// beside those, a guest once went 30 s without its agent answering after
// a checkpoint that failed on a full disk (TestCheckpointDiskFull, in a
// clean-clone CI run), which is not explained yet.
func parallelVM(t *testing.T) {
	t.Helper()
}

// newRig builds a manager over fresh directories and registers cleanups
// that delete every session it left and then check that no QEMU process
// with the sessions dir in its command line remains.
func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	env := vmtest.Get(t)
	env.Image(t, "tiny")
	if o.dir == "" {
		o.dir = vmtest.Dir(t)
	}
	if o.db == "" {
		o.db = filepath.Join(t.TempDir(), "state.db")
	}
	dir := o.dir
	t.Cleanup(func() { assertNoQEMU(t, dir) })
	return openRig(t, o)
}

// openRig opens a manager over o.dir and o.db (which may hold the state of
// an earlier manager) without calling Recover.
func openRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	env := vmtest.Get(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, o.db)
	if err != nil {
		t.Fatal(err)
	}
	cg := "/sys/fs/cgroup"
	if os.Getenv("COVE_NOCG") != "" {
		cg = ""
	}
	// Spare QEMU processes as 'cove server' keeps them (--spares 1): wakes
	// and clones after the first restore of a shape claim one.
	// The VMs' cgroups are tagged with the rig's dir, as 'cove server'
	// tags them with its home: a rig's sweep (at Recover) removes its own
	// empty cgroups only, never one that a VM test running beside it is
	// booting a VM into.
	d, err := qemu.New(qemu.Config{Accel: os.Getenv("COVE_ACCEL"), User: "cove-vm", CgroupRoot: cg,
		CgroupTag: qemu.CgroupTag(o.dir), SpareDir: filepath.Join(o.dir, ".spares"), CrashPoint: o.qemuStep})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	var drv vmm.Driver = d
	if o.driver != nil {
		drv = o.driver(d)
	}
	var images session.Images = env.Builder
	if o.images != nil {
		images = o.images
	}
	// Templates go inside the rig's dir: the default (beside Dir) is shared
	// by every test binary running at once.
	// One set of clone files made ahead per template, as 'cove server'
	// keeps: its maker runs once Recover is called.
	cfg := session.Config{Store: st, Driver: drv, Images: images, Dir: o.dir, TemplateDir: filepath.Join(o.dir, "templates"),
		CloneFiles: 1, AnswerTimeout: o.answerTimeout, Admission: o.admission}
	if o.adjust != nil {
		o.adjust(&cfg)
	}
	m, err := session.New(cfg)
	if err != nil {
		d.Close()
		st.Close()
		t.Fatal(err)
	}
	r := &rig{mgr: m, store: st, driver: d, dir: o.dir, db: o.db}
	t.Cleanup(func() {
		r.mu.Lock()
		closed := r.closed
		r.closed = true
		r.mu.Unlock()
		if closed {
			return
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
		m.StopAll(ctx)
		d.Close()
		st.Close()
	})
	return r
}

// close lets go of the manager as 'cove server' does when it exits: the
// VMs keep running.
func (r *rig) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	r.mgr.Close()
	r.driver.Close()
	r.store.Close()
}

// create boots a session and fails the test if it does not run.
func (r *rig) create(t *testing.T, req api.CreateSessionRequest) api.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	s, err := r.mgr.Create(ctx, testOwner, req)
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	if s.State != api.StateRunning {
		t.Fatalf("created session %s is %s, want running", s.ID, s.State)
	}
	t.Logf("session %s running after %s (boot %d ms)", s.ID, time.Since(start).Round(time.Millisecond), s.BootMillis)
	return s
}

// result is how a command ended and what it wrote.
type result struct {
	stdout, stderr string
	status         api.ExitStatus
}

// run runs a command to its end, feeding it stdin (then EOF) while reading
// both output streams.
func (r *rig) run(t testing.TB, id string, req api.ExecRequest, stdin []byte) result {
	t.Helper()
	res, err := runCmd(r.mgr, id, req, stdin)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return res
}

// sh runs a shell script and fails the test unless it exits 0.
func (r *rig) sh(t testing.TB, id, script string) string {
	t.Helper()
	res := r.run(t, id, api.ExecRequest{Argv: []string{"sh", "-c", script}}, nil)
	if res.status.Code != 0 || res.status.Signal != "" {
		t.Fatalf("sh -c %q: exit %+v; stdout %q; stderr %q", script, res.status, res.stdout, res.stderr)
	}
	return res.stdout
}

// runCmd is run for use off the test goroutine.
func runCmd(m *session.Manager, id string, req api.ExecRequest, stdin []byte) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := m.Exec(ctx, id, req)
	if err != nil {
		return result{}, err
	}
	go func() {
		if len(stdin) > 0 {
			if _, err := p.Stdin().Write(stdin); err != nil {
				return
			}
		}
		p.Stdin().Close()
	}()
	var out, errb bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := io.Copy(&errb, p.Stderr()); done <- err }()
	_, oerr := io.Copy(&out, p.Stdout())
	eerr := <-done
	st, err := p.Wait()
	if err != nil {
		return result{}, err
	}
	if oerr != nil || eerr != nil {
		return result{}, fmt.Errorf("read output: %v, %v", oerr, eerr)
	}
	return result{stdout: out.String(), stderr: errb.String(), status: st}, nil
}

// wantCode fails the test unless err is an *api.Error with the given code.
func wantCode(t testing.TB, what string, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, code)
	}
	if got := api.CodeOf(err); got != code {
		t.Fatalf("%s: error %q has code %s, want %s", what, err, got, code)
	}
}

// sessionEntries lists what dir holds besides the spares' and the clone
// files' directories.
func sessionEntries(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != ".spares" && e.Name() != ".clone-files" {
			out = append(out, e.Name())
		}
	}
	return out
}

// qemuPID returns the PID of the QEMU process of session id under dir.
func qemuPID(t testing.TB, dir, id string) int {
	t.Helper()
	if pid := qemu.PIDOf(dir, id); pid != 0 {
		return pid
	}
	t.Fatalf("no QEMU process for session %s under %s", id, dir)
	return 0
}

// assertNoQEMU fails the test if a QEMU process under dir outlives it,
// and kills it so that it does not outlive the test binary either.
func assertNoQEMU(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs := vmtest.QEMUProcs(dir)
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for pid, cmd := range procs {
				t.Errorf("QEMU process %d left running: %.200s", pid, cmd)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond until it holds or limit passes.
func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
