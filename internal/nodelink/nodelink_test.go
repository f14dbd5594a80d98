package nodelink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

const testJoinToken = "join-secret-for-tests"

// syncBuffer is a log sink the test reads while the hub and agent write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	t    *testing.T
	st   *sqlite.Store
	hub  *Hub
	srv  *httptest.Server
	logs *syncBuffer
	// nodeHandler, if set, is what runAgent's node serves.
	nodeHandler http.Handler
}

func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// newFixture serves a hub over real HTTP, with a node-facing handler that
// answers which node called.
func newFixture(t *testing.T, st *sqlite.Store, joinToken string) *fixture {
	t.Helper()
	f := &fixture{t: t, st: st, logs: &syncBuffer{}}
	f.start(joinToken, "")
	return f
}

// start (re)starts the server, at addr if not "".
func (f *fixture) start(joinToken, addr string) {
	f.t.Helper()
	log := slog.New(slog.NewTextHandler(f.logs, nil))
	f.hub = NewHub(HubConfig{Store: f.st, JoinToken: joinToken, Log: log,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := NodeID(r.Context())
			fmt.Fprintf(w, "server saw %s %s from %s", r.Method, r.URL.Path, id)
		})})
	f.srv = httptest.NewUnstartedServer(f.hub)
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			f.t.Fatal(err)
		}
		f.srv.Listener = ln
	}
	f.srv.Start()
	srv, hub := f.srv, f.hub
	f.t.Cleanup(func() { hub.Close(); srv.Close() })
}

// stop stops the server as a crash would: every connection drops.
func (f *fixture) stop() {
	f.hub.Close()
	f.srv.CloseClientConnections()
	f.srv.Close()
}

func testCapacity(disk int64) store.NodeCapacity {
	return store.NodeCapacity{VCPUs: 2, MemoryMiB: 4096, DiskBytes: disk, Accel: "tcg", CPUModel: "test cpu",
		CPUFlags: []string{"sse2"}, QEMUVersion: "QEMU emulator version 8.2.2", KernelVersion: "6.8.0"}
}

// runAgent runs an agent on home until the test ends; its Run's error
// comes on the returned channel.
func (f *fixture) runAgent(home, joinToken string, heartbeat time.Duration) (*Agent, <-chan error) {
	f.t.Helper()
	var probes atomic.Int64
	var a *Agent
	handler := f.nodeHandler
	if handler == nil {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == InfoPath {
				json.NewEncoder(w).Encode(Info{ID: a.NodeID(), Name: "node-a", Version: "test"})
				return
			}
			fmt.Fprintf(w, "node answered %s %s", r.Method, r.URL.Path)
		})
	}
	a = NewAgent(AgentConfig{Server: f.srv.URL, JoinToken: joinToken, Name: "node-a", Labels: map[string]string{"zone": "z1"},
		Home: home, Heartbeat: heartbeat, Log: slog.New(slog.NewTextHandler(f.logs, nil)),
		Probe:   func(context.Context) (store.NodeCapacity, error) { return testCapacity(1000 + probes.Add(1)), nil },
		Handler: handler})
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- a.Run(ctx)
		close(finished)
	}()
	f.t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			f.t.Error("agent did not stop")
		}
	})
	return a, done
}

// eventually polls cond until it holds, failing the test after a
// generous while (a hang, not a speed check).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// A node joins with the join token, keeps its credential (0600; the store
// only its hash), connects, and each side calls the other over the
// connection; its heartbeats reach the store.
func TestJoinConnectCallBothWaysHeartbeat(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, openStore(t), testJoinToken)
	home := t.TempDir()
	a, _ := f.runAgent(home, testJoinToken, 50*time.Millisecond)

	eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
	id := a.NodeID()

	credPath := filepath.Join(home, CredentialFile)
	fi, err := os.Stat(credPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credential file mode %v, want 0600", fi.Mode().Perm())
	}
	cred, err := LoadCredential(credPath)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.st.GetNode(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "node-a" || n.Labels["zone"] != "z1" || n.CredentialHash != cred.Hash() {
		t.Errorf("stored node %+v, want name node-a, zone z1 and the credential's hash", n)
	}
	if strings.Contains(n.CredentialHash, string(cred)) {
		t.Error("the store holds the credential itself")
	}

	if got := get(t, f.hub.Client(id), "http://node/hello"); got != "node answered GET /hello" {
		t.Errorf("server → node: %q", got)
	}
	info, err := f.hub.Info(ctx, id)
	if err != nil || info.ID != id || info.Version != "test" {
		t.Errorf("Info: %+v, %v; want the node's id and version", info, err)
	}
	if _, err := f.hub.Info(ctx, "node-unknown"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Info of a node not connected: %v; want ErrNotConnected", err)
	}
	if got := get(t, a.Client(), "http://server/hello"); got != "server saw GET /hello from "+id {
		t.Errorf("node → server: %q", got)
	}

	first := n.Capacity.DiskBytes
	eventually(t, "heartbeats stored", func() bool {
		n, err := f.st.GetNode(ctx, id)
		return err == nil && n.Capacity.DiskBytes > first+2 && n.HeartbeatAt.After(n.JoinedAt)
	})
	if strings.Contains(f.logs.String(), string(cred)) {
		t.Error("the credential is in the logs")
	}
}

