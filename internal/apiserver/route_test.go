package apiserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
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
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// routeCapacity is what each test node offers.
var routeCapacity = store.NodeCapacity{VCPUs: 8, MemoryMiB: 16 << 10, DiskBytes: 1 << 40, Accel: "tcg"}

// routeRig is several cove servers over one store (a shared SQLite
// file, each server with its own connection), one object store and one
// fake driver (one host's): each server is a session manager, with its
// own sessions dir, and an API server on a real HTTP listener, wired as
// cove server wires them (Route on, a routing.Router, its node
// advertising its URL).
type routeRig struct {
	t       *testing.T
	db      string
	imgDir  string
	driver  *fake.Driver
	objects *cas.Store
	token   string // an admin user's API token, good on every server
	// capacity is what each node of the rig offers; routeCapacity when
	// its memory is 0.
	capacity store.NodeCapacity
	// heartbeat, if set, is how often each node of the rig heartbeats
	// (and fences, and drops what a drain moved away).
	heartbeat time.Duration
	// objectsDir is the object store's directory; objectsOf, if it names
	// a server, is that server's own handle on the store instead of
	// objects (one a test can cut off).
	objectsDir string
	objectsOf  map[string]*cas.Store
	noObjects  bool // the servers have no object store
	// poolWindow, if set, is each server's session.Config.PoolWindow.
	poolWindow time.Duration
	// admission, if it names a server, is that server's own accounting
	// of its host (smaller than its node record says, say).
	admission map[string]session.Admission
	// joinToken, if set, makes each server hold nodes' control
	// connections too (a nodelink.Hub taking that join token, its URL
	// the server's).
	joinToken string

	mu      sync.Mutex
	servers map[string]*routeServer // guarded by mu; by name
}

// routeServer is one server of a routeRig.
type routeServer struct {
	name   string
	node   string // its embedded node's id; "" for --node=false
	dir    string // its sessions dir
	st     *sqlite.Store
	mgr    *session.Manager
	srv    *httptest.Server
	client *api.Client
	logs   *logSink
	conns  *connTracker  // every connection its listener accepted
	hub    *nodelink.Hub // with routeRig.joinToken
}

// connTracker is a listener that keeps what it accepts, so that a test
// can cut every connection of a server at once (kill), upgraded ones (an
// exec WebSocket) included, as a server process's death does.
type connTracker struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn // guarded by mu
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// kill ends server s as its process's death would: its listener and
// every connection it accepted closed at once, then its manager let go
// of (its VMs are left as they are).
func (s *routeServer) kill() {
	s.conns.Listener.Close()
	s.conns.mu.Lock()
	for _, c := range s.conns.conns {
		c.Close()
	}
	s.conns.mu.Unlock()
	s.srv.Close()
	s.mgr.Close()
}

