package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// withAdminToken gives tm the admin token file a server writes, as on the
// server's host.
func withAdminToken(t *testing.T, tm *terminal) string {
	t.Helper()
	path := filepath.Join(tm.env["COVE_HOME"], tokenFile)
	if err := os.WriteFile(path, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// savedCredential is what tm's credentials file holds for addr.
func savedCredential(t *testing.T, tm *terminal, addr string) credential {
	t.Helper()
	b, err := os.ReadFile(tm.credentialsPath())
	if err != nil {
		t.Fatal(err)
	}
	var creds credentials
	if err := json.Unmarshal(b, &creds); err != nil || creds.Servers[addr] == nil {
		t.Fatalf("credentials file (%v): %s", err, b)
	}
	return *creds.Servers[addr]
}

// TestCLIBootstrapsASignIn protects the operator's first command on the
// server's host, against the real API server and store: with only the
// admin token the server wrote, the CLI signs in as the server's first
// admin user (made as cove server makes it): it mints that user an API
// token, not the admin token, keeps it 0600 as 'cove login --token'
// would, says so once on stderr, and acts with it; the next command
// mints none; after 'cove logout' the next command signs in again;
// commands that start at once mint one token between them. The user,
// team and token commands use the admin token as it is, and the admin
// token given as COVE_TOKEN is refused what it may not do.
func TestCLIBootstrapsASignIn(t *testing.T) {
	addr, st := loginServer(t)
	if err := firstAdmin(t.Context(), &identity.Directory{Store: st}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	admin := api.NewClient(addr, testToken)
	tokens := func() []api.Token {
		t.Helper()
		toks, err := admin.ListTokens(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		return toks
	}
	tm := newTerminal(t, addr)
	tokenPath := withAdminToken(t, tm)
	signedIn := "cove: signed in as admin with a new API token (bootstrapped from " + tokenPath + "); 'cove logout' forgets it\n"

	// The identity commands need no sign-in: the admin token may do them.
	if code, out, errOut := tm.run("", "user", "ls"); code != 0 || !strings.Contains(out, "admin") || errOut != "" {
		t.Fatalf("user ls with the admin token: exit %d, %q, %q", code, out, errOut)
	}
	if _, err := os.Stat(tm.credentialsPath()); !os.IsNotExist(err) {
		t.Errorf("user ls signed in: %v", err)
	}

	code, out, errOut := tm.run("", "ls")
	if code != 0 || errOut != signedIn || !strings.HasPrefix(out, "ID") {
		t.Fatalf("first ls: exit %d, stdout %q, stderr %q; want stderr %q", code, out, errOut, signedIn)
	}
	fi, err := os.Stat(tm.credentialsPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, %v; want mode 0600", fi, err)
	}
	cr := savedCredential(t, tm, addr)
	if cr.Token == testToken || !strings.HasPrefix(cr.Token, identity.TokenPrefix) || cr.RefreshToken != "" || !cr.Expiry.IsZero() {
		t.Errorf("saved credential %+v; want an API token that is not the admin token", cr)
	}
	who, err := api.NewClient(addr, cr.Token).WhoAmI(t.Context())
	if err != nil || who.User == nil || who.User.Name != "admin" || who.User.Kind != api.UserAdmin {
		t.Errorf("the saved token acts for %+v (%v), want user admin", who, err)
	}
	if toks := tokens(); len(toks) != 1 || toks[0].User != "admin" || toks[0].ExpiresAt != nil || toks[0].Name != bootstrapTokenName() ||
		!strings.HasPrefix(toks[0].Name, "cli@") {
		t.Errorf("tokens after the first ls: %+v; want one for admin named %s, until revoked", toks, bootstrapTokenName())
	}

	if code, _, errOut := tm.run("", "ls"); code != 0 || errOut != "" {
		t.Errorf("second ls: exit %d, stderr %q", code, errOut)
	}
	if n := len(tokens()); n != 1 {
		t.Errorf("%d tokens after the second ls, want 1: it signed in again", n)
	}
	if savedCredential(t, tm, addr).Token != cr.Token {
		t.Error("the second ls replaced the saved token")
	}

	if code, out, _ := tm.run("", "logout"); code != 0 || out != "Signed out of "+addr+".\n" {
		t.Fatalf("logout: exit %d, %q", code, out)
	}
	if code, _, errOut := tm.run("", "ls"); code != 0 || errOut != signedIn {
		t.Errorf("ls after logout: exit %d, stderr %q; want %q", code, errOut, signedIn)
	}
	if n := len(tokens()); n != 2 {
		t.Errorf("%d tokens after logout and ls, want 2", n)
	}

	// Commands that start at once on a fresh host sign in once.
	fresh := newTerminal(t, addr)
	withAdminToken(t, fresh)
	var wg sync.WaitGroup
	errs := make([]string, 4)
	codes := make([]int, 4)
	for i := range errs {
		wg.Go(func() { codes[i], _, errs[i] = fresh.run("", "ls") })
	}
	wg.Wait()
	if n := strings.Count(strings.Join(errs, ""), "signed in as admin"); n != 1 {
		t.Errorf("%d of 4 concurrent first commands signed in, want 1: %q", n, errs)
	}
	for i, c := range codes {
		if c != 0 {
			t.Errorf("concurrent ls %d: exit %d, %q", i, c, errs[i])
		}
	}
	if n := len(tokens()); n != 3 {
		t.Errorf("%d tokens after the concurrent first commands, want 3", n)
	}

	// The admin token itself is refused all else, with what to do.
	tm.env["COVE_TOKEN"] = testToken
	if code, _, errOut := tm.run("", "ls"); code != 1 || !strings.Contains(errOut, "the admin token only bootstraps (users, teams, tokens), not session.list; act as a user: 'cove login', or a token from 'cove token create --user NAME'") {
		t.Errorf("ls with COVE_TOKEN the admin token: exit %d, %q", code, errOut)
	}
}

// TestCLIBootstrapWithoutAnAdmin: where the server has no admin user, the
// first command fails saying so and how to make one, and saves nothing;
// 'cove user add --kind admin' with the admin token makes one, and the
// next command signs in as that user.
func TestCLIBootstrapWithoutAnAdmin(t *testing.T) {
	addr, _ := loginServer(t)
	tm := newTerminal(t, addr)
	tokenPath := withAdminToken(t, tm)
	code, _, errOut := tm.run("", "ls")
	if want := "cove: sign in with the admin token (" + tokenPath + "): no user is an admin (make one: 'cove user add NAME --kind admin', which the admin token may do); set COVE_TOKEN to a user's API token, or run 'cove login'\n"; code != 1 || errOut != want {
		t.Errorf("ls without an admin: exit %d, %q; want %q", code, errOut, want)
	}
	if creds, err := loadCredentials(tm.credentialsPath()); err != nil || len(creds.Servers) != 0 {
		t.Errorf("credentials after the failure: %+v, %v; want none", creds, err)
	}
	if code, _, errOut := tm.run("", "user", "add", "boss", "--kind", "admin"); code != 0 {
		t.Fatalf("user add with the admin token: exit %d, %q", code, errOut)
	}
	if code, _, errOut := tm.run("", "ls"); code != 0 || !strings.HasPrefix(errOut, "cove: signed in as boss with a new API token") {
		t.Errorf("ls once boss is an admin: exit %d, %q", code, errOut)
	}
}
