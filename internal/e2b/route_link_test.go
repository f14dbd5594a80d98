package e2b_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

const linkJoinToken = "e2b-link-join-token"

// linkE2B is a server running no node (cove server --node=false) with
// an E2B API, holding nodes' control connections (its Hub).
type linkE2B struct {
	name   string
	hub    *nodelink.Hub
	hubURL string // where nodes join and connect (its cove API's URL)
	env    *fakeEnv
}

// linkServer starts server name: no node, its E2B API relaying over the
// control connections its Hub holds.
func (r *e2bRig) linkServer(name string, key byte) *linkE2B {
	st := r.open()
	s := &linkE2B{name: name}
	s.hub = nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: linkJoinToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	r.t.Cleanup(s.hub.Close)
	hubSrv, setHub := r.swappable()
	setHub(s.hub)
	s.hubURL = hubSrv.URL
	s.hub.SetURL(hubSrv.URL)
	hs, set := r.swappable()
	mgr := r.manager(session.Config{Store: st, NoNode: true, Route: true, ServerID: name})
	srv := r.e2bServer(name, key, st, mgr, "", s.hub)
	set(srv)
	s.hub.SetE2BURL(context.Background(), hs.URL)
	s.env = &fakeEnv{t: r.t, url: hs.URL, mgr: mgr, driver: r.driver, e2b: srv, st: st, alice: r.alice}
	return s
}

// linkedE2BNode is a 'cove node' serving sessions: its own session
// manager (Linked) and E2B API (signing with its own key), served over
// its control connection (nodelink.Split: cove's API is not served).
type linkedE2BNode struct {
	id     string
	st     store.Store
	e2b    *fakeEnv // its E2B API's (e2b: for AccessToken; url unused)
	cancel func()
	done   chan error
}

// linkedNode joins node name through via, starts its manager and E2B
// API, and connects it; it returns once via relays to it.
func (r *e2bRig) linkedNode(name string, key byte, via *linkE2B) *linkedE2BNode {
	t := r.t
	t.Helper()
	st := r.open()
	n := &linkedE2BNode{st: st}
	var h http.Handler = http.NotFoundHandler()
	agent := nodelink.NewAgent(nodelink.AgentConfig{Server: via.hubURL, JoinToken: linkJoinToken, Name: name, Home: t.TempDir(),
		Heartbeat: time.Hour, Serves: true, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Probe:   func(context.Context) (store.NodeCapacity, error) { return routeCapacity, nil },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) })})
	id, err := agent.Join(context.Background())
	if err != nil {
		t.Fatalf("node %s: join: %v", name, err)
	}
	n.id = id
	mgr := r.manager(session.Config{Store: st, Node: id, Linked: true, ServerID: name})
	srv := r.e2bServer(name, key, st, mgr, id, nil)
	h = nodelink.Split(http.NotFoundHandler(), srv)
	n.e2b = &fakeEnv{t: t, mgr: mgr, driver: r.driver, e2b: srv, st: st, alice: r.alice}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- agent.Run(ctx) }()
	t.Cleanup(n.disconnect)
	eventuallyE2B(t, "the node connected, its E2B calls routed to "+via.name, func() bool {
		rec, err := st.GetNode(context.Background(), id)
		return err == nil && rec.E2BURL == via.env.url && via.hub.Connected(id)
	})
	return n
}

// disconnect ends the node's control connection.
func (n *linkedE2BNode) disconnect() {
	if n.cancel != nil {
		n.cancel()
		<-n.done
		n.cancel = nil
	}
}

func eventuallyE2B(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 30 s: %s", what)
		}
	}
}

