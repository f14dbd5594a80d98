package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestCheckpointCommands protects what the checkpoint, rollback and fork
// commands send and print, and their usage errors.
func TestCheckpointCommands(t *testing.T) {
	var gotCreate api.CheckpointRequest
	var gotFork api.ForkRequest
	var gotRollback api.RollbackRequest
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions/{id}/checkpoints": func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewDecoder(r.Body).Decode(&gotCreate)
			if r.PathValue("id") == "parked" {
				writeError(w, api.CodeConflict, "checkpoint parked: session is parked: wake it first")
				return
			}
			writeJSON(w, 201, api.Checkpoint{Session: "s1", Name: "ckpt-1", Bytes: 3 << 20, PauseMillis: 42})
		},
		"GET /v1/sessions/{id}/checkpoints": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, []api.Checkpoint{
				{Session: "s1", Name: "ckpt-1", CreatedAt: testNow.Add(-2 * time.Hour), Bytes: 110 << 20, PauseMillis: 48},
				{Session: "s1", Name: "before-migration", CreatedAt: testNow.Add(-5 * time.Second), Bytes: 2 << 20, PauseMillis: 51},
			})
		},
		"GET /v1/sessions/{id}/checkpoints/{name}": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, api.Checkpoint{Session: "s1", Name: r.PathValue("name"), Bytes: 7, PauseMillis: 48})
		},
		"DELETE /v1/sessions/{id}/checkpoints/{name}": func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("name") != "ckpt-1" {
				writeError(w, api.CodeNotFound, "session s1 has no checkpoint \""+r.PathValue("name")+"\"")
				return
			}
			w.WriteHeader(204)
		},
		"POST /v1/sessions/{id}/rollback": func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewDecoder(r.Body).Decode(&gotRollback)
			writeJSON(w, 200, api.Session{ID: r.PathValue("id"), State: api.StateRunning})
		},
		"POST /v1/sessions/{id}/fork": func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewDecoder(r.Body).Decode(&gotFork)
			writeJSON(w, 201, api.ForkResponse{Sessions: []api.Session{{ID: "f1"}, {ID: "f2"}}})
		},
	})
	if code, out, errOut := runCLI(t, addr, "", "checkpoint", "create", "s1", "--name", "x"); code != 0 || out != "ckpt-1 3.0MiB 42ms\n" || gotCreate.Name != "x" {
		t.Fatalf("create: exit %d, stdout %q, stderr %q, sent %+v", code, out, errOut, gotCreate)
	}
	if code, _, errOut := runCLI(t, addr, "", "checkpoint", "create", "parked"); code != 1 || !strings.Contains(errOut, "wake it first") {
		t.Fatalf("create of a parked session: exit %d, stderr %q", code, errOut)
	}
	code, out, _ := runCLI(t, addr, "", "checkpoint", "ls", "s1")
	want := "NAME               CREATED   SIZE     PAUSE\nckpt-1             2h ago    110MiB   48ms\nbefore-migration   5s ago    2.0MiB   51ms\n"
	if code != 0 || out != want {
		t.Fatalf("ls: exit %d, stdout\n%s\nwant\n%s", code, out, want)
	}
	if code, out, _ := runCLI(t, addr, "", "checkpoint", "inspect", "s1", "c"); code != 0 || !strings.Contains(out, `"pause_ms": 48`) {
		t.Fatalf("inspect: exit %d, stdout %q", code, out)
	}
	if code, out, errOut := runCLI(t, addr, "", "checkpoint", "rm", "s1", "ckpt-1", "nope"); code != 1 || out != "s1 ckpt-1 removed\n" || !strings.Contains(errOut, `no checkpoint "nope"`) {
		t.Fatalf("rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, _ := runCLI(t, addr, "", "rollback", "s1", "ckpt-1"); code != 0 || out != "s1 running\n" || gotRollback.Checkpoint != "ckpt-1" {
		t.Fatalf("rollback: exit %d, stdout %q, sent %+v", code, out, gotRollback)
	}
	if code, out, _ := runCLI(t, addr, "", "fork", "s1", "-n", "2", "--from", "ckpt-1"); code != 0 || out != "f1\nf2\n" || gotFork != (api.ForkRequest{N: 2, From: "ckpt-1"}) {
		t.Fatalf("fork: exit %d, stdout %q, sent %+v", code, out, gotFork)
	}
	if code, _, errOut := runCLI(t, addr, "", "fork", "s1", "-n", "17"); code != 2 || !strings.Contains(errOut, "1 to 16") {
		t.Fatalf("fork -n 17: exit %d, stderr %q", code, errOut)
	}
}
