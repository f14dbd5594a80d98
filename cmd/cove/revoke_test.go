package main

import (
	"net/http"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestSessionRevokeCommand protects 'cove session revoke': a POST to each
// session's revoke route, "ID STATE" per session, every id tried, exit 1
// if any failed.
func TestSessionRevokeCommand(t *testing.T) {
	var revoked []string
	addr := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions/{id}/revoke": func(w http.ResponseWriter, r *http.Request) {
			id := r.PathValue("id")
			if id == "zz" {
				writeError(w, api.CodeNotFound, "session zz not found")
				return
			}
			revoked = append(revoked, id)
			writeJSON(w, 200, api.Session{ID: id, State: api.StateRunning, CreatedAt: testNow})
		},
	})
	code, out, errOut := runCLI(t, addr, "", "session", "revoke", "s1", "zz", "s2")
	if code != 1 || out != "s1 running\ns2 running\n" || errOut != "cove: revoke zz: session zz not found\n" {
		t.Errorf("revoke: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(revoked) != 2 || revoked[0] != "s1" || revoked[1] != "s2" {
		t.Errorf("revoked %q, want s1 and s2", revoked)
	}
	if code, _, _ := runCLI(t, addr, "", "session", "revoke"); code != 2 {
		t.Errorf("revoke with no id: exit %d, want 2 (usage)", code)
	}
}
