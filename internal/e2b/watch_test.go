package e2b_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// envd makes one request to envd for sandbox sbx and returns the status
// and the body.
func (e *fakeEnv) envd(sbx sandboxAnswer, method, path, contentType, body string) (int, []byte) {
	e.t.Helper()
	return e.envdWith(sbx, method, path, contentType, strings.NewReader(body))
}

// envdWith is envd with a body of any reader (one of unknown length is
// sent chunked) and more headers, as name, value pairs.
func (e *fakeEnv) envdWith(sbx sandboxAnswer, method, path, contentType string, body io.Reader, hdr ...string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("E2b-Sandbox-Id", sbx.SandboxID)
	req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// rpc makes a unary Connect call of the filesystem service.
func (e *fakeEnv) rpc(sbx sandboxAnswer, method, body string) (int, []byte) {
	e.t.Helper()
	return e.envd(sbx, "POST", "/filesystem.Filesystem/"+method, "application/json", body)
}

func (e *fakeEnv) rpcCode(what string, sbx sandboxAnswer, method, body string, status int, code string) {
	e.t.Helper()
	got, b := e.rpc(sbx, method, body)
	var eb struct {
		Code string `json:"code"`
	}
	if err := json.Unmarshal(b, &eb); err != nil || got != status || eb.Code != code {
		e.t.Errorf("%s: %d %s, want %d with code %s", what, got, b, status, code)
	}
}

type watchEvent struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// polledUntil polls watcher id until every one of want ("TYPE name") has
// come, and returns all it got.
func (e *fakeEnv) polledUntil(sbx sandboxAnswer, id string, want ...string) []string {
	e.t.Helper()
	var got []string
	for {
		if !slices.ContainsFunc(want, func(k string) bool { return !slices.Contains(got, k) }) {
			return got
		}
		status, b := e.rpc(sbx, "GetWatcherEvents", `{"watcherId":"`+id+`"}`)
		var ans struct {
			Events []watchEvent `json:"events"`
		}
		if status != http.StatusOK || json.Unmarshal(b, &ans) != nil {
			e.t.Fatalf("GetWatcherEvents: %d %s (waiting for %q, got %q)", status, b, want, got)
		}
		for _, ev := range ans.Events {
			got = append(got, ev.Type+" "+ev.Name)
		}
	}
}

// TestFakeWatchers serves the polling watch calls (the Python SDK's) in
// front of the real session manager over the fake guest: events of
// writes, the bound per sandbox, removal, the end of a watch with a
// pause, and bad input.
func TestFakeWatchers(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	if st, b := e.rpc(sbx, "MakeDir", `{"path":"/tmp/w/sub"}`); st != http.StatusOK {
		t.Fatalf("MakeDir: %d %s", st, b)
	}
	create := func(body string) string {
		t.Helper()
		st, b := e.rpc(sbx, "CreateWatcher", body)
		var ans struct {
			WatcherID string `json:"watcherId"`
		}
		if st != http.StatusOK || json.Unmarshal(b, &ans) != nil || ans.WatcherID == "" {
			t.Fatalf("CreateWatcher %s: %d %s", body, st, b)
		}
		return ans.WatcherID
	}
	flat := create(`{"path":"/tmp/w"}`)
	deep := create(`{"path":"/tmp/w","recursive":true}`)
	write := func(p string) {
		t.Helper()
		if st, b := e.envd(sbx, "POST", "/files?path="+p, "application/octet-stream", "data"); st != http.StatusOK {
			t.Fatalf("write %s: %d %s", p, st, b)
		}
	}
	write("/tmp/w/sub/b")
	write("/tmp/w/a")
	got := e.polledUntil(sbx, flat, "EVENT_TYPE_CREATE a", "EVENT_TYPE_WRITE a")
	if slices.Contains(got, "EVENT_TYPE_CREATE sub/b") {
		t.Errorf("a watcher that is not recursive got sub/b: %q", got)
	}
	e.polledUntil(sbx, deep, "EVENT_TYPE_CREATE sub/b", "EVENT_TYPE_WRITE sub/b", "EVENT_TYPE_CREATE a")

	// Bad input changes nothing.
	e.rpcCode("a missing directory", sbx, "CreateWatcher", `{"path":"/tmp/nope"}`, http.StatusNotFound, "not_found")
	e.rpcCode("a file", sbx, "CreateWatcher", `{"path":"/tmp/w/a"}`, http.StatusBadRequest, "invalid_argument")
	e.rpcCode("an unknown watcher", sbx, "GetWatcherEvents", `{"watcherId":"nope"}`, http.StatusNotFound, "not_found")
	e.rpcCode("remove an unknown watcher", sbx, "RemoveWatcher", `{"watcherId":"nope"}`, http.StatusNotFound, "not_found")
	e.rpcCode("a malformed body", sbx, "CreateWatcher", `{"path":`, http.StatusBadRequest, "invalid_argument")

	// At most 16 per sandbox; removing one makes room.
	ids := []string{flat, deep}
	for len(ids) < 16 {
		ids = append(ids, create(`{"path":"/tmp/w"}`))
	}
	e.rpcCode("a 17th watcher", sbx, "CreateWatcher", `{"path":"/tmp/w"}`, http.StatusTooManyRequests, "resource_exhausted")
	for _, id := range ids[2:] {
		if st, b := e.rpc(sbx, "RemoveWatcher", `{"watcherId":"`+id+`"}`); st != http.StatusOK {
			t.Fatalf("RemoveWatcher: %d %s", st, b)
		}
	}
	e.rpcCode("a removed watcher", sbx, "GetWatcherEvents", `{"watcherId":"`+ids[2]+`"}`, http.StatusNotFound, "not_found")

	// A pause ends the watches: after the resume, a watcher answers its
	// last events, then not_found.
	e.ok(nil, http.StatusNoContent, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	e.ok(nil, http.StatusCreated, e.alice, "POST", "/v2/sandboxes/"+sbx.SandboxID+"/connect", `{"timeout":600}`)
	for {
		st, b := e.rpc(sbx, "GetWatcherEvents", `{"watcherId":"`+flat+`"}`)
		if st == http.StatusNotFound {
			break
		}
		if st != http.StatusOK {
			t.Fatalf("GetWatcherEvents after the pause: %d %s, want its last events, then 404", st, b)
		}
	}
	again := create(`{"path":"/tmp/w"}`)
	write("/tmp/w/c")
	e.polledUntil(sbx, again, "EVENT_TYPE_CREATE c", "EVENT_TYPE_WRITE c")
}

// TestFakeWatchDir serves the WatchDir stream (the JavaScript SDK's
// files.watchDir): the start event first, the events of writes, and a
// clean end of the stream when the sandbox pauses.
func TestFakeWatchDir(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	msg := `{"path":"/tmp","recursive":false}`
	body := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	body = append(body, msg...)
	req, err := http.NewRequest("POST", e.url+"/filesystem.Filesystem/WatchDir", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("E2b-Sandbox-Id", sbx.SandboxID)
	req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("WatchDir: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	next := func() (byte, string) {
		t.Helper()
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("WatchDir: read an envelope: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatalf("WatchDir: read an envelope: %v", err)
		}
		// protojson's spacing varies from build to build: compare
		// compact JSON.
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			t.Fatalf("WatchDir: an envelope of %q: %v", b, err)
		}
		return hdr[0], c.String()
	}
	if flags, m := next(); flags != 0 || m != `{"start":{}}` {
		t.Fatalf("first message: flags %d %s, want the start event", flags, m)
	}
	if st, b := e.envd(sbx, "POST", "/files?path=/tmp/x", "application/octet-stream", "data"); st != http.StatusOK {
		t.Fatalf("write: %d %s", st, b)
	}
	var got []string
	for !slices.Contains(got, `{"filesystem":{"name":"x","type":"EVENT_TYPE_WRITE"}}`) {
		flags, m := next()
		if flags != 0 {
			t.Fatalf("the stream ended (%s) before the write's event; got %q", m, got)
		}
		got = append(got, m)
	}
	if got[0] != `{"filesystem":{"name":"x","type":"EVENT_TYPE_CREATE"}}` {
		t.Errorf("events %q: want the create first", got)
	}
	e.ok(nil, http.StatusNoContent, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	for {
		flags, m := next()
		if flags == 0 {
			continue // an event or a keepalive sent before the end
		}
		if flags != 2 || m != "{}" {
			t.Fatalf("the stream's end after the pause: flags %d %s, want a clean end", flags, m)
		}
		break
	}
}
