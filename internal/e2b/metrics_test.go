package e2b_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

type metricAnswer struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// TestFakeMetrics serves GET /sandboxes/{id}/metrics in front of the real
// session manager over the fake guest, whose /proc files the test writes:
// each call takes a sample of the running sandbox (memory from
// /proc/meminfo, the CPU count from /proc/stat), the samples are kept
// and filtered by start and end, a paused sandbox takes none, and bad
// input is refused.
func TestFakeMetrics(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	files := map[string]string{
		"/proc/stat":    "cpu  100 0 50 800 10 0 0 0 0 0\ncpu0 50 0 25 400 5 0 0 0 0 0\ncpu1 50 0 25 400 5 0 0 0 0 0\nintr 1\n",
		"/proc/meminfo": "MemTotal:        1000 kB\nMemFree:          300 kB\nMemAvailable:     600 kB\nBuffers:           10 kB\nCached:           90 kB\n",
	}
	for p, data := range files {
		if st, b := e.envd(sbx, "POST", "/files?path="+p, "application/octet-stream", data); st != http.StatusOK {
			t.Fatalf("write %s: %d %s", p, st, b)
		}
	}
	path := "/sandboxes/" + sbx.SandboxID + "/metrics"
	var got []metricAnswer
	e.ok(&got, http.StatusOK, e.alice, "GET", path, "")
	if len(got) != 1 {
		t.Fatalf("metrics: %+v, want one sample", got)
	}
	m := got[0]
	if m.CPUCount != 2 || m.MemTotal != 1000*1024 || m.MemUsed != 400*1024 || m.MemCache != 100*1024 ||
		m.CPUUsedPct != 0 || m.TimestampUnix != m.Timestamp.Unix() || time.Since(m.Timestamp) > time.Hour {
		t.Errorf("sample %+v: want 2 CPUs, 1000 KiB of memory, 400 used, 100 cache, 0%% CPU (the same /proc/stat twice)", m)
	}
	e.ok(&got, http.StatusOK, e.alice, "GET", path, "")
	if len(got) != 2 || got[1].Timestamp.Before(got[0].Timestamp) {
		t.Fatalf("second call: %+v, want both samples, oldest first", got)
	}
	// A window after both samples holds none, one around them holds all
	// (each call adds one).
	after := got[1].Timestamp.Unix() + 3600
	e.ok(&got, http.StatusOK, e.alice, "GET", fmt.Sprintf("%s?start=%d", path, after), "")
	if len(got) != 0 {
		t.Errorf("samples from an hour ahead: %+v", got)
	}
	e.ok(&got, http.StatusOK, e.alice, "GET", fmt.Sprintf("%s?start=%d&end=%d", path, after-7200, after), "")
	if len(got) != 4 {
		t.Errorf("samples within two hours: %d, want 4", len(got))
	}
	// Paused: the samples kept, no new one.
	e.ok(nil, http.StatusNoContent, e.alice, "POST", "/sandboxes/"+sbx.SandboxID+"/pause", "")
	e.ok(&got, http.StatusOK, e.alice, "GET", path, "")
	if len(got) != 4 {
		t.Errorf("samples of the paused sandbox: %d, want the 4 kept", len(got))
	}
	e.refused("a bad start", http.StatusBadRequest, e.alice, "GET", path+"?start=yesterday", "")
	e.refused("end before start", http.StatusBadRequest, e.alice, "GET", path+"?start=100&end=50", "")
	e.refused("an unknown sandbox", http.StatusNotFound, e.alice, "GET", "/sandboxes/s-nosuch/metrics", "")
	e.refused("another user's sandbox", http.StatusForbidden, e.bob, "GET", path, "")
}
