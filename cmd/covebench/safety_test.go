package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A make test record, as go test -json writes it (lines cut from a real
// run), read into the safety rows: every figure comes through, and a
// failed or missing test is said so.
func TestSafetyRows(t *testing.T) {
	lines := []string{
		`{"Action":"output","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestCrashPoints","Output":"    crash_test.go:230: crash points walked: 32: park.recorded park.detached\n"}`,
		`{"Action":"pass","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestCrashPoints","Elapsed":300}`,
		`{"Action":"output","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestCrashRandom","Output":"    crash_test.go:456: random kills: 100 of 100 survived; 36 of them cut an operation short\n"}`,
		`{"Action":"pass","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestCrashRandom","Elapsed":300}`,
		`{"Action":"output","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestLoad","Output":"    load_test.go:283: load summary: 32 clients, 10 sessions, 1m0s: 120 ops (1.8/s), ok/all by kind: exec 13/36; expected 409s 33, 404s 21; failures 0 (5xx 0); leaked objects 0 (of 39 cgroups watched); sessions created 31, states at the end map[running:10]; server RSS 26.9 MiB at start, 29.4 MiB at end (peak 39.6 MiB, bound 90.9 MiB), 28.6 MiB after rm of all\n"}`,
		`{"Action":"pass","Package":"github.com/cove-dev/cove/cmd/cove","Test":"TestLoad","Elapsed":90}`,
		`{"Action":"pass","Package":"github.com/cove-dev/cove/internal/session","Test":"TestParkDiskFull/sub","Elapsed":1}`,
		`{"Action":"fail","Package":"github.com/cove-dev/cove/internal/session","Test":"TestParkDiskFull","Elapsed":1}`,
		`not json`,
	}
	for _, ft := range faultTests[1:] {
		lines = append(lines, `{"Action":"pass","Package":"p","Test":"`+ft.test+`","Elapsed":1}`)
	}
	path := filepath.Join(t.TempDir(), "cove-test.json")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rows, err := safetyRows(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, r.name+" | "+strings.Join(r.cells, " | "))
	}
	text := strings.Join(got, "\n")
	for _, want := range []string{
		"| 32 | 32/32 survived | – | all | held",
		"(36 cut an operation) | 100 | 100/100 survived | – | ≥ 100, all | held",
		fmt.Sprintf("%d | %d/%d", len(faultTests), len(faultTests)-1, len(faultTests)) + " | – | all | not: disk full during a park (failed)",
		"32 clients on 10 sessions for 1m0s",
		"| 120 ops | 0 failures (0 5xx), 0 leaked; RSS 26.9 MiB → 29.4 MiB (peak 39.6 MiB) | – | 0, 0, flat | held",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rows lack %q:\n%s", want, text)
		}
	}

	if _, err := safetyRows(filepath.Join(t.TempDir(), "none.json")); err == nil || !strings.Contains(err.Error(), "make test") {
		t.Errorf("no record: %v, want an error saying to run make test", err)
	}
}
