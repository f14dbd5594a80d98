package apiserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// The tests over fakeSessions check what the server does with what a
// Sessions returns; the conflicts (409) those answer are the fake's own.
// Here the server stands in front of the real session manager, as cove
// server wires it, over the in-process fake VMM driver and a real SQLite
// store: the conflicts are the manager's, so a change of their code (the
// status a client sees) or of what the server makes of them shows here.
// The same answers through the cove binary and QEMU guests are for the
// end-to-end test (cmd/cove).

// emptyImages gives the manager one image, "tiny", whose files are empty:
// the fake driver's guests read none of them (qemu-img overlays the root).
type emptyImages struct{ dir string }

func (f emptyImages) Get(_ context.Context, name string) (image.Image, error) {
	if name != "tiny" {
		return image.Image{}, api.Errorf(api.CodeInvalid, "unknown image %q (known: tiny)", name)
	}
	return image.Image{Manifest: image.Manifest{Name: name}, RootFS: filepath.Join(f.dir, "rootfs.raw")}, nil
}

func (f emptyImages) Kernel(context.Context, func(string)) (image.Kernel, error) {
	return image.Kernel{Version: "fake", Vmlinux: filepath.Join(f.dir, "vmlinux")}, nil
}

func (f emptyImages) Initramfs(image.Kernel) (string, error) {
	return filepath.Join(f.dir, "initrd"), nil
}

