package e2b_test

// Snapshots and forks through the E2B control plane in front of the real
// session manager, as cove server wires it, over the in-process fake VMM
// driver, a real SQLite store, real users and API tokens and the default
// policy: the statuses the SDK branches on, per-fork results, owners, and
// bad input that changes nothing. The SDK itself against real VMs is
// cmd/cove's TestE2BSDK.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/e2b"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// emptyImages gives the manager one image, "tiny", whose files are empty:
// the fake driver's guests read none of them.
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

type fakeEnv struct {
	t      *testing.T
	url    string
	mgr    *session.Manager
	driver *fake.Driver
	e2b    *e2b.Server
	st     *sqlite.Store
	alice  string // API keys
	bob    string
}

func newFakeEnv(t *testing.T) *fakeEnv {
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr, err := session.New(session.Config{Store: st, Driver: driver, Images: emptyImages{imgDir}, Dir: dir,
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64, Log: log})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := mgr.Recover(ctx); err != nil {
		t.Fatalf("recover: %v", err)
	}
	dirs := &identity.Directory{Store: st}
	keys := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		if _, err := dirs.AddUser(ctx, api.CreateUserRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		tok, err := dirs.CreateToken(ctx, api.CreateTokenRequest{Name: "e2b", User: name})
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = tok.Secret
	}
	srv, err := e2b.New(e2b.Config{Sessions: mgr, Records: st, Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st}),
		Authorize: (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize, // as cove server wires it
		Key:       bytes.Repeat([]byte{7}, 32), BaseImage: "tiny", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := mgr.List(ctx); err == nil {
			for _, s := range ss {
				if err := mgr.Delete(ctx, s.ID); err != nil {
					t.Errorf("cleanup: delete %s: %v", s.ID, err)
				}
			}
		}
		mgr.StopAll(ctx)
		st.Close()
		if ids := driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	return &fakeEnv{t: t, url: hs.URL, mgr: mgr, driver: driver, e2b: srv, st: st, alice: keys["alice"], bob: keys["bob"]}
}

// call makes one control-plane request with key and returns the status
// and the body.
func (e *fakeEnv) call(key, method, path, body string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("X-API-KEY", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// ok makes a call that must answer status, and decodes its body into v.
func (e *fakeEnv) ok(v any, status int, key, method, path, body string) http.Header {
	e.t.Helper()
	got, hdr, b := e.call(key, method, path, body)
	if got != status {
		e.t.Fatalf("%s %s: %d %s, want %d", method, path, got, b, status)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			e.t.Fatalf("%s %s: %s: %v", method, path, b, err)
		}
	}
	return hdr
}

// refused makes a call that must answer status with the E2B error body
// {code: status, message}.
func (e *fakeEnv) refused(what string, status int, key, method, path, body string) {
	e.t.Helper()
	got, _, b := e.call(key, method, path, body)
	var eb struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(b, &eb); err != nil || got != status || eb.Code != status || eb.Message == "" {
		e.t.Errorf("%s: %d %s, want %d with {code: %d, message}", what, got, b, status, status)
	}
}

type sandboxAnswer struct {
	SandboxID       string `json:"sandboxID"`
	TemplateID      string `json:"templateID"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

type snapshotAnswer struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

type forkAnswer struct {
	Sandbox *sandboxAnswer `json:"sandbox"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (e *fakeEnv) snapshots(key, query string) []string {
	e.t.Helper()
	var list []snapshotAnswer
	e.ok(&list, http.StatusOK, key, "GET", "/snapshots"+query, "")
	var ids []string
	for _, s := range list {
		ids = append(ids, s.SnapshotID)
	}
	return ids
}

type sandboxInfo struct {
	TemplateID string            `json:"templateID"`
	Metadata   map[string]string `json:"metadata"`
	State      string            `json:"state"`
}

// info is alice's GET /sandboxes/{id}.
func (e *fakeEnv) info(id string) sandboxInfo {
	e.t.Helper()
	var info sandboxInfo
	e.ok(&info, http.StatusOK, e.alice, "GET", "/sandboxes/"+id, "")
	return info
}

func (e *fakeEnv) sessionIDs() []string {
	e.t.Helper()
	ss, err := e.mgr.List(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, s := range ss {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

func TestFakeSnapshotsAndForks(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600,"metadata":{"k":"v"}}`)

	// createSnapshot: a checkpoint, SESSION:NAME, and the sandbox runs on.
	var snap snapshotAnswer
	e.ok(&snap, http.StatusCreated, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/snapshots", `{}`)
	if snap.SnapshotID != sbx.SandboxID+":ckpt-1" || !slices.Equal(snap.Names, []string{snap.SnapshotID}) {
		t.Fatalf("createSnapshot: %+v", snap)
	}
	var named snapshotAnswer
	e.ok(&named, http.StatusCreated, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/snapshots", `{"name":"named"}`)
	if named.SnapshotID != sbx.SandboxID+":named" {
		t.Fatalf("createSnapshot named: %+v", named)
	}
	if s, err := e.mgr.Get(context.Background(), sbx.SandboxID); err != nil || s.State != api.StateRunning {
		t.Fatalf("after the snapshots: %+v, %v; want running", s, err)
	}

	// listSnapshots: newest first, pages by X-Next-Token, filters.
	if got := e.snapshots(e.alice, ""); !slices.Equal(got, []string{named.SnapshotID, snap.SnapshotID}) {
		t.Errorf("listSnapshots = %v", got)
	}
	var page []snapshotAnswer
	hdr := e.ok(&page, http.StatusOK, e.alice, "GET", "/snapshots?limit=1", "")
	if len(page) != 1 || page[0].SnapshotID != named.SnapshotID || hdr.Get("X-Next-Token") != snap.SnapshotID {
		t.Errorf("first page: %+v, next %q", page, hdr.Get("X-Next-Token"))
	}
	hdr = e.ok(&page, http.StatusOK, e.alice, "GET", "/snapshots?limit=1&nextToken="+snap.SnapshotID, "")
	if len(page) != 1 || page[0].SnapshotID != snap.SnapshotID || hdr.Get("X-Next-Token") != "" {
		t.Errorf("second page: %+v, next %q", page, hdr.Get("X-Next-Token"))
	}
	if got := e.snapshots(e.alice, "?name=named"); !slices.Equal(got, []string{named.SnapshotID}) {
		t.Errorf("listSnapshots by name = %v", got)
	}
	if got := e.snapshots(e.alice, "?sandboxID=s-nosuch"); len(got) != 0 {
		t.Errorf("listSnapshots of an unknown sandbox = %v", got)
	}

	// Another user sees none of them and can do nothing with them.
	if got := e.snapshots(e.bob, ""); len(got) != 0 {
		t.Errorf("bob's listSnapshots = %v", got)
	}
	before := e.sessionIDs()
	e.refused("bob's snapshot of alice's sandbox", http.StatusForbidden, e.bob, "POST", "/sandboxes/"+sbx.SandboxID+"/snapshots", `{}`)
	e.refused("bob's fork of alice's sandbox", http.StatusForbidden, e.bob, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{}`)
	e.refused("bob's create from alice's snapshot", http.StatusForbidden, e.bob, "POST", "/v2/sandboxes", `{"templateID":"`+snap.SnapshotID+`"}`)
	e.refused("bob's delete of alice's snapshot", http.StatusForbidden, e.bob, "DELETE", "/templates/"+snap.SnapshotID, "")

	// Bad input.
	for name, c := range map[string]struct {
		status             int
		method, path, body string
	}{
		"snapshot of an unknown sandbox":   {404, "POST", "/sandboxes/s-nosuch/snapshots", `{}`},
		"fork of an unknown sandbox":       {404, "POST", "/sandboxes/s-nosuch/fork", `{}`},
		"create from an unknown sandbox":   {404, "POST", "/v2/sandboxes", `{"templateID":"s-nosuch:ckpt-1"}`},
		"create from a missing checkpoint": {404, "POST", "/v2/sandboxes", `{"templateID":"` + sbx.SandboxID + `:nope"}`},
		"create from a bare colon":         {404, "POST", "/v2/sandboxes", `{"templateID":":"}`},
		"delete of a missing checkpoint":   {404, "DELETE", "/templates/" + sbx.SandboxID + ":nope", ""},
		"delete of a template name":        {404, "DELETE", "/templates/base", ""},
		"a taken snapshot name":            {409, "POST", "/sandboxes/" + sbx.SandboxID + "/snapshots", `{"name":"named"}`},
		"a bad snapshot name":              {400, "POST", "/sandboxes/" + sbx.SandboxID + "/snapshots", `{"name":"Not A Name"}`},
		"snapshot with broken JSON":        {400, "POST", "/sandboxes/" + sbx.SandboxID + "/snapshots", `{"name":`},
		"snapshot with an oversized body":  {400, "POST", "/sandboxes/" + sbx.SandboxID + "/snapshots", `{"name":"` + strings.Repeat("x", 1<<20) + `"}`},
		"fork with broken JSON":            {400, "POST", "/sandboxes/" + sbx.SandboxID + "/fork", `[`},
		"fork of no sandboxes":             {400, "POST", "/sandboxes/" + sbx.SandboxID + "/fork", `{"count":0}`},
		"fork of too many":                 {400, "POST", "/sandboxes/" + sbx.SandboxID + "/fork", `{"count":17}`},
		"fork with a negative timeout":     {400, "POST", "/sandboxes/" + sbx.SandboxID + "/fork", `{"timeout":-5}`},
		"list with a bad limit":            {400, "GET", "/snapshots?limit=x", ""},
	} {
		e.refused(name, c.status, e.alice, c.method, c.path, c.body)
	}
	if after := e.sessionIDs(); !slices.Equal(before, after) {
		t.Errorf("refused requests changed the sessions: %v, then %v", before, after)
	}
	if got := e.snapshots(e.alice, ""); len(got) != 2 {
		t.Errorf("refused requests changed the snapshots: %v", got)
	}

	// Create from a snapshot: a fork from that checkpoint, with the
	// create's own metadata, its own token, and the snapshot as template.
	var from sandboxAnswer
	e.ok(&from, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"`+snap.SnapshotID+`","timeout":60,"metadata":{"from":"snap"}}`)
	if from.SandboxID == sbx.SandboxID || from.TemplateID != snap.SnapshotID || from.EnvdAccessToken != e.e2b.AccessToken(from.SandboxID) {
		t.Errorf("create from a snapshot: %+v", from)
	}
	info := e.info(from.SandboxID)
	if info.TemplateID != snap.SnapshotID || info.Metadata["from"] != "snap" || info.State != "running" {
		t.Errorf("the sandbox from a snapshot: %+v", info)
	}
	if s, err := e.mgr.Get(context.Background(), from.SandboxID); err != nil || s.Parent != sbx.SandboxID || s.FromCheckpoint != "ckpt-1" {
		t.Errorf("its session: %+v, %v; want a fork of %s from ckpt-1", s, err, sbx.SandboxID)
	}

	// Fork: count sandboxes, each with its entry; the checkpoint taken
	// for them is not left as a snapshot.
	var forks []forkAnswer
	e.ok(&forks, http.StatusCreated, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{"count":2,"timeout":60}`)
	if len(forks) != 2 {
		t.Fatalf("fork of 2: %+v", forks)
	}
	for _, f := range forks {
		if f.Sandbox == nil || f.Error != nil || f.Sandbox.EnvdAccessToken != e.e2b.AccessToken(f.Sandbox.SandboxID) || f.Sandbox.TemplateID != "base" {
			t.Fatalf("a fork: %+v", f)
		}
		info := e.info(f.Sandbox.SandboxID)
		if info.Metadata["k"] != "v" || info.State != "running" {
			t.Errorf("fork %s: %+v, want the parent's metadata, running", f.Sandbox.SandboxID, info)
		}
	}
	if forks[0].Sandbox.SandboxID == forks[1].Sandbox.SandboxID {
		t.Errorf("two forks with one id: %+v", forks)
	}
	if got := e.snapshots(e.alice, "?sandboxID="+sbx.SandboxID); len(got) != 2 {
		t.Errorf("snapshots after the fork: %v, want the two made before", got)
	}

	// Each fork fails or succeeds on its own: one restore fails, the
	// other fork runs.
	e.driver.FailNext(fake.OpRestore, errors.New("no memory"))
	forks = nil
	e.ok(&forks, http.StatusCreated, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{"count":2}`)
	var good, bad int
	for _, f := range forks {
		switch {
		case f.Sandbox != nil && f.Error == nil:
			good++
		case f.Sandbox == nil && f.Error != nil && f.Error.Code >= 500 && f.Error.Message != "":
			bad++
		}
	}
	if good != 1 || bad != 1 {
		t.Errorf("fork of 2 with one failed restore: %+v; want one sandbox and one error", forks)
	}

	// A paused sandbox is neither snapshotted nor forked.
	e.ok(nil, http.StatusNoContent, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	e.refused("snapshot of a paused sandbox", http.StatusConflict, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/snapshots", `{}`)
	e.refused("fork of a paused sandbox", http.StatusConflict, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{}`)
	// Its snapshots still make sandboxes.
	var fromPaused sandboxAnswer
	e.ok(&fromPaused, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"`+named.SnapshotID+`"}`)
	if info := e.info(fromPaused.SandboxID); info.State != "running" || info.TemplateID != named.SnapshotID {
		t.Errorf("a sandbox from a paused sandbox's snapshot: %+v", info)
	}

	// deleteSnapshot: 204, then 404 (the SDK's false).
	e.ok(nil, http.StatusNoContent, e.alice, "DELETE", "/templates/"+named.SnapshotID, "")
	e.refused("a second delete", http.StatusNotFound, e.alice, "DELETE", "/templates/"+named.SnapshotID, "")
	if got := e.snapshots(e.alice, ""); !slices.Equal(got, []string{snap.SnapshotID}) {
		t.Errorf("after the delete: %v", got)
	}

	// A snapshot outlives its sandbox (kept as a template, under the
	// same id), and so do its forks.
	e.ok(nil, http.StatusNoContent, e.alice, "DELETE", "/sandboxes/"+sbx.SandboxID, "")
	if got := e.snapshots(e.alice, ""); !slices.Equal(got, []string{snap.SnapshotID}) {
		t.Errorf("snapshots after the kill: %v, want %s kept", got, snap.SnapshotID)
	}
	if got := e.snapshots(e.alice, "?sandboxID="+sbx.SandboxID); !slices.Equal(got, []string{snap.SnapshotID}) {
		t.Errorf("the killed sandbox's snapshots: %v, want %s kept", got, snap.SnapshotID)
	}
	if got := e.snapshots(e.bob, ""); len(got) != 0 {
		t.Errorf("bob sees alice's kept snapshots: %v", got)
	}
	if info := e.info(from.SandboxID); info.State != "running" {
		t.Errorf("the sandbox from a snapshot after its parent's kill: %+v", info)
	}
	e.refused("the killed sandbox", http.StatusNotFound, e.alice, "GET", "/sandboxes/"+sbx.SandboxID, "")
	var fromKept sandboxAnswer
	e.ok(&fromKept, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"`+snap.SnapshotID+`","metadata":{"from":"kept"}}`)
	if info := e.info(fromKept.SandboxID); info.State != "running" || info.TemplateID != snap.SnapshotID {
		t.Errorf("a sandbox from a kept snapshot: %+v", info)
	}
	e.refused("bob's create from alice's kept snapshot", http.StatusForbidden, e.bob, "POST", "/v2/sandboxes", `{"templateID":"`+snap.SnapshotID+`"}`)
	e.refused("bob's delete of alice's kept snapshot", http.StatusForbidden, e.bob, "DELETE", "/templates/"+snap.SnapshotID, "")
	// Deleted once no sandbox is made from it any more (409 before).
	e.refused("delete of a kept snapshot with a sandbox from it", http.StatusConflict, e.alice, "DELETE", "/templates/"+snap.SnapshotID, "")
	e.ok(nil, http.StatusNoContent, e.alice, "DELETE", "/sandboxes/"+fromKept.SandboxID, "")
	e.ok(nil, http.StatusNoContent, e.alice, "DELETE", "/templates/"+snap.SnapshotID, "")
	e.refused("a second delete of the kept snapshot", http.StatusNotFound, e.alice, "DELETE", "/templates/"+snap.SnapshotID, "")
	if got := e.snapshots(e.alice, ""); len(got) != 0 {
		t.Errorf("snapshots after the kept one's delete: %v", got)
	}
}

// The end-time sweep reads only the sandboxes due: a sandbox past its end
// time is removed, or paused with autoPause, and then is due no more; a
// connect gives it an end time, and so a due time, again.
func TestFakeEndTimeSweepReadsOnlyWhatIsDue(t *testing.T) {
	e := newFakeEnv(t)
	ctx := t.Context()
	var ends, pauses, stays struct {
		SandboxID string `json:"sandboxID"`
	}
	e.ok(&ends, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":1}`)
	e.ok(&pauses, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":1,"autoPause":true}`)
	e.ok(&stays, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":3600}`)
	x, err := e.st.GetE2BSandbox(ctx, stays.SandboxID)
	if err != nil || x.DueAt.IsZero() {
		t.Fatalf("a running sandbox's record: %+v, %v; want due at its end time", x, err)
	}
	go e.e2b.Run(ctx, 50*time.Millisecond)
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := e.mgr.Get(ctx, ends.SandboxID)
		p, perr := e.mgr.Get(ctx, pauses.SandboxID)
		if api.IsCode(err, api.CodeNotFound) && perr == nil && p.State == api.StateParked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after their end time: %v; paused sandbox %s (%v)", err, p.State, perr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Nothing is due any more before the third's end time: the paused
	// one is not looked at again. The sweep records that just after the
	// park the loop above saw, so it is waited for.
	var due []store.E2BSandbox
	for {
		due, err = e.st.DueE2BSandboxes(ctx, time.Now().Add(30*time.Minute), 10)
		if err == nil && len(due) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("due after the sweep: %+v, %v; want none", due, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A connect resumes it with a new end time: due again.
	e.ok(nil, http.StatusCreated, e.alice, "POST", "/v2/sandboxes/"+pauses.SandboxID+"/connect", `{"timeout":600}`)
	due, err = e.st.DueE2BSandboxes(ctx, time.Now().Add(30*time.Minute), 10)
	if err != nil || len(due) != 1 || due[0].SessionID != pauses.SandboxID {
		t.Fatalf("due after the connect: %+v, %v; want the resumed sandbox", due, err)
	}
	if s, err := e.mgr.Get(ctx, stays.SandboxID); err != nil || s.State != api.StateRunning {
		t.Fatalf("the sandbox not yet at its end time: %+v, %v", s, err)
	}
}
