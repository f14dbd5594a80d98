package e2b_test

// Routing of the E2B API between servers (issue 19): two cove servers,
// each with an embedded node and an E2B API, over one store and the fake
// VMM driver, through the E2B HTTP API. Each server signs access tokens
// with its own key (as each cove server has its own e2b.key), so envd
// calls through the other server work only if the holder checks them.

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/e2b"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

type routeE2B struct {
	name string
	node string
	st   *sqlite.Store
	mgr  *session.Manager
	env  *fakeEnv // its E2B API, as newFakeEnv's
}

var routeCapacity = store.NodeCapacity{VCPUs: 64, MemoryMiB: 64 << 10, DiskBytes: 1 << 40, Accel: "tcg"}

// twoE2BServers starts servers a and b over one store; alice's API key
// works on both.
func twoE2BServers(t *testing.T) (a, b *routeE2B) {
	t.Helper()
	r := newE2BRig(t)
	return r.server("a", 1), r.server("b", 2)
}

// e2bRig is the store, object store, images and fake driver that
// in-process cove servers (and nodes) share.
type e2bRig struct {
	t       *testing.T
	db      string
	imgDir  string
	driver  *fake.Driver
	objects session.SnapshotStore
	alice   string
}

// newE2BRig makes a rig and alice's API key.
func newE2BRig(t *testing.T) *e2bRig {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Skipf(t, "qemu-img not found (install qemu-utils): the manager makes each session's disk overlay with it")
	}
	r := &e2bRig{t: t, imgDir: t.TempDir(), db: filepath.Join(t.TempDir(), "state.db"), driver: fake.New()}
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(r.imgDir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := objstore.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if r.objects, err = cas.New(cas.Config{Objects: objs}); err != nil { // one, shared: a drained node's sandboxes move
		t.Fatal(err)
	}
	ctx := context.Background()
	st := r.open()
	dirs := &identity.Directory{Store: st}
	if _, err := dirs.AddUser(ctx, api.CreateUserRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	tok, err := dirs.CreateToken(ctx, api.CreateTokenRequest{Name: "e2b", User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	r.alice = tok.Secret
	t.Cleanup(func() { // after the servers' cleanups
		if ids := r.driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	return r
}

// open opens the rig's store, closed when the test ends.
func (r *e2bRig) open() *sqlite.Store {
	st, err := sqlite.Open(context.Background(), r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { st.Close() })
	return st
}

// swappable is an httptest server whose handler is set once made.
func (r *e2bRig) swappable() (*httptest.Server, func(http.Handler)) {
	var h http.Handler = http.NotFoundHandler()
	var hmu sync.RWMutex
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hmu.RLock()
		h := h
		hmu.RUnlock()
		h.ServeHTTP(w, req)
	}))
	r.t.Cleanup(hs.Close)
	return hs, func(next http.Handler) {
		hmu.Lock()
		h = next
		hmu.Unlock()
	}
}

// e2bServer is the E2B API of a server or node: mgr's, over st, signing
// with a key of key's bytes, routed by the E2B router of node ("" for
// none), relaying over links if set.
func (r *e2bRig) e2bServer(name string, key byte, st *sqlite.Store, mgr *session.Manager, node string, links e2b.Links) *e2b.Server {
	t := r.t
	srv, err := e2b.New(e2b.Config{Sessions: mgr, Records: st, Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st}),
		Authorize: (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize,
		Key:       bytes.Repeat([]byte{key}, 32), BaseImage: "tiny", ServerID: name, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Router: routing.NewE2B(st, node), Links: links})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if node != "" {
			if ss, err := mgr.List(ctx); err == nil {
				for _, x := range ss {
					if x.Node == node {
						if err := mgr.Delete(ctx, x.ID); err != nil {
							t.Errorf("cleanup: delete %s on %s: %v", x.ID, name, err)
						}
					}
				}
			}
		}
		mgr.StopAll(ctx)
	})
	return srv
}