// newFakeManager starts the real session manager, as cove server wires it,
// over the fake driver and a real SQLite store in the test's temporary
// folders; adjust, when not nil, changes the config first (hooks, a token
// minter). At cleanup it deletes every session and template the test left,
// stops the manager, closes the store and fails the test if a fake VM is
// still running.
func newFakeManager(t *testing.T, adjust func(*session.Config)) (*session.Manager, *sqlite.Store, *fake.Driver) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Skipf(t, "qemu-img not found (install qemu-utils): the manager makes each session's disk overlay with it")
	}
	imgDir := t.TempDir()
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(imgDir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	driver := fake.New()
	dir := t.TempDir()
	cfg := session.Config{Store: st, Driver: driver, Images: emptyImages{imgDir}, Dir: dir,
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if adjust != nil {
		adjust(&cfg)
	}
	mgr, err := session.New(cfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := mgr.Recover(ctx); err != nil {
		t.Fatalf("recover: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := mgr.List(ctx); err == nil {
			for _, s := range ss {
				if err := mgr.Delete(ctx, s.ID); err != nil {
					t.Errorf("cleanup: delete %s: %v", s.ID, err)
				}
			}
		}
		if ts, err := mgr.ListTemplates(ctx); err == nil {
			for _, tp := range ts {
				if err := mgr.DeleteTemplate(ctx, tp.Name); err != nil {
					t.Errorf("cleanup: delete template %s: %v", tp.Name, err)
				}
			}
		}
		mgr.StopAll(ctx)
		st.Close()
		if ids := driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	return mgr, st, driver
}

// newManagerEnv serves the real session manager over the fake driver.
func newManagerEnv(t *testing.T) (*testEnv, *session.Manager, *fake.Driver) {
	t.Helper()
	metrics := NewMetrics() // wired as cove server wires it
	mgr, st, driver := newFakeManager(t, func(c *session.Config) {
		c.OnEvent = session.ObserveDurations(metrics.ObservePark, metrics.ObserveWake)
	})
	e := &testEnv{t: t, images: &fakeImages{}, logs: &logSink{}}
	cfg := Config{Sessions: mgr, Images: e.images, Token: testToken, Metrics: metrics,
		Log: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	e.admin = withIdentities(&cfg, st)
	e.server = New(cfg)
	e.srv = httptest.NewServer(e.server.Handler())
	t.Cleanup(e.srv.Close)
	return e, mgr, driver
}

// wantManagerConflict checks that the server answered 409 conflict with
// the manager's own message for the same call (err, made directly), and
// that the message names what it is about.
func wantManagerConflict(t *testing.T, got api.ErrorBody, direct error, names ...string) {
	t.Helper()
	if !api.IsCode(direct, api.CodeConflict) {
		t.Fatalf("the manager answers the same call with %v, not a conflict", direct)
	}
	if got.Message != direct.Error() {
		t.Errorf("message %q, want the manager's %q", got.Message, direct.Error())
	}
	for _, n := range names {
		if !strings.Contains(got.Message, n) {
			t.Errorf("message %q does not name %q", got.Message, n)
		}
	}
}

// TestManagerConflicts: each state the README answers 409 for, made by the
// manager and answered through the server: park and wake of a failed
// session, a command in a parked session that does not wake by itself, a
// template name in use, a template with a live clone.
func TestManagerConflicts(t *testing.T) {
	e, mgr, driver := newManagerEnv(t)
	ctx := context.Background()

	t.Run("park and wake a failed session", func(t *testing.T) {
		e := e.with(t)
		driver.FailNext(fake.OpBoot, errors.New("no memory"))
		if resp := e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}); resp.StatusCode/100 == 2 {
			t.Fatalf("create with a failing boot answered %d", resp.StatusCode)
		}
		var failed string
		for _, s := range decode[sessionList](t, e.do("GET", "/v1/sessions", nil), 200).Sessions {
			if s.State == api.StateFailed {
				failed = s.ID
			}
		}
		if failed == "" {
			t.Fatal("no failed session after a failed boot")
		}
		got := wantError(t, e.do("POST", "/v1/sessions/"+failed+"/park", nil), 409, api.CodeConflict)
		_, direct := mgr.Park(ctx, failed)
		wantManagerConflict(t, got, direct, failed, api.StateFailed)
		got = wantError(t, e.do("POST", "/v1/sessions/"+failed+"/wake", nil), 409, api.CodeConflict)
		_, direct = mgr.Wake(ctx, failed)
		wantManagerConflict(t, got, direct, failed, api.StateFailed)
	})

	t.Run("exec in a parked session without auto-wake", func(t *testing.T) {
		e := e.with(t)
		s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{NoAutoWake: true}), 201)
		if p := decode[api.Session](t, e.do("POST", "/v1/sessions/"+s.ID+"/park", nil), 200); p.State != api.StateParked {
			t.Fatalf("park: %+v", p)
		}
		x := api.ExecRequest{Argv: []string{"true"}}
		got := wantError(t, e.doJSON("POST", "/v1/sessions/"+s.ID+"/exec", x), 409, api.CodeConflict)
		_, direct := mgr.Exec(ctx, s.ID, x)
		wantManagerConflict(t, got, direct, s.ID, api.StateParked)
		// The refusal woke nothing.
		if g := decode[api.Session](t, e.do("GET", "/v1/sessions/"+s.ID, nil), 200); g.State != api.StateParked {
			t.Errorf("after the refused exec the session is %s, want parked", g.State)
		}
	})

	t.Run("templates", func(t *testing.T) {
		e := e.with(t)
		req := api.CreateTemplateRequest{Name: "py"}
		decode[api.Template](t, e.doJSON("POST", "/v1/templates", req), 201)
		got := wantError(t, e.doJSON("POST", "/v1/templates", req), 409, api.CodeConflict)
		_, direct := mgr.CreateTemplate(ctx, "", req)
		wantManagerConflict(t, got, direct, `"py"`)

		clone := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{Template: "py"}), 201)
		got = wantError(t, e.do("DELETE", "/v1/templates/py", nil), 409, api.CodeConflict)
		wantManagerConflict(t, got, mgr.DeleteTemplate(ctx, "py"), `"py"`, clone.ID)
		if resp := e.do("DELETE", "/v1/sessions/"+clone.ID, nil); resp.StatusCode != 204 {
			t.Fatalf("delete clone: %d", resp.StatusCode)
		}
		if resp := e.do("DELETE", "/v1/templates/py", nil); resp.StatusCode != 204 {
			t.Fatalf("delete template once its clone is gone: %d", resp.StatusCode)
		}
	})
}

