package apiserver

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// A node joins and connects through the gate without an API token, and
// its connection outlives the server's read and write deadlines, which
// hold for every request until its token is checked.
func TestNodeLinkThroughTheGate(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "nodes.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	hub := nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: "gate-join-token"})
	t.Cleanup(hub.Close)
	e := newServedEnv(t, Timeouts{Read: time.Second, Write: time.Second}, func(c *Config) { c.NodeLink = hub })

	agentLog := &logSink{}
	agent := nodelink.NewAgent(nodelink.AgentConfig{Server: e.srv.URL, JoinToken: "gate-join-token", Name: "gate-node",
		Log:  slog.New(slog.NewTextHandler(agentLog, nil)),
		Home: t.TempDir(), Heartbeat: time.Hour,
		Probe:   func(context.Context) (store.NodeCapacity, error) { return store.NodeCapacity{VCPUs: 1}, nil },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "node here") })})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(30 * time.Second)
	for agent.NodeID() == "" || !hub.Connected(agent.NodeID()) {
		if time.Now().After(deadline) {
			t.Fatalf("the node did not connect through the gate; log:\n%s", e.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // past the server's deadlines
	resp, err := hub.Client(agent.NodeID()).Get("http://node/")
	if err != nil {
		t.Fatalf("call the node after the deadlines: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "node here" {
		t.Errorf("node answered %q", b)
	}
	if n := strings.Count(agentLog.String(), "nodelink: connected"); n != 1 {
		t.Errorf("the node connected %d times; want once, its connection kept past the deadlines:\n%s", n, agentLog)
	}
	if log := e.logs.String(); !strings.Contains(log, nodelink.JoinPath) || !strings.Contains(log, "node.join") {
		t.Errorf("the gate did not log the join:\n%s", log)
	}
}

// Without a NodeLink, a join is refused saying how to enable it.
func TestJoinWithoutNodeLinkIsForbidden(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Post(e.srv.URL+nodelink.JoinPath, "application/json", strings.NewReader(`{"name":"n"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "joining is disabled: start the server with --join-token-file") {
		t.Errorf("join without a NodeLink: %s %s", resp.Status, b)
	}
}
