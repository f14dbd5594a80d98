package nodelink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// servingAgent is an agent for a node serving sessions, on home, against
// f's server: its handler answers with the Host and path it was asked,
// and beats counts its OnHeartbeat calls.
func (f *fixture) servingAgent(home string, beats *atomic.Int64) *Agent {
	return NewAgent(AgentConfig{Server: f.srv.URL, JoinToken: testJoinToken, Name: "node-s", Home: home,
		Heartbeat: 50 * time.Millisecond, Serves: true, Log: slog.New(slog.NewTextHandler(f.logs, nil)),
		Probe:       func(context.Context) (store.NodeCapacity, error) { return testCapacity(1), nil },
		OnHeartbeat: func(context.Context) { beats.Add(1) },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "node api: %s %s", r.Host, r.URL.Path)
		})})
}

// run runs a until the test ends or stop is called.
func run(t *testing.T, a *Agent) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop = func() {
		if cancel != nil {
			cancel()
			<-done
			cancel = nil
		}
	}
	t.Cleanup(stop)
	return stop
}

// Join gives the node's id before Run (joining once, keeping the id
// beside the credential); a restarted node's Join reads it, or asks the
// server when its home has none, and joins no second time.
func TestJoinGivesTheNodeID(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, openStore(t), testJoinToken)
	home := t.TempDir()
	var beats atomic.Int64
	a := f.servingAgent(home, &beats)
	id, err := a.Join(ctx)
	if err != nil || !strings.HasPrefix(id, "node-") {
		t.Fatalf("Join: %q, %v", id, err)
	}
	n, err := f.st.GetNode(ctx, id)
	if err != nil || n.Name != "node-s" {
		t.Fatalf("the joined node's record: %+v, %v", n, err)
	}
	if again, err := a.Join(ctx); err != nil || again != id {
		t.Errorf("Join again: %q, %v; want %s", again, err, id)
	}
	b, err := os.ReadFile(filepath.Join(home, IDFile))
	if err != nil || strings.TrimSpace(string(b)) != id {
		t.Errorf("%s: %q, %v; want the id", IDFile, b, err)
	}
	// A restarted node: its id from its home, then from the server.
	if got, err := f.servingAgent(home, &beats).Join(ctx); err != nil || got != id {
		t.Errorf("a restarted node's Join: %q, %v; want %s", got, err, id)
	}
	if err := os.Remove(filepath.Join(home, IDFile)); err != nil {
		t.Fatal(err)
	}
	if got, err := f.servingAgent(home, &beats).Join(ctx); err != nil || got != id {
		t.Errorf("Join of a home with a credential and no id: %q, %v; want %s", got, err, id)
	}
	if b, err := os.ReadFile(filepath.Join(home, IDFile)); err != nil || strings.TrimSpace(string(b)) != id {
		t.Errorf("%s after asking the server: %q, %v", IDFile, b, err)
	}
	if after, err := f.st.GetNode(ctx, id); err != nil || after.CredentialHash != n.CredentialHash {
		t.Errorf("the credential changed: the node joined again (%+v, %v)", after, err)
	}
	// Run goes on with what Join found: no second join.
	stop := run(t, a)
	eventually(t, "connected", func() bool { return f.hub.Connected(id) })
	stop()
	if after, err := f.st.GetNode(ctx, id); err != nil || after.CredentialHash != n.CredentialHash {
		t.Errorf("Run joined again (%+v, %v)", after, err)
	}
}

