package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestParkWakeCommands protects park and wake output: "ID STATE" per
// session, every id tried, exit 1 if any failed.
func TestParkWakeCommands(t *testing.T) {
	state := map[string]string{"s1": api.StateRunning, "s2": api.StateRunning, "f1": api.StateFailed}
	var bodies []string
	transition := func(verb, from, to string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var b [64]byte
			n, _ := r.Body.Read(b[:])
			bodies = append(bodies, string(b[:n]))
			id := r.PathValue("id")
			st, ok := state[id]
			switch {
			case !ok:
				writeError(w, api.CodeNotFound, "session "+id+" not found")
				return
			case st != from && st != to:
				writeError(w, api.CodeConflict, verb+" "+id+": session is "+st)
				return
			}
			state[id] = to
			s := api.Session{ID: id, State: to, CreatedAt: testNow.Add(-time.Minute)}
			if to == api.StateParked {
				s.Snapshot = &api.SnapshotInfo{DiskBytes: 1 << 20}
			}
			writeJSON(w, 200, s)
		}
	}
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions/{id}/park": transition("park", api.StateRunning, api.StateParked),
		"POST /v1/sessions/{id}/wake": transition("wake", api.StateParked, api.StateRunning),
	})

	code, out, errOut := runCLI(t, addr, "", "park", "s1", "s2")
	if code != 0 || out != "s1 parked\ns2 parked\n" || errOut != "" {
		t.Errorf("park: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, b := range bodies {
		if b != "" {
			t.Errorf("park sent body %q, want none", b)
		}
	}
	code, out, errOut = runCLI(t, addr, "", "wake", "s1", "zz", "f1", "s2")
	want := "cove: wake zz: session zz not found\ncove: wake f1: wake f1: session is failed\n"
	if code != 1 || out != "s1 running\ns2 running\n" || errOut != want {
		t.Errorf("wake: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, addr, "", "session", "park", "s1")
	if code != 0 || out != "s1 parked\n" {
		t.Errorf("session park: exit %d, stdout %q", code, out)
	}
	code, out, _ = runCLI(t, addr, "", "session", "wake", "s1")
	if code != 0 || out != "s1 running\n" {
		t.Errorf("session wake: exit %d, stdout %q", code, out)
	}
}
