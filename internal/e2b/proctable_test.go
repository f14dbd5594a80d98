package e2b_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/e2b"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
)

// connectStream opens a process stream (Start or Connect) and returns a
// reader of its messages, compacted JSON, and the end's body.
func (e *fakeEnv) connectStream(ctx context.Context, sbx sandboxAnswer, method, msg string) func() (end bool, m string) {
	e.t.Helper()
	body := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	body = append(body, msg...)
	req, err := http.NewRequestWithContext(ctx, "POST", e.url+"/process.Process/"+method, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("E2b-Sandbox-Id", sbx.SandboxID)
	req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
	req.Header.Set("Content-Type", "application/connect+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	br := bufio.NewReader(resp.Body)
	return func() (bool, string) {
		e.t.Helper()
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			e.t.Fatalf("%s: read an envelope: %v", method, err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(br, b); err != nil {
			e.t.Fatalf("%s: read an envelope: %v", method, err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			e.t.Fatalf("%s: %q: %v", method, b, err)
		}
		return hdr[0]&2 != 0, c.String()
	}
}

// restartE2B replaces the E2B server with a new one over the same
// session manager and store, as a restarted cove server has: the old one's
// memory (its process table) is gone.
func (e *fakeEnv) restartE2B() {
	e.t.Helper()
	e.replaceE2B(nil)
}

// replaceE2B replaces the E2B server with a new one, its Config as
// newFakeEnv's but for what mod changes.
func (e *fakeEnv) replaceE2B(mod func(*e2b.Config)) {
	e.t.Helper()
	e.e2b.Close()
	cfg := e2b.Config{Sessions: e.mgr, Records: e.st, Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: e.st}),
		Authorize: (&apiserver.PolicyGate{Policy: policy.New(), Records: e.st}).Authorize,
		Key:       bytes.Repeat([]byte{7}, 32), BaseImage: "tiny"}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := e2b.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	e.t.Cleanup(func() { hs.Close(); srv.Close() })
	e.e2b, e.url = srv, hs.URL
}

// TestFakeProcessTableAcrossRestart starts a command through envd, then
// replaces the E2B server by a new one (a restart: its process table is
// gone from memory): the new one lists the command by pid from the
// guest's copy of the table, connects to it, feeds it stdin and kills it;
// the copy goes with the command's end.
func TestFakeProcessTableAcrossRestart(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	ctx, cancel := context.WithCancel(context.Background())
	next := e.connectStream(ctx, sbx, "Start", `{"process":{"cmd":"cat","envs":{"A":"b"}},"tag":"the-cat","stdin":true}`)
	_, m := next()
	var start struct {
		Event struct {
			Start struct {
				PID int `json:"pid"`
			} `json:"start"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(m), &start); err != nil || start.Event.Start.PID == 0 {
		t.Fatalf("Start: first message %s", m)
	}
	pid := start.Event.Start.PID
	// The guest's copy is written after the start event.
	tableFile := "/run/cove-e2b/procs/" + itoa(pid)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := e.rpc(sbx, "Stat", `{"path":"`+tableFile+`"}`); st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the guest a minute after the start", tableFile)
		}
	}
	cancel() // the client goes; the command runs on

	e.restartE2B()
	unary := func(method, body string) (int, string) {
		st, b := e.envd(sbx, "POST", "/process.Process/"+method, "application/json", body)
		var c bytes.Buffer
		_ = json.Compact(&c, b)
		return st, c.String()
	}
	st, list := unary("List", `{}`)
	want := `{"processes":[{"config":{"cmd":"cat","envs":{"A":"b"}},"pid":` + itoa(pid) + `,"tag":"the-cat"}]}`
	if st != http.StatusOK || list != want {
		t.Fatalf("List after the restart: %d %s, want %s", st, list, want)
	}
	next = e.connectStream(context.Background(), sbx, "Connect", `{"process":{"pid":`+itoa(pid)+`}}`)
	if _, m := next(); !strings.Contains(m, `"start":{"pid":`+itoa(pid)+`}`) {
		t.Fatalf("Connect: first message %s", m)
	}
	if st, b := unary("SendInput", `{"process":{"tag":"the-cat"},"input":{"stdin":"aGkK"}}`); st != http.StatusOK {
		t.Fatalf("SendInput: %d %s", st, b)
	}
	for {
		end, m := next()
		if end {
			t.Fatalf("the stream ended before the echo: %s", m)
		}
		if strings.Contains(m, `"stdout":"aGkK"`) {
			break
		}
	}
	if st, b := unary("SendSignal", `{"process":{"pid":`+itoa(pid)+`},"signal":"SIGNAL_SIGKILL"}`); st != http.StatusOK {
		t.Fatalf("SendSignal: %d %s", st, b)
	}
	for {
		end, m := next()
		if end {
			if m != "{}" {
				t.Errorf("the stream's end: %s", m)
			}
			break
		}
		if strings.Contains(m, `"end":`) && !strings.Contains(m, `"status":"signal: killed"`) {
			t.Errorf("end event %s, want killed", m)
		}
	}
	if st, list := unary("List", `{}`); st != http.StatusOK || list != `{}` {
		t.Errorf("List after the kill: %d %s, want none", st, list)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := e.rpc(sbx, "Stat", `{"path":"`+tableFile+`"}`); st == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still in the guest a minute after the command's end", tableFile)
		}
	}
	// A third server finds nothing to attach to.
	e.restartE2B()
	if st, list := unary("List", `{}`); st != http.StatusOK || list != `{}` {
		t.Errorf("List after another restart: %d %s, want none", st, list)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestFakeForkHasTheParentsProcesses: a fork's guest is a copy of its
// parent's, the guest's copy of the process table included, so the fork's
// table holds the parent's commands (the fork's copies, same pids), which
// are connected to and fed in the fork alone.
func TestFakeForkHasTheParentsProcesses(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := e.connectStream(ctx, sbx, "Start", `{"process":{"cmd":"cat"},"tag":"t","stdin":true}`)
	_, m := next()
	var start struct {
		Event struct {
			Start struct {
				PID int `json:"pid"`
			} `json:"start"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(m), &start); err != nil || start.Event.Start.PID == 0 {
		t.Fatalf("Start: first message %s", m)
	}
	pid := itoa(start.Event.Start.PID)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := e.rpc(sbx, "Stat", `{"path":"/run/cove-e2b/procs/`+pid+`"}`); st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no entry of the process in the guest a minute after its start")
		}
	}
	var forks []forkAnswer
	e.ok(&forks, http.StatusCreated, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/fork", `{}`)
	if len(forks) != 1 || forks[0].Sandbox == nil {
		t.Fatalf("fork: %+v", forks)
	}
	f := *forks[0].Sandbox
	st, b := e.envd(f, "POST", "/process.Process/List", "application/json", "{}")
	var c bytes.Buffer
	_ = json.Compact(&c, b)
	if want := `{"processes":[{"config":{"cmd":"cat"},"pid":` + pid + `,"tag":"t"}]}`; st != http.StatusOK || c.String() != want {
		t.Fatalf("the fork's List: %d %s, want %s", st, c.String(), want)
	}
	nextF := e.connectStream(context.Background(), f, "Connect", `{"process":{"pid":`+pid+`}}`)
	if _, m := nextF(); !strings.Contains(m, `"start":{"pid":`+pid+`}`) {
		t.Fatalf("Connect in the fork: %s", m)
	}
	if st, b := e.envd(f, "POST", "/process.Process/SendInput", "application/json", `{"process":{"pid":`+pid+`},"input":{"stdin":"Zm9yawo="}}`); st != http.StatusOK {
		t.Fatalf("SendInput in the fork: %d %s", st, b)
	}
	for {
		end, m := nextF()
		if end {
			t.Fatalf("the fork's stream ended before the echo: %s", m)
		}
		if strings.Contains(m, `"stdout":"Zm9yawo="`) {
			break
		}
	}
	// The parent's command is its own: still listed there.
	st, b = e.envd(sbx, "POST", "/process.Process/List", "application/json", "{}")
	if st != http.StatusOK || !strings.Contains(string(b), pid) {
		t.Errorf("the parent's List: %d %s", st, b)
	}
}