// A server that goes away and comes back at the same address gets the
// node back, and the node needs no join token to reconnect.
func TestNodeReconnectsAfterServerRestart(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	f := newFixture(t, st, testJoinToken)
	home := t.TempDir()
	a, _ := f.runAgent(home, testJoinToken, 50*time.Millisecond)
	eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
	id := a.NodeID()

	addr := f.srv.Listener.Addr().String()
	f.stop()
	eventually(t, "node sees the drop", func() bool { return !a.Connected() })
	before, err := st.GetNode(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	f.start("", addr) // joining now disabled: the node must not need it
	eventually(t, "node reconnected", func() bool { return f.hub.Connected(id) })
	if got := get(t, f.hub.Client(id), "http://node/x"); got != "node answered GET /x" {
		t.Errorf("server → node after restart: %q", got)
	}
	eventually(t, "heartbeat advances", func() bool {
		n, err := st.GetNode(ctx, id)
		return err == nil && n.HeartbeatAt.After(before.HeartbeatAt)
	})
	nodes, err := st.ListNodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes %v, %v; want the one", nodes, err)
	}
}

// A restarted node with its credential connects without the join token.
func TestRestartedNodeUsesItsCredential(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	home := t.TempDir()
	cred := joinHTTP(t, f, "node-a", testJoinToken).Credential
	if err := SaveCredential(filepath.Join(home, CredentialFile), cred); err != nil {
		t.Fatal(err)
	}
	a, _ := f.runAgent(home, "", time.Second)
	eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
}

func joinHTTP(t *testing.T, f *fixture, name, token string) JoinResponse {
	t.Helper()
	resp := postJoin(t, f, token, fmt.Sprintf(`{"name":%q,"capacity":{"vcpus":1}}`, name))
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("join: %s: %s", resp.Status, b)
	}
	var out JoinResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func postJoin(t *testing.T, f *fixture, token, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", f.srv.URL+JoinPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// errorOf reads an API error envelope.
func errorOf(t *testing.T, resp *http.Response) api.ErrorBody {
	t.Helper()
	defer resp.Body.Close()
	var e api.ErrorResponse
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("%s: no error envelope: %v", resp.Status, err)
	}
	return e.Error
}

// Bad joins are refused with a clear status and message, and store
// nothing.
func TestJoinRefusals(t *testing.T) {
	st := openStore(t)
	f := newFixture(t, st, testJoinToken)
	disabled := newFixture(t, st, "")
	good := `{"name":"n1","capacity":{"vcpus":1}}`
	for _, tc := range []struct {
		name   string
		f      *fixture
		token  string
		body   string
		status int
		msg    string
	}{
		{"no token", f, "", good, 401, "no join token"},
		{"wrong token", f, "wrong", good, 401, "wrong join token"},
		{"joining disabled", disabled, testJoinToken, good, 403, "joining is disabled: start the server with --join-token-file"},
		{"oversized body", f, testJoinToken, `{"name":"n1","labels":{"a":"` + strings.Repeat("x", MaxJoinBytes) + `"}}`, 413, "body over"},
		{"garbage JSON", f, testJoinToken, `{"name":`, 400, "not valid JSON"},
		{"unknown field", f, testJoinToken, `{"name":"n1","credential":"x"}`, 400, "not valid JSON"},
		{"invalid name", f, testJoinToken, `{"name":"Bad Name!"}`, 400, "node name"},
		{"no name", f, testJoinToken, `{}`, 400, "node name"},
		{"reserved name", f, testJoinToken, `{"name":"connect"}`, 400, "reserved"},
		{"invalid label", f, testJoinToken, `{"name":"n1","labels":{"a b":"c"}}`, 400, "label key"},
		{"fence past an hour", f, testJoinToken, `{"name":"n1","capacity":{"fence_after_ms":3600001}}`, 400, "fence_after_ms 3600001"},
		{"negative fence", f, testJoinToken, `{"name":"n1","capacity":{"fence_after_ms":-1}}`, 400, "fence_after_ms -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := postJoin(t, tc.f, tc.token, tc.body)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if e := errorOf(t, resp); !strings.Contains(e.Message, tc.msg) {
				t.Errorf("message %q, want it to say %q", e.Message, tc.msg)
			}
			nodes, err := st.ListNodes(context.Background())
			if err != nil || len(nodes) != 0 {
				t.Errorf("nodes after a refused join: %v, %v", nodes, err)
			}
		})
	}
}

