package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// noSessions is a session manager with no sessions; the identity
// commands never reach it.
type noSessions struct{ apiserver.Sessions }

func (noSessions) List(context.Context) ([]api.Session, error) { return nil, nil }

// identityServer starts the real API server over a real SQLite store of
// users and tokens (clock fixed at testNow), with testToken as its admin
// token, and returns its address.
func identityServer(t *testing.T) string {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := func() time.Time { return testNow }
	srv := httptest.NewServer(apiserver.New(apiserver.Config{
		Sessions:      noSessions{},
		Token:         testToken,
		Identities:    &identity.Directory{Store: st, Now: now},
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st, Now: now}),
		Authorize:     (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize, // as cove server wires it
	}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// adminUserToken makes an admin user named operator on the server at
// addr with the admin token (testToken), through the API as an operator
// would, and returns an API token of its: what tests act with beyond
// users, teams and tokens, as the admin token only bootstraps.
func adminUserToken(t *testing.T, addr string) string {
	t.Helper()
	admin := api.NewClient(addr, testToken)
	if _, err := admin.AddUser(t.Context(), api.CreateUserRequest{Name: "operator", Kind: api.UserAdmin}); err != nil {
		t.Fatalf("add the operator: %v", err)
	}
	tok, err := admin.CreateToken(t.Context(), api.CreateTokenRequest{Name: "test", User: "operator"})
	if err != nil {
		t.Fatalf("mint the operator's token: %v", err)
	}
	return tok.Secret
}

// runAs runs one cove command line in-process against addr with token.
func runAs(t *testing.T, addr, token string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	env := map[string]string{"COVE_HOME": t.TempDir(), "COVE_ADDR": addr, "COVE_TOKEN": token}
	var out, errOut bytes.Buffer
	c := &cli{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
		getenv: func(k string) string { return env[k] }, now: func() time.Time { return testNow }}
	code = run(context.Background(), c, args)
	return code, out.String(), errOut.String()
}

// TestUserCommands protects user add, ls and rm against the real server:
// what add sends (kind, teams), the table, clear refusals (a taken name,
// a malformed one, an unknown kind before the server), and rm's per-name
// errors.
func TestUserCommands(t *testing.T) {
	addr := identityServer(t)
	for _, tc := range []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"user", "add", "alice", "--kind", "admin", "--team", "platform", "--team", "backend"}, 0, "alice\n", ""},
		{[]string{"users", "add", "ci-bot", "--kind", "service"}, 0, "ci-bot\n", ""},
		{[]string{"user", "add", "bob"}, 0, "bob\n", ""},
		{[]string{"user", "add", "alice"}, 1, "", "cove: user \"alice\" exists\n"},
		{[]string{"user", "add", "Bad"}, 1, "", `cove: name: "Bad" is not a user name`},
		{[]string{"user", "add", "x", "--team", "A B"}, 1, "", `cove: teams: "A B" is not a team name`},
		{[]string{"user", "add", "x", "--kind", "root"}, 2, "", `cove: --kind "root" is not one of engineer, service, admin`},
		{[]string{"user", "add"}, 2, "", "Run 'cove user add --help' for usage."},
		{[]string{"user", "ls", "x"}, 2, "", "unknown command"},
	} {
		code, out, errOut := runAs(t, addr, testToken, tc.args...)
		if code != tc.code || out != tc.stdout || !strings.Contains(errOut, tc.errs) || tc.errs == "" && errOut != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out, errOut, tc.code, tc.stdout, tc.errs)
		}
	}
	code, out, _ := runAs(t, addr, testToken, "user", "ls")
	want := "NAME     KIND       TEAMS              AGE\n" +
		"alice    admin      backend,platform   0s\n" +
		"bob      engineer   -                  0s\n" +
		"ci-bot   service    -                  0s\n"
	if code != 0 || out != want {
		t.Errorf("user ls: exit %d\n%s\nwant\n%s", code, out, want)
	}
	code, out, errOut := runAs(t, addr, testToken, "user", "rm", "bob", "nobody", "ci-bot")
	if code != 1 || out != "bob\nci-bot\n" || errOut != "cove: user rm nobody: no user \"nobody\"\n" {
		t.Errorf("user rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, out, _ := runAs(t, addr, testToken, "user", "ls", "--json"); !strings.Contains(out, `"name": "alice"`) || strings.Contains(out, "bob") {
		t.Errorf("user ls --json after rm: %s", out)
	}
}