// TestFakeRouteE2BLinkedNode: a 'cove node' serving sessions, N,
// connected to server S (no node, an E2B API), and server A (an
// embedded node, an E2B API) over one store. A create through S lands
// on N, and one through A (A cordoned) is forwarded to S and relayed to
// N: both answer N's access token. Every call about N's sandbox through
// S (relayed) and through A (forwarded to S, relayed) is carried out by
// N: a command, files (the envd host name form and signed URLs naming
// the sandbox included), get, pause,
// connect, kill. N's link dropped: the calls are a 503 saying so, and
// change nothing.
func TestFakeRouteE2BLinkedNode(t *testing.T) {
	r := newE2BRig(t)
	a := r.server("a", 1)
	s := r.linkServer("s", 3)
	n := r.linkedNode("n", 4, s)
	a.setAdmin(t, store.NodeCordoned)

	var sbx sandboxAnswer
	s.env.ok(&sbx, http.StatusCreated, r.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600,"metadata":{"via":"s"}}`)
	if got := nodeOf(t, s.env.st, sbx.SandboxID); got != n.id {
		t.Fatalf("the sandbox created through S is on node %q, want N's %q", got, n.id)
	}
	if sbx.EnvdAccessToken != n.e2b.e2b.AccessToken(sbx.SandboxID) {
		t.Fatal("the access token is not N's: the create was not carried out by N")
	}
	var viaA sandboxAnswer
	a.env.ok(&viaA, http.StatusCreated, r.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	if got := nodeOf(t, a.st, viaA.SandboxID); got != n.id || viaA.EnvdAccessToken != n.e2b.e2b.AccessToken(viaA.SandboxID) {
		t.Fatalf("the sandbox created through A: on %q, want N's %q, with N's token", got, n.id)
	}
	a.setAdmin(t, "")

	// envd through S and through A: a command's output, files.
	for _, via := range []*fakeEnv{s.env, a.env} {
		next := via.connectStream(context.Background(), sbx, "Start", `{"process":{"cmd":"echo","args":["relayed"]}}`)
		var out []string
		for {
			end, m := next()
			out = append(out, m)
			if end || strings.Contains(m, `"end"`) {
				break
			}
		}
		if all := strings.Join(out, "\n"); !strings.Contains(all, `"stdout":"cmVsYXllZAo="`) { // "relayed\n"
			t.Errorf("echo through %s: %s; want stdout relayed", via.url, all)
		}
	}
	if st, body := s.env.envd(sbx, "POST", "/files?path=/tmp/x", "application/octet-stream", "through s"); st != http.StatusOK {
		t.Fatalf("write a file through S: %d %s", st, body)
	}
	if st, body := a.env.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "through s" {
		t.Fatalf("read the file through A: %d %q", st, body)
	}
	// The envd host name form, through A: forwarded, relayed.
	req, err := http.NewRequest("GET", a.env.url+"/files?path=/tmp/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "49983-" + sbx.SandboxID + ".cove.test"
	req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "through s" {
			t.Errorf("read the file by the envd host name through A: %d %q", resp.StatusCode, body)
		}
	}
	// A signed URL naming its sandbox, through A and through S.
	if st, body := plain(t, "GET", a.env.signedURL("/tmp/x", "read", sbx.EnvdAccessToken, 0), "", "", "E2b-Sandbox-Id", sbx.SandboxID); st != http.StatusOK || body != "through s" {
		t.Errorf("a signed download through A: %d %q", st, body)
	}
	if st, body := plain(t, "POST", s.env.signedURL("/tmp/y", "write", sbx.EnvdAccessToken, 0), "application/octet-stream", "signed", "E2b-Sandbox-Id", sbx.SandboxID); st != http.StatusOK {
		t.Errorf("a signed upload through S: %d %s", st, body)
	}
	if st, body := a.env.envd(sbx, "GET", "/files?path=/tmp/y", "", ""); st != http.StatusOK || string(body) != "signed" {
		t.Errorf("the signed upload read through A: %d %q", st, body)
	}
	// A token not N's is refused, by N.
	bad := sbx
	bad.EnvdAccessToken = s.env.e2b.AccessToken(sbx.SandboxID)
	if st, body := s.env.envd(bad, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusUnauthorized {
		t.Errorf("S's token for N's sandbox through S: %d %s, want 401", st, body)
	}

	// The control plane through A and S.
	if info := a.env.info(sbx.SandboxID); info.State != "running" || info.Metadata["via"] != "s" {
		t.Errorf("get through A: %+v", info)
	}
	a.env.ok(nil, http.StatusNoContent, r.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	if info := s.env.info(sbx.SandboxID); info.State != "paused" {
		t.Errorf("after a pause through A, S says %q", info.State)
	}
	var again sandboxAnswer
	s.env.ok(&again, http.StatusCreated, r.alice, "POST", "/v2/sandboxes/"+sbx.SandboxID+"/connect", `{"timeout":600}`)
	if again.EnvdAccessToken != sbx.EnvdAccessToken || nodeOf(t, s.env.st, sbx.SandboxID) != n.id {
		t.Errorf("connect through S: another access token, or moved off N")
	}
	if st, body := a.env.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusOK || string(body) != "through s" {
		t.Fatalf("read the file through A after pause and connect: %d %q", st, body)
	}
	a.env.ok(nil, http.StatusNoContent, r.alice, "DELETE", "/sandboxes/"+viaA.SandboxID, "")
	if _, err := s.env.st.GetSession(context.Background(), viaA.SandboxID); err == nil {
		t.Error("the sandbox killed through A is still recorded")
	}

	// N's link dropped: 503 through S and A, nothing changed.
	n.disconnect()
	eventuallyE2B(t, "S sees the drop", func() bool { return !s.hub.Connected(n.id) })
	for _, via := range []*fakeEnv{s.env, a.env} {
		st, _, body := via.call(r.alice, "DELETE", "/sandboxes/"+sbx.SandboxID, "")
		if st != http.StatusServiceUnavailable || !strings.Contains(string(body), "not connected") {
			t.Errorf("kill through %s with N's link down: %d %s, want 503 not connected", via.url, st, body)
		}
		if st, body := via.envd(sbx, "GET", "/files?path=/tmp/x", "", ""); st != http.StatusServiceUnavailable {
			t.Errorf("envd through %s with N's link down: %d %s, want 503", via.url, st, body)
		}
	}
	if _, err := s.env.st.GetSession(context.Background(), sbx.SandboxID); err != nil {
		t.Errorf("the sandbox after refused kills: %v", err)
	}
	// Its cleanup (the rig's) deletes it with N's manager.
}