// manager is a session manager of the rig's.
func (r *e2bRig) manager(cfg session.Config) *session.Manager {
	dir := r.t.TempDir()
	cfg.Driver, cfg.Images, cfg.Dir, cfg.TemplateDir = r.driver, emptyImages{r.imgDir}, dir, filepath.Join(dir, "templates")
	cfg.DefaultMemoryMiB, cfg.Objects, cfg.NodeGrace = 64, r.objects, time.Hour
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr, err := session.New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := mgr.Recover(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	return mgr
}

// server starts server name with its embedded node and its E2B API,
// whose access tokens it signs with a key of key's bytes.
func (r *e2bRig) server(name string, key byte) *routeE2B {
	t := r.t
	t.Helper()
	ctx := context.Background()
	st := r.open()
	s := &routeE2B{name: name, st: st}
	hs, set := r.swappable()
	n, err := session.RegisterEmbeddedNode(ctx, st, name, routeCapacity)
	if err != nil {
		t.Fatal(err)
	}
	// cove's own API is not served here: its URL only makes the node
	// a placement candidate.
	if err := session.AdvertiseNode(ctx, st, n.ID, "http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if err := session.AdvertiseNodeE2B(ctx, st, n.ID, hs.URL); err != nil {
		t.Fatal(err)
	}
	s.node = n.ID
	s.mgr = r.manager(session.Config{Store: st, Node: n.ID, Route: true, ServerID: name})
	srv := r.e2bServer(name, key, st, s.mgr, n.ID, nil)
	set(srv)
	s.env = &fakeEnv{t: t, url: hs.URL, mgr: s.mgr, driver: r.driver, e2b: srv, st: st, alice: r.alice}
	return s
}

// setAdmin cordons (store.NodeCordoned) or uncordons ("") s's node.
func (s *routeE2B) setAdmin(t *testing.T, admin string) {
	t.Helper()
	n, err := s.st.GetNode(context.Background(), s.node)
	if err != nil {
		t.Fatal(err)
	}
	n.Admin = admin
	if err := s.st.UpdateNode(context.Background(), &n); err != nil {
		t.Fatal(err)
	}
}

// nodeOf is the node that holds session id.
func nodeOf(t *testing.T, st store.Store, id string) string {
	t.Helper()
	rec, err := st.GetSession(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Node
}

// A create through A that placement puts on B lands on B; then every
// call through A (control plane and envd) is carried out by B: commands,
// files, get, pause through A and connect through B, kill through A.
func TestFakeRouteE2B(t *testing.T) {
	a, b := twoE2BServers(t)
	a.setAdmin(t, store.NodeCordoned)
	var sbx sandboxAnswer
	a.env.ok(&sbx, http.StatusCreated, a.env.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600,"metadata":{"via":"a"}}`)
	if got := nodeOf(t, a.st, sbx.SandboxID); got != b.node {
		t.Fatalf("the sandbox created through A is on node %q, want B's %q", got, b.node)
	}
	if sbx.EnvdAccessToken != b.env.e2b.AccessToken(sbx.SandboxID) {
		t.Fatal("the access token is not B's: the create was not carried out by B")
	}
	a.setAdmin(t, "")

	// envd through A: a command's output, and a file written and read.
	next := a.env.connectStream(context.Background(), sbx, "Start", `{"process":{"cmd":"echo","args":["routed"]}}`)
	var out []string
	for {
		end, m := next()
		out = append(out, m)
		if end || strings.Contains(m, `"end"`) {
			break
		}
	}
	if all := strings.Join(out, "\n"); !strings.Contains(all, `"stdout":"cm91dGVkCg=="`) { // "routed\n"
		t.Errorf("echo through A: %s; want stdout routed", all)
	}
	if st, body := a.env.envd(sbx, "POST", "/files?path=/tmp/x", "application/octet-stream", "through a"); st != http.StatusOK {
		t.Fatalf("write a file through A: %d %s", st, body)
	}
	if st, body := a.env.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "through a" {
		t.Fatalf("read the file through A: %d %q", st, body)
	}
	if st, body := b.env.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "through a" {
		t.Fatalf("read the file through B: %d %q", st, body)
	}
	// A wrong access token is refused, by the holder.
	bad := sbx
	bad.EnvdAccessToken = a.env.e2b.AccessToken(sbx.SandboxID)
	if st, body := a.env.envd(bad, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusUnauthorized {
		t.Errorf("A's token for B's sandbox through A: %d %s, want 401", st, body)
	}

	// The control plane through A.
	if info := a.env.info(sbx.SandboxID); info.State != "running" || info.Metadata["via"] != "a" {
		t.Errorf("get through A: %+v", info)
	}
	// Snapshots (checkpoints on B's node) through A: taken, a sandbox
	// made from one (a fork, on B), a fork, the snapshot deleted.
	var snap snapshotAnswer
	a.env.ok(&snap, http.StatusCreated, a.env.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/snapshots", `{"name":"routed"}`)
	var from sandboxAnswer
	a.env.ok(&from, http.StatusCreated, a.env.alice, "POST", "/v2/sandboxes", `{"templateID":"`+snap.SnapshotID+`","timeout":600}`)
	if got := nodeOf(t, a.st, from.SandboxID); got != b.node || from.EnvdAccessToken != b.env.e2b.AccessToken(from.SandboxID) {
		t.Errorf("the sandbox made from B's snapshot through A: on %q, want B's %q, with B's token", got, b.node)
	}
	var forks []forkAnswer
	a.env.ok(&forks, http.StatusCreated, a.env.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{"count":1,"timeout":600}`)
	if len(forks) != 1 || forks[0].Sandbox == nil || nodeOf(t, a.st, forks[0].Sandbox.SandboxID) != b.node {
		t.Errorf("fork through A: %+v; want one sandbox on B", forks)
	}
	a.env.ok(nil, http.StatusNoContent, a.env.alice, "DELETE", "/templates/"+snap.SnapshotID, "")
	if got := b.env.snapshots(b.env.alice, "?sandboxID="+sbx.SandboxID); len(got) != 0 {
		t.Errorf("snapshots after the delete through A: %v", got)
	}
	a.env.ok(nil, http.StatusNoContent, a.env.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	if info := b.env.info(sbx.SandboxID); info.State != "paused" {
		t.Errorf("after a pause through A, B says %q", info.State)
	}
	var again sandboxAnswer
	b.env.ok(&again, http.StatusCreated, b.env.alice, "POST", "/v2/sandboxes/"+sbx.SandboxID+"/connect", `{"timeout":600}`)
	if again.EnvdAccessToken != sbx.EnvdAccessToken {
		t.Error("connect through B: another access token")
	}
	if got := nodeOf(t, a.st, sbx.SandboxID); got != b.node {
		t.Errorf("after the resume the sandbox is on %q, want B's %q", got, b.node)
	}
	if st, body := a.env.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "through a" {
		t.Fatalf("read the file through A after pause and connect: %d %q", st, body)
	}
	a.env.ok(nil, http.StatusNoContent, a.env.alice, "DELETE", "/sandboxes/"+sbx.SandboxID, "")
	if _, err := a.st.GetSession(context.Background(), sbx.SandboxID); err == nil {
		t.Error("the sandbox killed through A is still recorded")
	}
	a.env.refused("get through A after the kill", http.StatusNotFound, a.env.alice, "GET", "/sandboxes/"+sbx.SandboxID, "")
}

// A call forwarded by one server reaches a server whose node does not
// hold the sandbox: it is refused (409), never forwarded again.
func TestFakeRouteE2BNoLoop(t *testing.T) {
	a, b := twoE2BServers(t)
	a.setAdmin(t, store.NodeCordoned)
	var sbx sandboxAnswer
	b.env.ok(&sbx, http.StatusCreated, b.env.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	if got := nodeOf(t, a.st, sbx.SandboxID); got != b.node {
		t.Fatalf("the sandbox is on node %q, want B's %q", got, b.node)
	}
	a.setAdmin(t, "")
	for _, c := range []struct{ what, method, path string }{
		{"get", "GET", "/sandboxes/" + sbx.SandboxID},
		{"envd", "GET", "/files?path=/etc/hostname"},
	} {
		req, err := http.NewRequest(c.method, a.env.url+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-API-KEY", a.env.alice)
		req.Header.Set(routing.Header, "node-elsewhere")
		if c.what == "envd" {
			req.Header.Set("E2b-Sandbox-Id", sbx.SandboxID)
			req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "not routed again") {
			t.Errorf("%s forwarded to A, which does not hold it: %d %s, want 409 not routed again", c.what, resp.StatusCode, body)
		}
	}
	// A create forwarded to A is placed on A's node, not forwarded on.
	b.setAdmin(t, store.NodeCordoned)
	a.setAdmin(t, store.NodeCordoned)
	req, err := http.NewRequest("POST", a.env.url+"/v2/sandboxes", strings.NewReader(`{"templateID":"base"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-KEY", a.env.alice)
	req.Header.Set(routing.Header, b.node)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a forwarded create with no node fitting: %d %s, want 503", resp.StatusCode, body)
	}
}

// The end-time sweep of each server ends only its own node's sandboxes:
// A's sweep leaves B's sandbox, past its end time, to B's, which ends it
// (A's session manager would remove the record and leave B's VM running).
func TestFakeRouteE2BEndTime(t *testing.T) {
	a, b := twoE2BServers(t)
	a.setAdmin(t, store.NodeCordoned)
	var sbx sandboxAnswer
	a.env.ok(&sbx, http.StatusCreated, a.env.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":1}`)
	if got := nodeOf(t, a.st, sbx.SandboxID); got != b.node {
		t.Fatalf("the sandbox is on node %q, want B's %q", got, b.node)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go a.env.e2b.Run(ctx, 20*time.Millisecond)
	// A's sweep sees the record due and leaves it: still due, still
	// running, once A has swept past the end time a few times.
	time.Sleep(1500 * time.Millisecond)
	if ss, err := b.mgr.Get(ctx, sbx.SandboxID); err != nil || ss.State != api.StateRunning {
		t.Fatalf("after A's sweeps: %+v, %v; want running (B's to end)", ss, err)
	}
	if due, err := a.st.DueE2BSandboxes(ctx, time.Now(), 10); err != nil || len(due) != 1 {
		t.Fatalf("due after A's sweeps: %+v, %v; want the sandbox still due", due, err)
	}
	go b.env.e2b.Run(ctx, 20*time.Millisecond)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		ss, err := b.mgr.Get(ctx, sbx.SandboxID)
		if api.IsCode(err, api.CodeNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after B's sweep started: %+v, %v; want it ended", ss, err)
		}
	}
}

// A paused sandbox of a draining node wakes on another node on its
// connect, through either server: node A drained (its sandbox paused and
// stored), a connect through A is carried out by B, which moves the
// sandbox to its node from the object store and answers B's access
// token; the sandbox's files are there, through A and through B.
func TestFakeRouteE2BDrain(t *testing.T) {
	a, b := twoE2BServers(t)
	b.setAdmin(t, store.NodeCordoned)
	var sbx sandboxAnswer
	a.env.ok(&sbx, http.StatusCreated, a.env.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	if got := nodeOf(t, a.st, sbx.SandboxID); got != a.node {
		t.Fatalf("the sandbox is on node %q, want A's %q", got, a.node)
	}
	if st, body := a.env.envd(sbx, "POST", "/files?path=/tmp/x", "application/octet-stream", "kept"); st != http.StatusOK {
		t.Fatalf("write a file: %d %s", st, body)
	}
	b.setAdmin(t, "")
	res, err := a.mgr.DrainNode(context.Background(), a.node)
	if err != nil || res.Parked != 1 || len(res.Errors) != 0 {
		t.Fatalf("drain A: %+v, %v", res, err)
	}
	if info := b.env.info(sbx.SandboxID); info.State != "paused" {
		t.Fatalf("after the drain: %q, want paused", info.State)
	}
	var again sandboxAnswer
	a.env.ok(&again, http.StatusCreated, a.env.alice, "POST", "/v2/sandboxes/"+sbx.SandboxID+"/connect", `{"timeout":600}`)
	if got := nodeOf(t, a.st, sbx.SandboxID); got != b.node {
		t.Fatalf("after the connect through A the sandbox is on %q, want B's %q", got, b.node)
	}
	if again.EnvdAccessToken != b.env.e2b.AccessToken(sbx.SandboxID) {
		t.Error("the connect did not answer B's access token")
	}
	for _, via := range []*routeE2B{a, b} {
		if st, body := via.env.envd(again, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "kept" {
			t.Fatalf("read the file through %s after the move: %d %q", via.name, st, body)
		}
	}
	a.env.ok(nil, http.StatusNoContent, a.env.alice, "DELETE", "/sandboxes/"+sbx.SandboxID, "")
}