// A node that connects serving sessions has its record's URL set to its
// server's (SetURL), and moves it along when it connects to another;
// the server relays calls to it (Transport), Host kept; each heartbeat
// the server stored is told to the node (OnHeartbeat).
func TestServingNodeIsRoutedToItsServer(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	f1, f2 := newFixture(t, st, testJoinToken), newFixture(t, st, testJoinToken)
	f1.hub.SetURL("http://s1.example:7070")
	f2.hub.SetURL("http://s2.example:7070")
	home := t.TempDir()
	var beats atomic.Int64
	a := f1.servingAgent(home, &beats)
	id, err := a.Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f1.hub.Transport(id); ok {
		t.Error("Transport of a node not connected yet: ok")
	}
	stop := run(t, a)
	eventually(t, "its URL is S1's", func() bool {
		n, err := st.GetNode(ctx, id)
		return err == nil && n.URL == "http://s1.example:7070" && f1.hub.Connected(id)
	})
	eventually(t, "heartbeats told to the node", func() bool { return beats.Load() >= 2 })
	// S1's E2B API starts after the node connected: its E2B URL is the
	// node's now.
	f1.hub.SetE2BURL(ctx, "http://s1.example:49999")
	if n, err := st.GetNode(ctx, id); err != nil || n.E2BURL != "http://s1.example:49999" {
		t.Errorf("after SetE2BURL, the node's record: %+v, %v; want S1's E2B URL", n, err)
	}

	rt, ok := f1.hub.Transport(id)
	if !ok {
		t.Fatal("Transport of a connected node: not ok")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://s1.example:7070/v1/sessions/s-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "node api: s1.example:7070 /v1/sessions/s-1" {
		t.Errorf("relayed: %q", b)
	}
	if _, ok := f2.hub.Transport(id); ok {
		t.Error("Transport of another server's node: ok")
	}

	// The node moves to S2; S1 can no longer relay to it.
	stop()
	eventually(t, "S1 sees the drop", func() bool { _, ok := f1.hub.Transport(id); return !ok })
	run(t, f2.servingAgent(home, &beats))
	eventually(t, "its URL is S2's", func() bool {
		n, err := st.GetNode(ctx, id)
		return err == nil && n.URL == "http://s2.example:7070"
	})
	if _, ok := f2.hub.Transport(id); !ok {
		t.Error("Transport at S2: not ok")
	}
	if n, err := st.GetNode(ctx, id); err != nil || n.E2BURL != "" {
		t.Errorf("at S2, which serves no E2B API: %+v, %v; want no E2B URL", n, err)
	}

	// Restarted serving no sessions (no shared store): its URL is
	// cleared, as nothing there would answer.
	f2.stop()
	plain := NewAgent(AgentConfig{Server: f1.srv.URL, Name: "node-s", Home: home, Heartbeat: time.Hour,
		Probe: func(context.Context) (store.NodeCapacity, error) { return testCapacity(1), nil }})
	run(t, plain)
	eventually(t, "its URL cleared", func() bool {
		n, err := st.GetNode(ctx, id)
		return err == nil && n.URL == "" && f1.hub.Connected(id)
	})
}

// A node serving sessions that connects to a server advertising no URL
// keeps its record's URL, and the server says why in its log; a node
// not serving sessions is not routed to; the server's embedded node has
// no transport.
func TestServingNodeAtAServerWithNoURL(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, openStore(t), testJoinToken)
	var beats atomic.Int64
	a := f.servingAgent(t.TempDir(), &beats)
	id, err := a.Join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	eventually(t, "connected", func() bool { return f.hub.Connected(id) })
	if n, err := f.st.GetNode(ctx, id); err != nil || n.URL != "" {
		t.Errorf("the node's record: %+v, %v; want no URL", n, err)
	}
	if !strings.Contains(f.logs.String(), "advertises no URL") {
		t.Errorf("no warning in the server's log:\n%s", f.logs)
	}

	f.hub.SetURL("http://s.example:7070")
	plain, _ := f.runAgent(t.TempDir(), testJoinToken, time.Hour)
	eventually(t, "the plain node connected", func() bool { return plain.NodeID() != "" && f.hub.Connected(plain.NodeID()) })
	if n, err := f.st.GetNode(ctx, plain.NodeID()); err != nil || n.URL != "" {
		t.Errorf("a node not serving sessions: %+v, %v; want no URL", n, err)
	}

	h := NewHub(HubConfig{Store: f.st, Local: "node-local"})
	if _, ok := h.Transport("node-local"); ok {
		t.Error("Transport of the embedded node: ok")
	}
}

// Split gives a call relayed for the E2B API (HeaderAPI) to the node's
// E2B handler, any other to cove's API; with no E2B handler such a call
// is a 503.
func TestSplit(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	}
	for _, c := range []struct {
		header string
		e2b    http.Handler
		status int
		body   string
	}{
		{"", named("e2b"), http.StatusOK, "cove"},
		{APIE2B, named("e2b"), http.StatusOK, "e2b"},
		{"other", named("e2b"), http.StatusOK, "cove"},
		{APIE2B, nil, http.StatusServiceUnavailable, "serves no E2B API"},
	} {
		req := httptest.NewRequest("GET", "/sandboxes/x", nil)
		if c.header != "" {
			req.Header.Set(HeaderAPI, c.header)
		}
		w := httptest.NewRecorder()
		Split(named("cove"), c.e2b).ServeHTTP(w, req)
		if w.Code != c.status || !strings.Contains(w.Body.String(), c.body) {
			t.Errorf("%s %q: %d %s, want %d %s", HeaderAPI, c.header, w.Code, w.Body, c.status, c.body)
		}
	}
}