// A heartbeat whose fence span is out of bounds (the servers would wait
// twice it before taking the node for dead) is refused 400 and leaves
// the record as it was; one within bounds is stored.
func TestHeartbeatFenceBounds(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	n := joinHTTP(t, f, "n1", testJoinToken)
	sess := dialLink(t, f, n.Credential, answer("n1"))
	eventually(t, "the node connects", func() bool { return f.hub.Connected(n.NodeID) })
	beat := func(body string) *http.Response {
		t.Helper()
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		return roundTrip(t, st, fmt.Sprintf("POST %s HTTP/1.1\r\nHost: server\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", HeartbeatPath, len(body), body))
	}
	before, err := f.st.GetNode(context.Background(), n.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{`{"vcpus":2,"fence_after_ms":3600001}`, `{"vcpus":2,"fence_after_ms":-5}`} {
		if resp := beat(body); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("heartbeat %s: %s, want 400", body, resp.Status)
		}
		got, err := f.st.GetNode(context.Background(), n.NodeID)
		if err != nil || got.Capacity.VCPUs != before.Capacity.VCPUs || !got.HeartbeatAt.Equal(before.HeartbeatAt) {
			t.Errorf("after the refused heartbeat %s: %+v, %v; want it as before (%+v)", body, got, err, before)
		}
	}
	if resp := beat(`{"vcpus":2,"fence_after_ms":15000}`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("heartbeat within bounds: %s", resp.Status)
	}
	if got, err := f.st.GetNode(context.Background(), n.NodeID); err != nil || got.Capacity.FenceAfter() != 15*time.Second {
		t.Errorf("after a heartbeat with a fence of 15 s: %+v, %v", got.Capacity, err)
	}
}

// Connects without a credential the store knows are refused 401, before
// any upgrade.
func TestConnectRefusals(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	unknown, err := NewCredential()
	if err != nil {
		t.Fatal(err)
	}
	for name, cred := range map[string]string{"none": "", "garbage": "hello", "unknown": string(unknown), "prefix only": "cnode_"} {
		t.Run(name, func(t *testing.T) {
			_, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(f.srv.URL, "http")+ConnectPath,
				&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + cred}}})
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("connect with %s credential: %v, %v; want 401", name, resp, err)
			}
		})
	}
}

// dialLink opens a control connection with cred by hand, serving h.
func dialLink(t *testing.T, f *fixture, cred Credential, h http.Handler) *yamux.Session {
	t.Helper()
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(f.srv.URL, "http")+ConnectPath,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + string(cred)}}})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(overWebSocket(c), yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	go serveStreams(sess, h, context.Background())
	t.Cleanup(func() { sess.Close() })
	return sess
}

func answer(s string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s) })
}

// A node's second connection replaces its first: the first is closed,
// calls go to the second, and the replacement is logged.
func TestSecondConnectionReplacesFirst(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	j := joinHTTP(t, f, "node-a", testJoinToken)
	first := dialLink(t, f, j.Credential, answer("first"))
	eventually(t, "first connected", func() bool { return f.hub.Connected(j.NodeID) })
	if got := get(t, f.hub.Client(j.NodeID), "http://node/"); got != "first" {
		t.Fatalf("got %q from the first connection", got)
	}
	dialLink(t, f, j.Credential, answer("second"))
	select {
	case <-first.CloseChan():
	case <-time.After(30 * time.Second):
		t.Fatal("the first connection stays open")
	}
	eventually(t, "calls reach the second", func() bool {
		resp, err := f.hub.Client(j.NodeID).Get("http://node/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b) == "second"
	})
	if !f.hub.Connected(j.NodeID) {
		t.Error("node not connected after the replacement")
	}
	if !strings.Contains(f.logs.String(), "previous connection is closed") {
		t.Error("the replacement is not logged")
	}
}

// A node that joins again by name keeps its id and gets a new
// credential; the old one is refused from then on.
func TestRejoinIssuesNewCredential(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	f := newFixture(t, st, testJoinToken)
	j1 := joinHTTP(t, f, "node-a", testJoinToken)
	old := dialLink(t, f, j1.Credential, answer("old"))
	j2 := joinHTTP(t, f, "node-a", testJoinToken)
	if j2.NodeID != j1.NodeID || j2.Credential == j1.Credential {
		t.Fatalf("rejoin: %s, new credential %v; want the same id and a new credential", j2.NodeID, j2.Credential != j1.Credential)
	}
	n, err := st.GetNode(ctx, j1.NodeID)
	if err != nil || n.CredentialHash != j2.Credential.Hash() {
		t.Fatalf("stored hash is not the new credential's (%v)", err)
	}
	select {
	case <-old.CloseChan():
	case <-time.After(30 * time.Second):
		t.Fatal("the old credential's connection stays open")
	}
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http")+ConnectPath,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + string(j1.Credential)}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("connect with the old credential: %v; want 401", err)
	}
}

