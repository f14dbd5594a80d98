package apiserver

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

func TestMetricsExposeSessionsExecAndRequests(t *testing.T) {
	e := newEnv(t)
	e.fake.mu.Lock()
	e.fake.sessions["f1"] = api.Session{ID: "f1", State: api.StateFailed}
	e.fake.mu.Unlock()
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { return ExitStatus{} })
	decode[api.Session](t, e.do("POST", "/v1/sessions", nil), 201) // BootMillis 120
	decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"true"}}), 200)
	decode[api.Session](t, e.do("POST", "/v1/sessions/s1/park", nil), 200)
	decode[api.Session](t, e.do("POST", "/v1/sessions/s1/wake", nil), 200)
	decode[api.Session](t, e.do("POST", "/v1/sessions/s1/park", nil), 200)
	wantError(t, e.do("POST", "/v1/sessions/f1/wake", nil), 409, api.CodeConflict) // not counted
	e.server.Metrics().ObserveBoot(2 * time.Second)
	e.logs.waitFor(t, "status=409") // the last request is counted after its answer

	resp := e.do("GET", "/metrics", nil, "Authorization", "")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d %s", resp.StatusCode, body)
	}
	text := string(body)
	// Every state is reported, zero or not.
	for _, st := range api.States {
		if !strings.Contains(text, `cove_sessions{state="`+st+`"}`) {
			t.Errorf("metrics lack cove_sessions for state %s", st)
		}
	}
	for _, want := range []string{
		`cove_sessions{state="running"} 1`,
		`cove_sessions{state="parked"} 1`,
		`cove_sessions{state="failed"} 1`,
		`cove_sessions{state="creating"} 0`,
		`cove_sessions{state="parking"} 0`,
		`cove_sessions{state="waking"} 0`,
		`cove_sessions{state="stopping"} 0`,
		`cove_exec_seconds_count 1`,
		`cove_exec_seconds_bucket{le="0.001"}`,
		`cove_exec_seconds_bucket{le="60"} 1`,
		`cove_boot_seconds_count 2`,
		`cove_http_requests_total{code="201",method="POST"} 1`,
		`cove_http_requests_total{code="200",method="POST"} 4`,
		`cove_http_requests_total{code="409",method="POST"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// The node cache's metrics: evictions counted with the bytes they freed,
// and its gauges only once WatchCache gives them a source.
func TestMetricsCache(t *testing.T) {
	e := newEnv(t)
	scrape := func() string {
		t.Helper()
		resp := e.do("GET", "/metrics", nil, "Authorization", "")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("metrics: %d %s", resp.StatusCode, body)
		}
		return string(body)
	}
	if text := scrape(); strings.Contains(text, "cove_cache_bytes") || !strings.Contains(text, "cove_cache_evictions_total 0") {
		t.Errorf("metrics before any eviction, with no cache watched:\n%s", text)
	}
	m := e.server.Metrics()
	m.ObserveEviction(3 << 20)
	m.ObserveEviction(1 << 20)
	m.WatchCache(func() (int64, int64) { return 5 << 20, 8 << 20 })
	text := scrape()
	for _, want := range []string{
		"cove_cache_evictions_total 2",
		"cove_cache_evicted_bytes_total 4.194304e+06",
		"cove_cache_bytes 5.24288e+06",
		"cove_cache_size_bytes 8.388608e+06",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
