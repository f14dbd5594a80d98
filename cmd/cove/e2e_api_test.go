package main_test

// Helpers of the end-to-end test that speak HTTP to the real server (its
// error answers, /metrics), and the subtests that check the real server's
// 404 and 409 answers, which internal/apiserver's tests check only against
// a fake session manager.

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// in makes e's helpers fail t, the subtest now running, instead of the
// top-level test (whose FailNow may not be called from a subtest); it
// returns what restores the top-level test.
func (e *e2e) in(t *testing.T) (restore func()) {
	old := e.t
	e.t = t
	return func() { e.t = old }
}

// wantAPIError sends a request (with the token; body as JSON) that must
// fail with status and the error code, its message naming every one of
// names; it returns the message.
func (e *e2e) wantAPIError(method, path string, body []byte, status int, code string, names ...string) string {
	e.t.Helper()
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	resp := e.request(method, path, ct, body)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read the answer: %v", method, path, err)
	}
	var er api.ErrorResponse
	if err := json.Unmarshal(b, &er); err != nil || resp.StatusCode != status || er.Error.Code != code {
		e.t.Fatalf("%s %s: %d %s, want %d with code %q", method, path, resp.StatusCode, b, status, code)
	}
	for _, n := range names {
		if !strings.Contains(er.Error.Message, n) {
			e.t.Errorf("%s %s: message %q does not say %q", method, path, er.Error.Message, n)
		}
	}
	return er.Error.Message
}

// wantCLIError runs a cove command that must fail with exit status 1,
// saying every one of names on stderr.
func (e *e2e) wantCLIError(stdin []byte, args []string, names ...string) {
	e.t.Helper()
	out, errOut, code := e.run(stdin, args...)
	if code != 1 {
		e.t.Fatalf("cove %q: exit %d, stdout %q, stderr %q; want exit 1", args, code, out, errOut)
	}
	for _, n := range names {
		if !strings.Contains(errOut, n) {
			e.t.Errorf("cove %q: stderr %q does not say %q", args, errOut, n)
		}
	}
}

// inspect runs 'cove session inspect ID'.
func (e *e2e) inspect(id string) api.Session {
	e.t.Helper()
	var s api.Session
	out := e.ok(nil, "session", "inspect", id)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		e.t.Fatalf("session inspect %s: %v: %q", id, err, out)
	}
	return s
}

// waitState waits, through 'cove session inspect' (which wakes nothing),
// until id is in state want, and returns it. The deadline only bounds a
// session that never gets there.
func (e *e2e) waitState(id, want string, within time.Duration) api.Session {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := e.inspect(id)
		if s.State == want {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("session %s still %s (%s) after %s, want %s%s", id, s.State, s.Error, within, want, e.serverLog())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// metrics scrapes GET /metrics, without the token as Prometheus does, and
// returns its samples keyed as exposed: `cove_sessions{state="parked"}`.
func (e *e2e) metrics() map[string]float64 {
	e.t.Helper()
	resp, err := http.Get("http://" + e.addr + "/metrics")
	if err != nil {
		e.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/plain") {
		e.t.Fatalf("GET /metrics: %d, Content-Type %q; want 200 and Prometheus' text format", resp.StatusCode, ct)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			e.t.Fatalf("GET /metrics: a line not in the text format: %q", line)
		}
		m[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		e.t.Fatalf("GET /metrics: %v", err)
	}
	return m
}

// wantMetrics checks samples of m against want. A counter never
// incremented is absent: want 0 then means absent or 0.
func (e *e2e) wantMetrics(m map[string]float64, want map[string]float64) {
	e.t.Helper()
	for k, w := range want {
		got, ok := m[k]
		if got != w || (!ok && w != 0) {
			e.t.Errorf("/metrics: %s = %v (present %v), want %v", k, got, ok, w)
		}
	}
}

// testUnknownSession checks the real server's 404s for an id it never had,
// through the CLI and over HTTP: each names the id.
func testUnknownSession(t *testing.T, e *e2e) {
	defer e.in(t)()
	const id = "no-such-session"
	for _, args := range [][]string{
		{"exec", id, "--", "true"},
		{"session", "inspect", id},
		{"park", id},
		{"wake", id},
		{"park", id, "--until", "github:push"},
		{"cp", id + ":/etc/hostname", "-"},
		{"rm", id},
	} {
		e.wantCLIError(nil, args, `session "`+id+`" not found`)
	}
	for _, r := range []struct {
		method, path string
		body         []byte
	}{
		{"GET", "/v1/sessions/" + id, nil},
		{"DELETE", "/v1/sessions/" + id, nil},
		{"POST", "/v1/sessions/" + id + "/park", nil},
		{"POST", "/v1/sessions/" + id + "/park", []byte(`{"until":["github:push"],"timeout":"1h"}`)},
		{"POST", "/v1/sessions/" + id + "/wake", nil},
		{"POST", "/v1/sessions/" + id + "/exec", []byte(`{"argv":["true"]}`)},
		{"GET", "/v1/sessions/" + id + "/files?path=/etc/hostname", nil},
	} {
		e.wantAPIError(r.method, r.path, r.body, http.StatusNotFound, api.CodeNotFound, `session "`+id+`" not found`)
	}
}

// testFailedSession kills the QEMU process of a running session from
// outside: the server marks the session failed with the reason (never a
// silent reboot), and every call that needs its VM is a 409 naming the
// state, through the CLI and over HTTP.
func testFailedSession(t *testing.T, e *e2e, id string) {
	defer e.in(t)()
	pid := qemu.PIDOf(e.home, id)
	if pid == 0 {
		t.Fatalf("no QEMU process for %s", id)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s := e.waitState(id, api.StateFailed, 2*time.Minute)
	if s.Error == "" {
		t.Errorf("failed session %s has no reason: %+v", id, s)
	}
	t.Logf("%s failed: %s", id, s.Error)

	e.wantCLIError(nil, []string{"exec", id, "--", "true"}, "session "+id+" is failed")
	e.wantCLIError(nil, []string{"cp", id + ":/etc/hostname", "-"}, "session "+id+" is failed")
	e.wantCLIError(nil, []string{"park", id}, "park "+id+": session is failed")
	e.wantCLIError(nil, []string{"wake", id}, "wake "+id+": session is failed")
	e.wantCLIError(nil, []string{"park", id, "--until", "github:push"}, "park "+id+": session is failed")
	sid := "/v1/sessions/" + id
	e.wantAPIError("POST", sid+"/exec", []byte(`{"argv":["true"]}`), http.StatusConflict, api.CodeConflict, "session "+id+" is failed", s.Error)
	e.wantAPIError("GET", sid+"/files?path=/etc/hostname", nil, http.StatusConflict, api.CodeConflict, "session "+id+" is failed")
	e.wantAPIError("POST", sid+"/park", nil, http.StatusConflict, api.CodeConflict, "park "+id+": session is failed")
	e.wantAPIError("POST", sid+"/wake", nil, http.StatusConflict, api.CodeConflict, "wake "+id+": session is failed")

	// None of these brought it back.
	if s := e.inspect(id); s.State != api.StateFailed {
		t.Fatalf("%s after the refused calls: %s, want failed", id, s.State)
	}
	if pid := qemu.PIDOf(e.home, id); pid != 0 {
		t.Fatalf("%s is failed, yet QEMU %d runs for it", id, pid)
	}
}
