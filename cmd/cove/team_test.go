package main

import (
	"strings"
	"testing"
)

// TestTeamCommands protects team add, ls and rm against the real server:
// add (idempotent, per-user errors), the table and JSON, a malformed
// team name refused by the server, rm of a non-member, and a non-admin's
// refusal.
func TestTeamCommands(t *testing.T) {
	addr := identityServer(t)
	for _, args := range [][]string{{"user", "add", "alice", "--team", "backend"}, {"user", "add", "bob"}, {"user", "add", "carol"}} {
		if code, _, errOut := runAs(t, addr, testToken, args...); code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errOut)
		}
	}
	for _, tc := range []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"team", "ls"}, 0, "TEAM      MEMBERS\nbackend   alice\n", ""},
		{[]string{"team", "add", "platform", "carol", "alice"}, 0, "carol\nalice\n", ""},
		{[]string{"teams", "add", "platform", "alice", "nobody", "bob"}, 1, "alice\nbob\n", "cove: team add platform nobody: no user \"nobody\"\n"},
		{[]string{"team", "add", "Platform", "bob"}, 1, "", `cove: team add Platform bob: team: "Platform" is not a team name`},
		{[]string{"team", "rm", "platform", "bob", "bob"}, 1, "bob\n", "cove: team rm platform bob: user \"bob\" is not in team \"platform\"\n"},
		{[]string{"team", "add", "platform"}, 2, "", "Run 'cove team add --help' for usage."},
		{[]string{"team", "rm"}, 2, "", "Run 'cove team rm --help' for usage."},
		{[]string{"team", "ls", "x"}, 2, "", "unknown command"},
	} {
		code, out, errOut := runAs(t, addr, testToken, tc.args...)
		if code != tc.code || out != tc.stdout || !strings.Contains(errOut, tc.errs) || tc.errs == "" && errOut != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out, errOut, tc.code, tc.stdout, tc.errs)
		}
	}
	code, out, _ := runAs(t, addr, testToken, "team", "ls")
	want := "TEAM       MEMBERS\n" +
		"backend    alice\n" +
		"platform   alice,carol\n"
	if code != 0 || out != want {
		t.Errorf("team ls: exit %d\n%s\nwant\n%s", code, out, want)
	}
	code, out, _ = runAs(t, addr, testToken, "team", "ls", "--json")
	if code != 0 || !strings.Contains(out, `"name": "platform"`) || !strings.Contains(out, `"members": [`) || !strings.Contains(out, `"carol"`) {
		t.Errorf("team ls --json: exit %d\n%s", code, out)
	}

	// carol, an engineer, may not manage teams.
	_, tok, errOut := runAs(t, addr, testToken, "token", "create", "--name", "laptop", "--user", "carol")
	lines := strings.Split(strings.TrimSpace(tok), "\n")
	secret := lines[len(lines)-1]
	if !strings.HasPrefix(secret, "cove_") {
		t.Fatalf("token create: %q %s", tok, errOut)
	}
	code, out, errOut = runAs(t, addr, secret, "team", "add", "platform", "bob")
	if code != 1 || out != "" || !strings.Contains(errOut, "no policy permits user.admin on Server cove") {
		t.Errorf("team add as carol: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, out, _ := runAs(t, addr, testToken, "team", "ls"); out != want {
		t.Errorf("team ls after carol's attempt:\n%s\nwant\n%s", out, want)
	}
}
