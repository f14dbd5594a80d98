package main

import (
	"strings"
	"testing"
	"time"
)

// TestTokenCommands protects token create, ls and revoke against the real
// server under the default policy: the secret is the last line of
// create's output and appears in no listing; it works as COVE_TOKEN (an
// admin user's mints for itself and manages users; an engineer's mints
// and lists its own, and is refused the users with the policy's reason);
// revoked tokens and those of removed users are refused saying so; bad
// flags are refused before the server.
func TestTokenCommands(t *testing.T) {
	addr := identityServer(t)
	for _, args := range [][]string{{"user", "add", "alice", "--kind", "admin"}, {"user", "add", "bob"}} {
		if code, _, errOut := runAs(t, addr, testToken, args...); code != 0 {
			t.Fatalf("%q: %s", args, errOut)
		}
	}
	create := func(token string, args ...string) (id, secret string) {
		t.Helper()
		code, out, errOut := runAs(t, addr, token, append([]string{"token", "create"}, args...)...)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if code != 0 || len(lines) != 2 || errOut != "" {
			t.Fatalf("token create %q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		secret = lines[len(lines)-1]
		if !strings.HasPrefix(secret, "cove_") || len(secret) != 48 {
			t.Fatalf("last line %q is not a token", secret)
		}
		id, _, _ = strings.Cut(strings.TrimPrefix(lines[0], "Token "), " ")
		return id, secret
	}

	aliceID, alice := create(testToken, "--name", "laptop", "--user", "alice", "--expires", "30d", "--scope", "session.*", "--scope", "token.*", "--scope", "user.*")
	_, out, _ := runAs(t, addr, testToken, "token", "ls")
	if !strings.Contains(out, aliceID+"   laptop   alice   active   session.*,token.*,user.*   0s    in 30d    never") {
		t.Errorf("token ls:\n%s", out)
	}
	// An admin user's token mints one for itself, within its own scopes.
	selfID, _ := create(alice, "--name", "self", "--expires", "90m", "--scope", "session.*", "--scope", "token.create")
	if code, _, errOut := runAs(t, addr, alice, "token", "create", "--name", "wide"); code != 1 || !strings.Contains(errOut, "cove: token.create refused: the token you use is scoped (session.*, token.*, user.*), so the token it mints must be too") {
		t.Errorf("a scoped token mints an unscoped one: exit %d, %q", code, errOut)
	}
	bobID, bob := create(testToken, "--name", "ci", "--user", "bob")

	code, out, errOut := runAs(t, addr, testToken, "token", "create", "--name", "x")
	if code != 1 || out != "" || !strings.Contains(errOut, "user: missing; the admin token is no user") {
		t.Errorf("admin token without --user: exit %d, %q, %q", code, out, errOut)
	}
	code, _, errOut = runAs(t, addr, testToken, "token", "create", "--name", "x", "--user", "carol")
	if code != 1 || !strings.Contains(errOut, `cove: user: no user "carol"`) {
		t.Errorf("unknown user: exit %d, %q", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		errs string
	}{
		{[]string{"token", "create"}, "--name is required"},
		{[]string{"token", "create", "--name", "x", "--user", "bob", "--expires", "soon"}, `--expires: "soon" is not a positive duration`},
		{[]string{"token", "create", "--name", "x", "--user", "bob", "--expires", "0d"}, `--expires: "0d" is not a number of days from 1 to 3650`},
		{[]string{"token", "create", "--name", "x", "--user", "bob", "--expires", "-5m"}, "--expires"},
		{[]string{"token", "create", "--name", "x", "--user", "bob", "--expires", ""}, "--expires"},
		{[]string{"token", "revoke"}, "Run 'cove token revoke --help' for usage."},
	} {
		if code, _, errOut := runAs(t, addr, testToken, tc.args...); code != 2 || !strings.Contains(errOut, tc.errs) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.errs)
		}
	}

	// The listing holds no secret, and filters by user.
	code, out, _ = runAs(t, addr, testToken, "token", "ls", "--json")
	if code != 0 || strings.Contains(out, alice) || strings.Contains(out, bob) || strings.Contains(out, "secret") {
		t.Errorf("token ls --json holds a secret: %s", out)
	}
	_, out, _ = runAs(t, addr, testToken, "token", "ls", "--user", "alice")
	if !strings.Contains(out, aliceID) || !strings.Contains(out, selfID) || strings.Contains(out, bobID) {
		t.Errorf("token ls --user alice:\n%s", out)
	}

	// The tokens at work: alice, an admin, manages users; bob, an
	// engineer, his own sessions and tokens, and no users.
	if code, out, errOut := runAs(t, addr, alice, "user", "ls"); code != 0 || !strings.Contains(out, "alice") {
		t.Errorf("user ls as alice: exit %d, %q, %q", code, out, errOut)
	}
	if code, _, errOut := runAs(t, addr, bob, "ls"); code != 0 {
		t.Errorf("ls as bob: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runAs(t, addr, bob, "user", "ls"); code != 1 || !strings.Contains(errOut, "cove: no policy permits user.admin on Server cove for User u_") {
		t.Errorf("user ls as bob: exit %d, %q", code, errOut)
	}
	bobOwnID, _ := create(bob, "--name", "own")
	if code, out, errOut := runAs(t, addr, bob, "token", "ls"); code != 0 || !strings.Contains(out, bobOwnID) || !strings.Contains(out, bobID) || strings.Contains(out, aliceID) {
		t.Errorf("token ls as bob: exit %d, stderr %q, want his two tokens only:\n%s", code, errOut, out)
	}

	code, out, errOut = runAs(t, addr, testToken, "token", "revoke", aliceID, "tok_nope")
	if code != 1 || out != aliceID+"\n" || errOut != "cove: token revoke tok_nope: no token \"tok_nope\"\n" {
		t.Errorf("token revoke: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := runAs(t, addr, alice, "user", "ls"); code != 1 || !strings.Contains(errOut, "invalid bearer token: token revoked: token "+aliceID) {
		t.Errorf("revoked token: exit %d, %q", code, errOut)
	}
	runAs(t, addr, testToken, "user", "rm", "bob")
	if code, _, errOut := runAs(t, addr, bob, "ls"); code != 1 || !strings.Contains(errOut, "token revoked") {
		t.Errorf("removed user's token: exit %d, %q", code, errOut)
	}
	_, out, _ = runAs(t, addr, testToken, "token", "ls")
	for _, want := range []string{aliceID + "   laptop   alice       revoked", bobID + "   ci       (removed)   revoked", bobOwnID + "   own      (removed)   revoked", selfID + "   self     alice       active"} {
		if !strings.Contains(out, want) {
			t.Errorf("token ls lacks %q:\n%s", want, out)
		}
	}
}

func TestParseExpiry(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "1d": 24 * time.Hour, "720h": 720 * time.Hour, "30m": 30 * time.Minute} {
		if got, err := parseExpiry(in); err != nil || got != want {
			t.Errorf("parseExpiry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "0d", "-1d", "3651d", "1.5d", "0s", "-1h", "soon", "1y"} {
		if d, err := parseExpiry(in); err == nil {
			t.Errorf("parseExpiry(%q) = %v, want an error", in, d)
		}
	}
}
