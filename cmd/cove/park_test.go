package main

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
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

// TestParkUntilCommand protects "cove park --until/--timeout": the body
// sent, one id only, and the server's caret message passed through.
func TestParkUntilCommand(t *testing.T) {
	var got []api.ParkRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions/{id}/park": func(w http.ResponseWriter, r *http.Request) {
			var req api.ParkRequest
			d := json.NewDecoder(r.Body)
			d.DisallowUnknownFields()
			if err := d.Decode(&req); err != nil {
				writeError(w, api.CodeInvalid, err.Error())
				return
			}
			got = append(got, req)
			if len(req.Until) > 0 && req.Until[0] == "github:push repo" {
				writeError(w, api.CodeInvalid, "until[0]: trigger: expression: expected '=' after key \"repo\" (column 17)\n    github:push repo\n                    ^")
				return
			}
			writeJSON(w, 200, api.Session{ID: r.PathValue("id"), State: api.StateParked,
				Waiting: &api.Waiting{Until: req.Until}})
		},
	})

	code, out, errOut := runCLI(t, addr, "", "park", "s1", "--until", "github:check_suite.completed repo=acme/api", "--until", "ci:done", "--timeout", "6h")
	if code != 0 || out != "s1 parked\n" || errOut != "" {
		t.Errorf("park --until: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI(t, addr, "", "session", "park", "s1", "--timeout", "90m")
	if code != 0 {
		t.Errorf("park --timeout: exit %d, stderr %q", code, errOut)
	}
	want := []api.ParkRequest{
		{Until: []string{"github:check_suite.completed repo=acme/api", "ci:done"}, Timeout: "6h0m0s"},
		{Timeout: "1h30m0s"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("bodies %+v, want %+v", got, want)
	}

	code, _, errOut = runCLI(t, addr, "", "park", "s1", "--until", "github:push repo")
	if code != 1 || !strings.Contains(errOut, "cove: park s1: until[0]") || !strings.Contains(errOut, "\n    github:push repo\n                    ^\n") {
		t.Errorf("bad expression: exit %d, stderr %q", code, errOut)
	}

	for _, args := range [][]string{
		{"park", "s1", "s2", "--until", "github:push"},
		{"park", "s1", "s2", "--timeout", "1h"},
		{"park", "s1", "--timeout", "0s"},
		{"park", "s1", "--timeout", "-1h"},
		{"park", "s1", "--timeout", "soon"},
		{"park", "s1", "--until", " "},
	} {
		n := len(got)
		if code, _, errOut := runCLI(t, addr, "", args...); code != 2 || !strings.Contains(errOut, "Run 'cove") {
			t.Errorf("%q: exit %d, stderr %q; want a usage error", args, code, errOut)
		}
		if len(got) != n {
			t.Errorf("%q reached the server", args)
		}
	}
}
