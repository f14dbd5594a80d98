package apiserver

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// linkedNode is a 'cove node' serving sessions, in process: its own
// session manager over the rig's store, object store and fake driver
// (Config.Linked), and cove's API server as the handler its agent serves
// over its control connection to one of the rig's servers.
type linkedNode struct {
	r    *routeRig
	name string
	id   string
	home string
	st   *sqlite.Store
	mgr  *session.Manager
	h    http.Handler
	logs *logSink

	mu     sync.Mutex
	cancel func()       // ends the agent running now; guarded by mu
	done   chan error   // that agent's Run's end; guarded by mu
	via    *routeServer // the server it connects to; guarded by mu
}

// linkedNode joins node name through server via, starts its manager and
// API, and connects it to via.
func (r *routeRig) linkedNode(name string, via *routeServer) *linkedNode {
	t := r.t
	t.Helper()
	n := &linkedNode{r: r, name: name, home: t.TempDir(), st: r.open(), logs: &logSink{}}
	ctx := context.Background()
	id, err := n.agent(via).Join(ctx)
	if err != nil {
		t.Fatalf("node %s: join: %v", name, err)
	}
	n.id = id
	log := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := t.TempDir()
	mgr, err := session.New(session.Config{Store: n.st, Driver: r.driver, Images: emptyImages{r.imgDir}, Dir: dir,
		TemplateDir: filepath.Join(dir, "templates"), DefaultMemoryMiB: 64, Objects: r.objects,
		Node: id, Linked: true, ServerID: name, Log: log, Admission: r.admission[name]})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	n.mgr = mgr
	t.Cleanup(func() {
		n.disconnect()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := mgr.List(ctx); err == nil {
			for _, sess := range ss {
				if sess.Node == id {
					if err := mgr.Delete(ctx, sess.ID); err != nil {
						t.Errorf("cleanup: delete %s on %s: %v", sess.ID, name, err)
					}
				}
			}
		}
		mgr.StopAll(ctx)
	})
	cfg := Config{Sessions: mgr, Token: testToken, Log: log, Nodes: mgr, Router: routing.New(n.st, id)}
	withIdentities(&cfg, n.st)
	n.h = New(cfg).Handler()
	n.connect(via)
	return n
}

// agent is the node's agent for server via.
func (n *linkedNode) agent(via *routeServer) *nodelink.Agent {
	return nodelink.NewAgent(nodelink.AgentConfig{Server: via.srv.URL, JoinToken: n.r.joinToken, Name: n.name,
		Home: n.home, Heartbeat: time.Hour, Serves: true,
		Log:   slog.New(slog.NewTextHandler(n.logs, nil)),
		Probe: func(context.Context) (store.NodeCapacity, error) { return routeCapacity, nil },
		OnHeartbeat: func(ctx context.Context) {
			if n.mgr != nil {
				n.mgr.Heartbeated(ctx)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.h.ServeHTTP(w, r) })})
}