// A node removed while connected stops, telling the operator to join it
// again; so does one started again with its stale credential.
func TestRemovedNodeStops(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	f := newFixture(t, st, testJoinToken)
	home := t.TempDir()
	a, done := f.runAgent(home, testJoinToken, 50*time.Millisecond)
	eventually(t, "node connected", func() bool { return a.NodeID() != "" && f.hub.Connected(a.NodeID()) })
	if err := st.DeleteNode(ctx, a.NodeID()); err != nil {
		t.Fatal(err)
	}
	wantStop := func(done <-chan error) {
		t.Helper()
		select {
		case err := <-done:
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "join it again") || !strings.Contains(err.Error(), CredentialFile) {
				t.Errorf("agent stopped with %v; want ErrRefused saying how to join again", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a removed node runs on")
		}
	}
	wantStop(done)
	_, done2 := f.runAgent(home, testJoinToken, 50*time.Millisecond)
	wantStop(done2)
}

// A node whose server refuses its join (a wrong token) stops at once with
// the server's reason, and keeps no credential.
func TestAgentJoinRefused(t *testing.T) {
	f := newFixture(t, openStore(t), testJoinToken)
	home := t.TempDir()
	_, done := f.runAgent(home, "wrong", time.Second)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "wrong join token") {
			t.Errorf("agent stopped with %v; want the server's reason", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an agent with a wrong join token runs on")
	}
	if _, err := os.Stat(filepath.Join(home, CredentialFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("credential file after a refused join: %v", err)
	}
}

// The server's own embedded node counts as connected; others only while
// their connection is up.
func TestLocalNodeIsConnected(t *testing.T) {
	h := NewHub(HubConfig{Store: openStore(t), Local: "node-local"})
	if !h.Connected("node-local") || h.Connected("node-other") || h.Connected("") {
		t.Error("Connected: want the local node only")
	}
}

// The wait before a reconnect is the backoff less at most half of it, so
// that nodes dropped at once spread out, and never more than it.
func TestJitterStaysWithinTheBackoff(t *testing.T) {
	for _, d := range []time.Duration{minBackoff, time.Second, maxBackoff} {
		for range 1000 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%v) = %v, want within [%v, %v]", d, j, d/2, d)
			}
		}
	}
}

// A join is announced (the audit log) before it changes anything; one
// that cannot be announced is refused with 503 and stores nothing.
func TestJoinAnnouncedFirst(t *testing.T) {
	st := openStore(t)
	var announced []string
	fail := false
	hub := NewHub(HubConfig{Store: st, JoinToken: testJoinToken, Announce: func(ctx context.Context, name string) error {
		if fail {
			return errors.New("log unavailable")
		}
		if _, err := st.GetNodeByName(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("announce of %s: the node is already stored (%v)", name, err)
		}
		announced = append(announced, name)
		return nil
	}})
	srv := httptest.NewServer(hub)
	t.Cleanup(srv.Close)
	f := &fixture{t: t, st: st, hub: hub, srv: srv}
	joinHTTP(t, f, "node-a", testJoinToken)
	if len(announced) != 1 || announced[0] != "node-a" {
		t.Errorf("announced %v, want [node-a]", announced)
	}
	fail = true
	resp := postJoin(t, f, testJoinToken, `{"name":"node-b"}`)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("join with the log down: %s, want 503", resp.Status)
	}
	resp.Body.Close()
	if _, err := st.GetNodeByName(context.Background(), "node-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a join that could not be announced stored its node (%v)", err)
	}
}
