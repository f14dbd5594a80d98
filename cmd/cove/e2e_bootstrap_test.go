package main_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestOperatorBootstrap: on a fresh home the real 'cove server' makes its
// first admin user, named admin, once (a restart makes no second); the
// operator's first command on the host, 'cove session create' with only
// the admin token the server wrote, signs in as that user (one line on
// stderr, a 0600 credentials file that holds an API token, not the admin
// token) and boots a session that user owns; the admin token itself is
// refused a session 403, saying why.
func TestOperatorBootstrap(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	const made = "made the first admin user"
	if n := strings.Count(e.srv.log.String(), made); n != 1 {
		t.Fatalf("the first start logged %q %d times, want once:\n%s", made, n, e.srv.log)
	}

	out, errOut, code := e.run(nil, "session", "create", "--boot-timeout", "4m")
	tokenPath := filepath.Join(e.home, "admin.token")
	if want := "cove: signed in as admin with a new API token (bootstrapped from " + tokenPath + "); 'cove logout' forgets it\n"; code != 0 || errOut != want {
		t.Fatalf("first session create: exit %d, stdout %q, stderr %q; want stderr %q%s", code, out, errOut, want, e.serverLog())
	}
	id := strings.TrimSpace(out)
	e.seen[id] = true
	fi, err := os.Stat(filepath.Join(e.config, "cove", "credentials.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, %v; want mode 0600", fi, err)
	}
	adminToken, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if tok := e.userToken(); tok == strings.TrimSpace(string(adminToken)) || !strings.HasPrefix(tok, "cove_") {
		t.Errorf("the CLI signed in with %q, want an API token that is not the admin token", tok)
	}
	var users []api.User
	if err := json.Unmarshal([]byte(e.ok(nil, "user", "ls", "--json")), &users); err != nil || len(users) != 1 || users[0].Name != "admin" || users[0].Kind != api.UserAdmin {
		t.Fatalf("users: %+v (%v), want admin alone", users, err)
	}
	if s := e.sessions()[id]; s.Owner != users[0].ID {
		t.Errorf("session %s is owned by %q, want admin's id %s", id, s.Owner, users[0].ID)
	}

	// The admin token itself makes no session.
	req, _ := http.NewRequest("POST", "http://"+e.addr+"/v1/sessions", bytes.NewReader([]byte(`{}`)))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(adminToken)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "the admin token only bootstraps (users, teams, tokens), not session.create") {
		t.Errorf("session create with the admin token: %d %s", resp.StatusCode, b)
	}

	// A restart makes no second admin.
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server on SIGTERM: %v", err)
	}
	e.startServer()
	if strings.Contains(e.srv.log.String(), made) {
		t.Errorf("the restarted server made an admin again:\n%s", e.srv.log)
	}
	if err := json.Unmarshal([]byte(e.ok(nil, "user", "ls", "--json")), &users); err != nil || len(users) != 1 {
		t.Errorf("users after the restart: %+v (%v), want admin alone", users, err)
	}
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server on SIGTERM: %v", err)
	}
}