// connect runs the node's agent against via (after ending the one
// running), and waits until via holds its connection and the node's
// record routes its sessions there.
func (n *linkedNode) connect(via *routeServer) {
	t := n.r.t
	t.Helper()
	n.disconnect()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := n.agent(via)
	go func() { done <- a.Run(ctx) }()
	n.mu.Lock()
	n.cancel, n.done, n.via = cancel, done, via
	n.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec, err := n.st.GetNode(context.Background(), n.id)
		if err == nil && rec.URL == via.srv.URL && via.hub.Connected(n.id) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not connect to %s: %+v, %v; its log:\n%s\nthe server's:\n%s", n.name, via.name, rec, err, n.logs, via.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// disconnect ends the node's control connection (its agent stops), and
// waits until the server it was connected to has seen it drop.
func (n *linkedNode) disconnect() {
	n.mu.Lock()
	cancel, done, via := n.cancel, n.done, n.via
	n.cancel, n.done, n.via = nil, nil, nil
	n.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	for deadline := time.Now().Add(30 * time.Second); via.hub.Connected(n.id); {
		if time.Now().After(deadline) {
			n.r.t.Errorf("%s still holds node %s's connection after the node dropped it", via.name, n.name)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFakeLinkedNode: a 'cove node' serving sessions (its own session
// manager, Linked, and cove's API over its control connection) joins
// server S, an API server running no node; S2, another, shares the
// store. A create through S lands on the node; exec (buffered and over
// the WebSocket), park, wake, inspect through S and through S2
// (forwarded to S, which relays over the link). The link dropped: calls
// about its sessions are a 503 saying the node is not connected, and
// change nothing. The node connects to S2 instead: its record's URL
// moves there, and calls through either server go through S2, a create
// through S included. A drain through S parks the node's sessions on
// the node; rm through S and S2.
func TestFakeLinkedNode(t *testing.T) {
	r := newRouteRig(t)
	r.joinToken = "link-join-token"
	s, s2 := r.server("api-s", false), r.server("api-s2", false)
	n := r.linkedNode("node-n", s)
	ctx := context.Background()

	sess, err := s.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("create through S: %v\nS's log:\n%s", err, s.logs)
	}
	if sess.Node != n.id || sess.State != api.StateRunning {
		t.Fatalf("create through S: %+v, want running on the node (%s)", sess, n.id)
	}
	if !strings.Contains(n.logs.String(), "creating session") {
		t.Errorf("the create was not carried out by the node:\n%s", n.logs)
	}
	if !strings.Contains(s.logs.String(), "relaying a call over a node's control connection") {
		t.Errorf("S did not relay the create over the link:\n%s", s.logs)
	}
	for _, via := range []*routeServer{s, s2} {
		via.echo(t, sess.ID, "via-"+via.name)
		got, err := via.client.GetSession(ctx, sess.ID)
		if err != nil || got.Node != n.id || got.State != api.StateRunning {
			t.Errorf("inspect through %s: %+v, %v", via.name, got, err)
		}
	}
	// The exec WebSocket through S2: forwarded to S, relayed over the
	// link, upgraded end to end.
	conn, err := s2.client.ExecInteractive(ctx, sess.ID, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatalf("exec ws through S2: %v", err)
	}
	if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: []byte("two hops\n")}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(api.ExecEvent{Type: api.EventStdinClose}); err != nil {
		t.Fatal(err)
	}
	var ws bytes.Buffer
	untilExit(t, "exec ws through S2", conn, &ws)
	if ws.String() != "two hops\n" {
		t.Errorf("exec ws through S2: %q", ws.String())
	}
	if p, err := s2.client.ParkSession(ctx, sess.ID); err != nil || p.State != api.StateParked || p.Node != n.id {
		t.Fatalf("park through S2: %+v, %v", p, err)
	}
	if w, err := s.client.WakeSession(ctx, sess.ID); err != nil || w.State != api.StateRunning || w.Node != n.id {
		t.Fatalf("wake through S: %+v, %v", w, err)
	}
	s2.echo(t, sess.ID, "woken")

	// The link dropped: a clear 503 through either server, nothing
	// changed; an inspect is answered from the store.
	n.disconnect()
	for _, via := range []*routeServer{s, s2} {
		_, err := via.client.Exec(ctx, sess.ID, api.ExecRequest{Argv: []string{"echo", "x"}})
		if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "is not connected to this server (its control connection dropped): retry") {
			t.Errorf("exec through %s with the link down: %v, want a 503 saying the node is not connected", via.name, err)
		}
		if _, err := via.client.ParkSession(ctx, sess.ID); !api.IsCode(err, api.CodeUnavailable) {
			t.Errorf("park through %s with the link down: %v, want a 503", via.name, err)
		}
		if got, err := via.client.GetSession(ctx, sess.ID); err != nil || got.State != api.StateRunning || got.Node != n.id {
			t.Errorf("inspect through %s with the link down: %+v, %v; want it running on the node, as it is", via.name, got, err)
		}
	}

	// The node connects to S2: its sessions are reached there.
	n.connect(s2)
	for _, via := range []*routeServer{s, s2} {
		via.echo(t, sess.ID, "after-move-"+via.name)
	}
	if !strings.Contains(s2.logs.String(), "relaying a call over a node's control connection") {
		t.Errorf("S2 relayed nothing over the link:\n%s", s2.logs)
	}
	// A create through S, placed on the node, goes to S2, which
	// relays it.
	other, err := s.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || other.Node != n.id || other.State != api.StateRunning {
		t.Fatalf("create through S with the link at S2: %+v, %v\nS:\n%s\nS2:\n%s", other, err, s.logs, s2.logs)
	}

	// A drain through S parks the node's sessions, on the node.
	res, err := s.client.DrainNode(ctx, n.name)
	if err != nil || res.Parked != 2 || len(res.Errors) != 0 {
		t.Fatalf("drain through S: %+v, %v", res, err)
	}
	for i, id := range []string{sess.ID, other.ID} {
		got, err := s2.client.GetSession(ctx, id)
		if err != nil || got.State != api.StateParked || got.Node != n.id {
			t.Errorf("after the drain, %s: %+v, %v; want parked on the node", id, got, err)
		}
		via := []*routeServer{s, s2}[i]
		if err := via.client.DeleteSession(ctx, id); err != nil {
			t.Errorf("rm %s through %s: %v", id, via.name, err)
		}
	}
	if got, err := s.client.ListSessions(ctx); err != nil || len(got) != 0 {
		t.Errorf("after rm: %+v, %v; want none", got, err)
	}
}

// TestFakeLinkedNodePlacedAgain: two nodes serving sessions, A linked to
// S and B to S2 (API servers running none). A create through S2 is
// placed on A (both empty: the lowest name), forwarded to S, relayed to
// A, and refused there for want of room (A's host accounting is smaller
// than its record says): S2 places it again, on B. With A's link down,
// a create placed on A is placed again likewise, through S2 (S answers
// that A is not connected) and through S (which finds so itself).
func TestFakeLinkedNodePlacedAgain(t *testing.T) {
	r := newRouteRig(t)
	r.joinToken = "link-join-token"
	r.admission = map[string]session.Admission{"node-a": {HostMemoryMiB: 256, HostCPUs: 8, MemoryOvercommit: 0.5}}
	s, s2 := r.server("api-s", false), r.server("api-s2", false)
	a, b := r.linkedNode("node-a", s), r.linkedNode("node-b", s2)
	ctx := context.Background()

	first, err := s2.client.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || first.Node != b.id {
		t.Fatalf("create through S2: %+v, %v; want it made on B after A refused it\nS2:\n%s", first, err, s2.logs)
	}
	if !strings.Contains(a.logs.String(), "create refused") || !strings.Contains(s2.logs.String(), "placed again") {
		t.Errorf("A did not refuse the create, or S2 did not place it again:\nA:\n%s\nS2:\n%s", a.logs, s2.logs)
	}

	a.disconnect()
	for _, via := range []*routeServer{s2, s} {
		got, err := via.client.CreateSession(ctx, api.CreateSessionRequest{})
		if err != nil || got.Node != b.id {
			t.Fatalf("create through %s with A's link down: %+v, %v; want it made on B\n%s", via.name, got, err, via.logs)
		}
		if !strings.Contains(via.logs.String(), "not_connected=true") && via == s {
			t.Errorf("S did not place it again for A's link being down:\n%s", s.logs)
		}
		if err := via.client.DeleteSession(ctx, got.ID); err != nil {
			t.Fatal(err)
		}
	}
	if all, err := s.client.ListSessions(ctx); err != nil || len(all) != 1 {
		t.Errorf("sessions: %+v, %v; want only the first, on B", all, err)
	}
	if err := s.client.DeleteSession(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
}