// TestManagerCheckpoints: the checkpoint, rollback and fork routes in
// front of the real manager: what each answers, and the errors a client
// gets for bad input (a bad or used name, a parked session, an unknown
// checkpoint, a fork beyond 16), each changing nothing.
func TestManagerCheckpoints(t *testing.T) {
	e, _, _ := newManagerEnv(t)
	s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 201)
	base := "/v1/sessions/" + s.ID
	c := decode[api.Checkpoint](t, e.doJSON("POST", base+"/checkpoints", api.CheckpointRequest{Name: "one"}), 201)
	if c.Name != "one" || c.Session != s.ID {
		t.Fatalf("checkpoint: %+v", c)
	}
	wantError(t, e.doJSON("POST", base+"/checkpoints", api.CheckpointRequest{Name: "one"}), 409, api.CodeConflict)
	wantError(t, e.doJSON("POST", base+"/checkpoints", api.CheckpointRequest{Name: "Bad Name"}), 400, api.CodeInvalid)
	wantError(t, e.doJSON("POST", "/v1/sessions/s-none/checkpoints", api.CheckpointRequest{}), 404, api.CodeNotFound)
	wantError(t, e.doJSON("POST", base+"/rollback", api.RollbackRequest{Checkpoint: "two"}), 404, api.CodeNotFound)
	wantError(t, e.doJSON("POST", base+"/rollback", api.RollbackRequest{}), 400, api.CodeInvalid)
	wantError(t, e.do("GET", base+"/checkpoints/two", nil), 404, api.CodeNotFound)
	wantError(t, e.doJSON("POST", base+"/fork", api.ForkRequest{N: 17}), 400, api.CodeInvalid)
	if list := decode[[]api.Checkpoint](t, e.do("GET", base+"/checkpoints", nil), 200); len(list) != 1 || list[0].Name != "one" {
		t.Fatalf("checkpoints: %+v", list)
	}
	if got := decode[api.Session](t, e.doJSON("POST", base+"/rollback", api.RollbackRequest{Checkpoint: "one"}), 200); got.ID != s.ID || got.State != api.StateRunning {
		t.Fatalf("rollback: %+v", got)
	}
	tp := decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "from-one", FromCheckpoint: s.ID + ":one"}), 201)
	if tp.State != api.TemplateReady || tp.Image != s.Image {
		t.Fatalf("template from a checkpoint: %+v", tp)
	}
	wantError(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "from-two", FromCheckpoint: s.ID + ":two"}), 404, api.CodeNotFound)
	wantError(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "from-x", FromCheckpoint: s.ID + ":one", Setup: []string{"true"}}), 400, api.CodeInvalid)
	if resp := e.do("DELETE", "/v1/templates/from-one", nil); resp.StatusCode != 204 {
		t.Fatalf("delete template: %d", resp.StatusCode)
	}
	forks := decode[api.ForkResponse](t, e.doJSON("POST", base+"/fork", api.ForkRequest{N: 2, From: "one"}), 201)
	if len(forks.Sessions) != 2 || forks.Sessions[0].Parent != s.ID || forks.Sessions[1].FromCheckpoint != "one" {
		t.Fatalf("fork: %+v", forks)
	}
	if resp := e.do("POST", base+"/park", nil); resp.StatusCode != 200 {
		t.Fatalf("park: %d", resp.StatusCode)
	}
	got := wantError(t, e.doJSON("POST", base+"/checkpoints", api.CheckpointRequest{}), 409, api.CodeConflict)
	if !strings.Contains(got.Message, "parked: wake it first") {
		t.Errorf("checkpoint of a parked session: %q", got.Message)
	}
	if resp := e.do("DELETE", base+"/checkpoints/one", nil); resp.StatusCode != 204 {
		t.Fatalf("rm checkpoint: %d", resp.StatusCode)
	}
	wantError(t, e.do("DELETE", base+"/checkpoints/one", nil), 404, api.CodeNotFound)
	for _, f := range append(forks.Sessions, s) {
		if resp := e.do("DELETE", "/v1/sessions/"+f.ID, nil); resp.StatusCode != 204 {
			t.Fatalf("delete %s: %d", f.ID, resp.StatusCode)
		}
	}
}