func newRouteRig(t *testing.T) *routeRig {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Skipf(t, "qemu-img not found (install qemu-utils): the manager makes each session's disk overlay with it")
	}
	r := &routeRig{t: t, db: filepath.Join(t.TempDir(), "state.db"), imgDir: t.TempDir(), driver: fake.New(),
		servers: map[string]*routeServer{}}
	for _, f := range []string{"rootfs.raw", "vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(r.imgDir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r.objectsDir = t.TempDir()
	objs, err := objstore.OpenDir(r.objectsDir)
	if err != nil {
		t.Fatal(err)
	}
	if r.objects, err = cas.New(cas.Config{Objects: objs}); err != nil {
		t.Fatal(err)
	}
	st := r.open()
	dir := &identity.Directory{Store: st}
	ctx := context.Background()
	if _, err := dir.AddUser(ctx, api.CreateUserRequest{Name: "ops", Kind: api.UserAdmin}); err != nil {
		t.Fatal(err)
	}
	tok, err := dir.CreateToken(ctx, api.CreateTokenRequest{Name: "route", User: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	r.token = tok.Secret
	t.Cleanup(func() {
		if ids := r.driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	return r
}

// open opens the rig's store once more, closed at cleanup.
func (r *routeRig) open() *sqlite.Store {
	r.t.Helper()
	st, err := sqlite.Open(context.Background(), r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { st.Close() })
	return st
}

// server starts server name: with an embedded node of that name, or,
// if withNode is false, an API server that runs none.
func (r *routeRig) server(name string, withNode bool) *routeServer {
	t := r.t
	t.Helper()
	ctx := context.Background()
	s := &routeServer{name: name, st: r.open(), logs: &logSink{}}
	var h http.Handler = http.NotFoundHandler()
	var hmu sync.RWMutex
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hmu.RLock()
		h := h
		hmu.RUnlock()
		h.ServeHTTP(w, req)
	}))
	s.conns = &connTracker{Listener: s.srv.Listener}
	s.srv.Listener = s.conns
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	if withNode {
		capacity := r.capacity
		if capacity.MemoryMiB == 0 {
			capacity = routeCapacity
		}
		n, err := session.RegisterEmbeddedNode(ctx, s.st, name, capacity)
		if err != nil {
			t.Fatal(err)
		}
		if err := session.AdvertiseNode(ctx, s.st, n.ID, s.srv.URL); err != nil {
			t.Fatal(err)
		}
		s.node = n.ID
	}
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s.dir = t.TempDir()
	var objects session.SnapshotStore = r.objects
	if o := r.objectsOf[name]; o != nil {
		objects = o
	}
	if r.noObjects {
		objects = nil
	}
	mgr, err := session.New(session.Config{Store: s.st, Driver: r.driver, Images: emptyImages{r.imgDir}, Dir: s.dir,
		TemplateDir: filepath.Join(s.dir, "templates"), DefaultMemoryMiB: 64, Objects: objects,
		Node: s.node, NoNode: !withNode, Route: true, NodeGrace: time.Hour, ServerID: name, Log: log,
		NodeHeartbeat: r.heartbeat, NodeProbe: r.probe(), Admission: r.admission[name], PoolWindow: r.poolWindow})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// The tests backdate heartbeats past the grace: this server has seen
	// the store all along.
	mgr.StoreSeenSince(time.Now().Add(-24 * time.Hour))
	s.mgr = mgr
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := mgr.List(ctx); err == nil && withNode {
			for _, sess := range ss {
				if sess.Node == s.node {
					if err := mgr.Delete(ctx, sess.ID); err != nil {
						t.Errorf("cleanup: delete %s on %s: %v", sess.ID, name, err)
					}
				}
			}
		}
		mgr.StopAll(ctx)
	})
	cfg := Config{Sessions: mgr, Token: testToken, Log: log, Nodes: mgr, Router: routing.New(s.st, s.node)}
	withIdentities(&cfg, s.st)
	if r.joinToken != "" {
		s.hub = nodelink.NewHub(nodelink.HubConfig{Store: s.st, JoinToken: r.joinToken, Local: s.node, Log: log})
		s.hub.SetURL(s.srv.URL)
		t.Cleanup(s.hub.Close)
		cfg.NodeLink = s.hub
	}
	hmu.Lock()
	h = New(cfg).Handler()
	hmu.Unlock()
	s.client = api.NewClient(s.srv.URL, r.token)
	r.mu.Lock()
	r.servers[name] = s
	r.mu.Unlock()
	return s
}

// probe is the rig's nodes' probe when they heartbeat (r.heartbeat).
func (r *routeRig) probe() func(context.Context) (store.NodeCapacity, error) {
	if r.heartbeat == 0 {
		return nil
	}
	return func(context.Context) (store.NodeCapacity, error) { return routeCapacity, nil }
}

// cordon sets node id cordoned (placement passes it over).
func (r *routeRig) cordon(s *routeServer) {
	r.t.Helper()
	if _, err := s.client.CordonNode(context.Background(), s.node); err != nil {
		r.t.Fatal(err)
	}
}

// createOn creates a session through via and fails the test unless it
// is placed on want's node.
func (r *routeRig) createOn(via, want *routeServer) api.Session {
	r.t.Helper()
	s, err := via.client.CreateSession(context.Background(), api.CreateSessionRequest{})
	if err != nil || s.Node != want.node {
		r.t.Fatalf("create through %s: %+v, %v; want it on %s", via.name, s, err, want.name)
	}
	return s
}

// echo runs echo in session id through s and checks its output.
func (s *routeServer) echo(t *testing.T, id, word string) {
	t.Helper()
	res, err := s.client.Exec(context.Background(), id, api.ExecRequest{Argv: []string{"echo", word}})
	if err != nil {
		t.Fatalf("exec through %s: %v", s.name, err)
	}
	if string(res.Stdout) != word+"\n" || res.ExitCode != 0 {
		t.Fatalf("exec through %s: %+v, want %q", s.name, res, word)
	}
}

// untilExit reads an interactive exec's events into out (its stdout)
// until the command exits, and closes conn.
func untilExit(t *testing.T, what string, conn *api.ExecConn, out *bytes.Buffer) {
	t.Helper()
	defer conn.Close()
	for {
		ev, err := conn.Recv()
		if err != nil {
			t.Fatalf("%s: %v (so far %q)", what, err, out.String())
		}
		if ev.Type == api.EventStdout {
			out.Write(ev.Data)
		}
		if ev.Type == api.EventExit {
			return
		}
	}
}

// holds reports whether the store records session id on s's node.
func (s *routeServer) holds(t *testing.T, id string) bool {
	t.Helper()
	got, err := s.mgr.Get(context.Background(), id)
	return err == nil && got.Node == s.node && s.node != ""
}

// TestFakeRouteCalls: three servers over one store, A and B with their
// embedded nodes, C an API server that runs none. A create through A, with
// A's node cordoned, is placed on B and carried out there; every call
// about the session then works through each of the three servers, and is
// carried out by B: exec (buffered, streamed, and over the WebSocket),
// files up and down, park through A and wake through C, inspect, delete.
// A create through C is placed on a node and carried out by its server.
func TestFakeRouteCalls(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(a)

	s, err := a.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("create through A: %v", err)
	}
	if s.Node != b.node || s.State != api.StateRunning {
		t.Fatalf("create through A with A cordoned: %+v, want running on B (%s)", s, b.node)
	}
	if !strings.Contains(b.logs.String(), "creating session") || strings.Contains(a.logs.String(), "creating session") {
		t.Errorf("the create was not carried out by B alone:\nA: %s\nB: %s", a.logs.String(), b.logs.String())
	}

	for _, via := range []*routeServer{a, b, c} {
		via.echo(t, s.ID, "via-"+via.name)
		var out bytes.Buffer
		err := via.client.ExecStream(ctx, s.ID, api.ExecRequest{Argv: []string{"echo", "streamed"}}, func(ev api.ExecEvent) {
			if ev.Type == api.EventStdout {
				out.Write(ev.Data)
			}
		})
		if err != nil || out.String() != "streamed\n" {
			t.Errorf("streamed exec through %s: %q, %v", via.name, out.String(), err)
		}
		got, err := via.client.GetSession(ctx, s.ID)
		if err != nil || got.Node != b.node {
			t.Errorf("inspect through %s: %+v, %v", via.name, got, err)
		}
	}

	// The exec WebSocket, through the API server: what the command
	// writes comes back while it runs (nothing held back by the hop).
	conn, err := c.client.ExecInteractive(ctx, s.ID, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatalf("exec ws through C: %v", err)
	}
	if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte("over the socket\n")}); err != nil {
		t.Fatal(err)
	}
	var ws bytes.Buffer
	for ws.String() != "over the socket\n" {
		ev, err := conn.Recv()
		if err != nil || ev.Type != api.EventStdout {
			t.Fatalf("exec ws through C, while cat runs: %+v, %v (so far %q)", ev, err, ws.String())
		}
		ws.Write(ev.Data)
	}
	if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte("and again\n")}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(api.ExecEvent{Type: api.EventStdinClose}); err != nil {
		t.Fatal(err)
	}
	untilExit(t, "exec ws through C", conn, &ws)
	if ws.String() != "over the socket\nand again\n" {
		t.Errorf("exec ws through C: %q", ws.String())
	}

	// Files: written through C, read through A.
	if err := c.client.WriteFile(ctx, s.ID, "/root/f", 0o644, strings.NewReader("routed file\n")); err != nil {
		t.Fatalf("write through C: %v", err)
	}
	rc, err := a.client.ReadFile(ctx, s.ID, "/root/f")
	if err != nil {
		t.Fatalf("read through A: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "routed file\n" {
		t.Errorf("read through A: %q", got)
	}

	// A watch through C streams the events of writes through A while
	// it runs; it ends, without an error, with the park through A.
	if err := c.client.Mkdir(ctx, s.ID, "/tmp/w"); err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 1024)
	done := make(chan error, 1)
	go func() {
		done <- c.client.Watch(ctx, s.ID, "/tmp/w", false, func(ev api.WatchEvent) error {
			events <- ev.Type + " " + ev.Name
			return nil
		})
	}()
	for seen := false; !seen; {
		if err := a.client.WriteFile(ctx, s.ID, "/tmp/w/mark", 0o644, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-events:
			seen = true
		case err := <-done:
			t.Fatalf("the watch through C ended at once: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// Park through A, wake through C: on B all along.
	if p, err := a.client.ParkSession(ctx, s.ID); err != nil || p.State != api.StateParked || p.Node != b.node {
		t.Fatalf("park through A: %+v, %v", p, err)
	}
	if err := <-done; err != nil {
		t.Errorf("the watch through C across the park ended with %v, want none", err)
	}
	if w, err := c.client.WakeSession(ctx, s.ID); err != nil || w.State != api.StateRunning || w.Node != b.node {
		t.Fatalf("wake through C: %+v, %v", w, err)
	}
	if !b.holds(t, s.ID) {
		t.Errorf("after the wake the session is not B's")
	}
	c.echo(t, s.ID, "woken")

	// A create through the API server is placed on a node (B: A is
	// cordoned) and carried out by its server.
	s2, err := c.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s2.Node != b.node {
		t.Fatalf("create through C: %+v, %v; want it on B", s2, err)
	}
	c.echo(t, s2.ID, "made-through-c")

	for _, id := range []string{s.ID, s2.ID} {
		if err := c.client.DeleteSession(ctx, id); err != nil {
			t.Fatalf("delete %s through C: %v", id, err)
		}
		if _, err := a.client.GetSession(ctx, id); !api.IsCode(err, api.CodeNotFound) {
			t.Errorf("after the delete, inspect %s through A: %v, want not found", id, err)
		}
	}
	if ids := r.driver.Running(); len(ids) != 0 {
		t.Errorf("VMs left after the deletes: %v", ids)
	}
}

// TestFakeRouteNoLoop: a call another server forwarded (it carries
// routing.Header) is carried out where it arrives or refused, never
// forwarded again: one about a session of another node is a 409 saying
// so, and a create that this server's node cannot take is a 503, not a
// create placed elsewhere.
func TestFakeRouteNoLoop(t *testing.T) {
	r := newRouteRig(t)
	a, b := r.server("host-a", true), r.server("host-b", true)
	ctx := context.Background()
	r.cordon(a)
	s := r.createOn(b, b)
	mark := len(b.logs.String())

	req, _ := http.NewRequest("POST", a.srv.URL+"/v1/sessions/"+s.ID+"/park", nil)
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set(routing.Header, "node-elsewhere")
	body := wantError(t, do(t, req), http.StatusConflict, api.CodeConflict)
	if !strings.Contains(body.Message, "not routed again") || !strings.Contains(body.Message, "host-b") {
		t.Errorf("refusal %q does not say why", body.Message)
	}
	if since := b.logs.String()[mark:]; strings.Contains(since, "/park") {
		t.Errorf("the marked call reached B:\n%s", since)
	}
	if got, err := b.client.GetSession(ctx, s.ID); err != nil || got.State != api.StateRunning {
		t.Errorf("after the refused park: %+v, %v; want running", got, err)
	}

	// B advertises A's URL (two hosts both advertising 127.0.0.1, say):
	// A's call about B's session comes back to A, which says so.
	if err := session.AdvertiseNode(ctx, a.st, b.node, a.srv.URL); err != nil {
		t.Fatal(err)
	}
	_, err := a.client.ParkSession(ctx, s.ID)
	if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "reaches this server") {
		t.Errorf("park through A with B advertising A's URL: %v; want a 503 saying the URL reaches A", err)
	}
	if err := session.AdvertiseNode(ctx, a.st, b.node, b.srv.URL); err != nil {
		t.Fatal(err)
	}

	req, _ = http.NewRequest("POST", a.srv.URL+"/v1/sessions", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(routing.Header, "node-elsewhere")
	body = wantError(t, do(t, req), http.StatusServiceUnavailable, api.CodeUnavailable)
	if !strings.Contains(body.Message, "host-a: cordoned") || !strings.Contains(body.Message, "host-b: the call was routed") {
		t.Errorf("refusal %q does not say why", body.Message)
	}
	if ss, err := a.client.ListSessions(ctx); err != nil || len(ss) != 1 {
		t.Errorf("after the refused create: %d sessions, %v; want 1", len(ss), err)
	}
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteServerDown: B's server goes away (its node still recorded
// alive, its session parked and stored in the object store). A call
// through A is a 503 naming B and why, and changes nothing. Once B's
// node is marked dead, the same wake through the API server C goes
// through: C, which runs no node, routes it to A, whose node takes the
// session and restores it from the object store with its files.
func TestFakeRouteServerDown(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(a)
	s := r.createOn(c, b)
	if err := c.client.WriteFile(ctx, s.ID, "/root/kept", 0o644, strings.NewReader("kept across hosts\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := c.client.GetSession(ctx, s.ID)
		if err == nil && got.Stored {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the parked session was not stored: %+v, %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := a.client.UncordonNode(ctx, a.node); err != nil {
		t.Fatal(err)
	}

	// B's server is gone, with its disk; its node is still recorded
	// alive.
	b.srv.Close()
	b.mgr.Close()
	if err := os.RemoveAll(filepath.Join(b.dir, s.ID)); err != nil {
		t.Fatal(err)
	}
	_, err := a.client.WakeSession(ctx, s.ID)
	if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "host-b") || !strings.Contains(err.Error(), "could not be reached") {
		t.Fatalf("wake through A with B's server down: %v; want 503 naming host-b", err)
	}
	// An inspect reads the store: answered by A itself.
	if got, err := a.client.GetSession(ctx, s.ID); err != nil || got.State != api.StateParked || got.Node != b.node {
		t.Fatalf("inspect through A after the refused wake: %+v, %v; want parked on B", got, err)
	}

	// B's node is marked dead; the retry through C goes through, on A.
	old := time.Now().UTC().Add(-2 * time.Hour)
	if err := a.st.HeartbeatNode(ctx, b.node, old, routeCapacity); err != nil {
		t.Fatal(err)
	}
	if dead := a.mgr.SweepNodes(ctx); len(dead) != 1 || dead[0] != b.node {
		t.Fatalf("sweep: %v, want B dead", dead)
	}
	w, err := c.client.WakeSession(ctx, s.ID)
	if err != nil || w.State != api.StateRunning || w.Node != a.node {
		t.Fatalf("wake through C once B is dead: %+v, %v; want running on A", w, err)
	}
	if _, err := os.Stat(filepath.Join(a.dir, s.ID)); err != nil {
		t.Errorf("the session's files are not in A's sessions dir: %v", err)
	}
	rc, err := c.client.ReadFile(ctx, s.ID, "/root/kept")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "kept across hosts\n" {
		t.Errorf("after the wake on A: /root/kept = %q", got)
	}
	if err := c.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// do sends req with the default client, closing its body at cleanup.
func do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// deliverAt has the server at accept a "deploys" event for session id,
// parked until it, and waits until the store says it was delivered: the
// session is then running on holder's node, its guest holds the one event,
// and holder alone logged the delivery (not other).
func (r *routeRig) deliverAt(at *routeServer, id string, holder, other *routeServer) {
	t, ctx := r.t, context.Background()
	t.Helper()
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if dup, err := at.mgr.Accept(ctx, ev); err != nil || dup {
		t.Fatalf("accept at %s: %v, %v", at.node, dup, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ds, err := holder.st.ListDeliveries(ctx, store.DeliveryDelivered)
		if err == nil && len(ds) == 1 {
			break
		}
		if time.Now().After(deadline) {
			failed, _ := holder.st.ListDeliveries(ctx, store.DeliveryFailed)
			t.Fatalf("the event was not delivered: %v, failed %+v", err, failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, err := other.client.GetSession(ctx, id)
	if err != nil || got.State != api.StateRunning || got.Node != holder.node {
		t.Fatalf("after the delivery: %+v, %v; want running on %s", got, err, holder.node)
	}
	files, err := other.client.ListDir(ctx, id, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v, %v; want one", files, err)
	}
	if strings.Contains(other.logs.String(), "event delivered") || !strings.Contains(holder.logs.String(), "event delivered") {
		t.Errorf("the delivery was not %s's alone", holder.node)
	}
}

// TestFakeRouteDelivery: a session on B parks until an event, through
// the API server C (routed to B); the event arrives at A (the webhook
// receiver's sink there), which learns B's subscription from the store.
// B, whose node holds the session, wakes it and writes the event into
// its guest.
func TestFakeRouteDelivery(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(a)
	s := r.createOn(c, b)
	if p, err := c.client.ParkSessionUntil(ctx, s.ID, api.ParkRequest{Until: []string{"deploys:done"}}); err != nil || p.State != api.StateParked {
		t.Fatalf("park --until through C: %+v, %v", p, err)
	}
	r.deliverAt(a, s.ID, b, a)
	if err := c.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteClone: a template made through A; a clone of it asked
// through the API server C, with A cordoned, is placed on B and made by
// B's server, and runs there.
func TestFakeRouteClone(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	if _, err := a.client.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "py"}); err != nil {
		t.Fatalf("template through A: %v", err)
	}
	t.Cleanup(func() {
		if err := a.mgr.DeleteTemplate(context.Background(), "py"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	r.cordon(a)
	s, err := c.client.CreateSession(ctx, api.CreateSessionRequest{Template: "py"})
	if err != nil || s.Node != b.node || s.Template != "py" {
		t.Fatalf("clone through C: %+v, %v; want a clone of py on B", s, err)
	}
	c.echo(t, s.ID, "cloned")
	if err := c.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}
