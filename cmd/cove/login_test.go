package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// teamPolicy is the default policy with the team grant its comments
// describe, for team "platform".
const teamPolicy = `
@id("team-platform")
permit (
  principal in Cove::Team::"platform",
  action in [
    Cove::Action::"session.read",
    Cove::Action::"session.events",
    Cove::Action::"template.read",
    Cove::Action::"session.create"
  ],
  resource in Cove::Team::"platform"
);
`

// storeSessions serves the sessions of the store, as records: enough for
// list and get, which is all these tests ask of sessions.
type storeSessions struct {
	apiserver.Sessions
	st *sqlite.Store
}

func (s storeSessions) Get(ctx context.Context, id string) (api.Session, error) {
	r, err := s.st.GetSession(ctx, id)
	if err != nil {
		return api.Session{}, api.Errorf(api.CodeNotFound, "session %q not found", id)
	}
	return api.Session{ID: r.ID, State: r.State, Image: r.Image, Owner: r.Owner, CreatedAt: r.CreatedAt}, nil
}

func (s storeSessions) List(ctx context.Context) ([]api.Session, error) {
	recs, err := s.st.ListSessions(ctx)
	if err != nil {
		return nil, err
	}
	var out []api.Session
	for _, r := range recs {
		out = append(out, api.Session{ID: r.ID, State: r.State, Image: r.Image, Owner: r.Owner, CreatedAt: r.CreatedAt})
	}
	return out, nil
}

// loginServer is the real API server over a real SQLite store, with
// testToken as its admin token, the default policy plus the platform
// team's grant, and the ID tokens of the given issuers accepted.
func loginServer(t *testing.T, issuers ...*oidctest.Provider) (string, *sqlite.Store) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pol := filepath.Join(t.TempDir(), "policy.cedar")
	if err := os.WriteFile(pol, append(policy.Default(), teamPolicy...), 0o600); err != nil {
		t.Fatal(err)
	}
	eng := policy.New()
	if err := eng.Load(t.Context(), pol); err != nil {
		t.Fatal(err)
	}
	var values []string
	for _, p := range issuers {
		values = append(values, p.URL+"="+p.ClientID)
	}
	parsed, err := parseOIDCIssuers(values)
	if err != nil {
		t.Fatal(err)
	}
	oidc, err := newServerOIDC(t.Context(), parsed, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apiserver.New(apiserver.Config{
		Sessions:      storeSessions{st: st},
		Token:         testToken,
		Identities:    &identity.Directory{Store: st},
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st, JWT: oidc.verifiers}),
		Authorize:     (&apiserver.PolicyGate{Policy: eng, Records: st}).Authorize,
		SignIn:        oidc.signIn,
	}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, st
}

// terminal is the shell of one engineer: its own HOME (and so its own
// credentials file), talking to one server, with no COVE_TOKEN.
type terminal struct {
	home string
	env  map[string]string
}

func newTerminal(t *testing.T, addr string) *terminal {
	home := t.TempDir()
	return &terminal{home: home, env: map[string]string{"HOME": home, "COVE_ADDR": addr, "COVE_HOME": t.TempDir()}}
}

// run runs one cove command line in-process at the terminal.
func (tm *terminal) run(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	c := &cli{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut,
		getenv: func(k string) string { return tm.env[k] }, now: time.Now}
	code = run(context.Background(), c, args)
	return code, out.String(), errOut.String()
}

func (tm *terminal) credentialsPath() string {
	return filepath.Join(tm.home, ".config", "cove", credentialsFile)
}

// deviceLogin runs 'cove login' at tm and, playing the user at the
// provider, approves its device code as subject.
func deviceLogin(t *testing.T, tm *terminal, p *oidctest.Provider, subject string) (stdout, stderr string) {
	t.Helper()
	var (
		wg            sync.WaitGroup
		code          int
		out, errOut   string
		approveFailed error
	)
	wg.Go(func() { code, out, errOut = tm.run("", "login") })
	select {
	case req := <-p.DeviceRequests():
		approveFailed = p.Approve(req.UserCode, subject)
		wg.Wait()
		if !strings.Contains(errOut, "enter the code "+req.UserCode+"\n") {
			t.Errorf("login's instructions lack the user code %s:\n%s", req.UserCode, errOut)
		}
		for _, s := range []string{"openid", "profile", "email", "offline_access"} {
			if !strings.Contains(" "+strings.Join(req.Scopes, " ")+" ", " "+s+" ") {
				t.Errorf("login asked for scopes %q, without %s", req.Scopes, s)
			}
		}
	case <-time.After(time.Minute): // a guard against a hang, not a measurement
		wg.Wait()
		t.Fatalf("no device authorization reached the provider; login: exit %d, %q, %q", code, out, errOut)
	}
	if approveFailed != nil || code != 0 {
		t.Fatalf("login as %s: approve %v; exit %d, stdout %q, stderr %q", subject, approveFailed, code, out, errOut)
	}
	return out, errOut
}

// TestLoginDeviceFlow protects 'cove login' with a real OIDC provider on
// loopback: an engineer signs in with the device flow, the credential is
// kept 0600 in the user's config dir, and later commands act as that
// engineer without COVE_TOKEN; the groups claim makes teams, and the
// policy's team grant lets a teammate see a session that a member of
// another team does not; an expired ID token is renewed with the refresh
// token; logout forgets the credential.
func TestLoginDeviceFlow(t *testing.T) {
	p, err := oidctest.New(oidctest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.AddUser(oidctest.User{Subject: "sub-alice", PreferredUsername: "alice", Email: "alice@example.com", Groups: []string{"platform"}})
	p.AddUser(oidctest.User{Subject: "sub-bob", PreferredUsername: "bob", Groups: []string{"platform", "backend"}})
	p.AddUser(oidctest.User{Subject: "sub-carol", Email: "carol@example.com", Groups: []string{"billing"}})
	addr, st := loginServer(t, p)

	alice := newTerminal(t, addr)
	out, _ := deviceLogin(t, alice, p, "sub-alice")
	if want := "Signed in to " + addr + " as alice (engineer; teams platform); the credential is in " + alice.credentialsPath() + ".\n"; out != want {
		t.Errorf("login said %q, want %q", out, want)
	}
	fi, err := os.Stat(alice.credentialsPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, %v; want mode 0600", fi, err)
	}
	if di, _ := os.Stat(filepath.Dir(alice.credentialsPath())); di.Mode().Perm() != 0o700 {
		t.Errorf("credentials dir mode %04o, want 0700", di.Mode().Perm())
	}
	bob := newTerminal(t, addr)
	deviceLogin(t, bob, p, "sub-bob")
	carol := newTerminal(t, addr)
	deviceLogin(t, carol, p, "sub-carol")

	// Bob's session, in his teams: alice (platform) sees it, carol not.
	bobUser, err := st.GetUserBySubject(t.Context(), p.URL, "sub-bob")
	if err != nil || bobUser.Name != "bob" {
		t.Fatalf("bob's user: %+v, %v", bobUser, err)
	}
	now := time.Now().UTC()
	if err := st.CreateSession(t.Context(), &store.Session{ID: "s-bob", State: api.StateRunning, Image: "tiny", Owner: bobUser.ID, CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tm   *terminal
		name string
		sees bool
	}{{alice, "alice", true}, {bob, "bob", true}, {carol, "carol", false}} {
		code, out, errOut := c.tm.run("", "ls")
		if code != 0 || strings.Contains(out, "s-bob") != c.sees {
			t.Errorf("ls as %s: exit %d, stderr %q, sees bob's session %v, want %v:\n%s", c.name, code, errOut, !c.sees, c.sees, out)
		}
	}
	if code, _, errOut := carol.run("", "user", "ls"); code != 1 || !strings.Contains(errOut, "no policy permits user.admin") {
		t.Errorf("user ls as carol: exit %d, %q", code, errOut)
	}

	// An expired ID token is renewed with the refresh token, and saved.
	creds, err := loadCredentials(alice.credentialsPath())
	if err != nil {
		t.Fatal(err)
	}
	old := *creds.Servers[addr]
	if old.RefreshToken == "" || old.Issuer != p.URL || old.ClientID != p.ClientID || old.Expiry.IsZero() {
		t.Fatalf("saved credential %+v lacks what renews it", old)
	}
	creds.Servers[addr].Expiry = now.Add(-time.Hour)
	if err := saveCredentials(alice.credentialsPath(), creds); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := alice.run("", "ls"); code != 0 || !strings.Contains(out, "s-bob") {
		t.Fatalf("ls with an expired ID token: exit %d, %q, %q", code, out, errOut)
	}
	creds, _ = loadCredentials(alice.credentialsPath())
	renewed := creds.Servers[addr]
	if renewed.Token == old.Token || renewed.RefreshToken == old.RefreshToken || !renewed.Expiry.After(now) {
		t.Errorf("credential not renewed: %+v", renewed)
	}
	// A refresh token the issuer no longer knows: a clear error.
	renewed.Expiry, renewed.RefreshToken = now.Add(-time.Hour), "gone"
	saveCredentials(alice.credentialsPath(), creds)
	if code, _, errOut := alice.run("", "ls"); code != 1 || !strings.Contains(errOut, "could not be renewed") || !strings.Contains(errOut, "run 'cove login'") {
		t.Errorf("ls with a dead refresh token: exit %d, %q", code, errOut)
	}

	// Logout forgets it; COVE_TOKEN still wins over a saved one.
	if code, out, _ := bob.run("", "logout"); code != 0 || out != "Signed out of "+addr+".\n" {
		t.Errorf("logout: exit %d, %q", code, out)
	}
	if code, _, errOut := bob.run("", "ls"); code != 1 || !strings.Contains(errOut, "no token: run 'cove login'") {
		t.Errorf("ls after logout: exit %d, %q", code, errOut)
	}
	if code, out, _ := bob.run("", "logout"); code != 0 || out != "Not signed in to "+addr+".\n" {
		t.Errorf("logout again: exit %d, %q", code, out)
	}
	carol.env["COVE_TOKEN"] = testToken
	if code, out, _ := carol.run("", "user", "ls"); code != 0 || !strings.Contains(out, "carol@example.com") {
		t.Errorf("COVE_TOKEN over the saved credential: exit %d, %q", code, out)
	}
}

// Without an OIDC issuer (or with --token), login takes an API token from
// stdin, checks it with the server and keeps it; a token the server
// refuses is not kept; a credentials file others may read is refused.
func TestLoginWithToken(t *testing.T) {
	addr, _ := loginServer(t)
	admin := newTerminal(t, addr)
	admin.env["COVE_TOKEN"] = testToken
	if code, _, errOut := admin.run("", "user", "add", "dave"); code != 0 {
		t.Fatal(errOut)
	}
	_, out, _ := admin.run("", "token", "create", "--name", "laptop", "--user", "dave", "--scope", "session.list", "--scope", "session.read")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	secret := lines[len(lines)-1]

	dave := newTerminal(t, addr)
	code, out, errOut := dave.run("nope\n", "login")
	if code != 1 || !strings.Contains(errOut, "accepts no OIDC sign-in; give an API token") || !strings.Contains(errOut, "refuses the credential: invalid bearer token") {
		t.Errorf("login with a bad token: exit %d, %q, %q", code, out, errOut)
	}
	if _, err := os.Stat(dave.credentialsPath()); !os.IsNotExist(err) {
		t.Errorf("a refused token was kept: %v", err)
	}
	code, out, errOut = dave.run(secret+"\n", "login", "--token")
	if code != 0 || out != "Signed in to "+addr+" as dave (engineer; scopes session.list, session.read); the credential is in "+dave.credentialsPath()+".\n" {
		t.Fatalf("login --token: exit %d, %q, %q", code, out, errOut)
	}
	if code, _, errOut := dave.run("", "ls"); code != 0 {
		t.Errorf("ls with the saved token: %q", errOut)
	}
	b, _ := os.ReadFile(dave.credentialsPath())
	var creds credentials
	if err := json.Unmarshal(b, &creds); err != nil || creds.Servers[addr].Token != secret || creds.Servers[addr].RefreshToken != "" {
		t.Errorf("credentials file: %s", b)
	}
	if code, _, errOut := dave.run("", "login", "--issuer", "https://login.example.com"); code != 1 || !strings.Contains(errOut, "accepts no issuer https://login.example.com (it accepts: none)") {
		t.Errorf("login --issuer unknown: exit %d, %q", code, errOut)
	}

	os.Chmod(dave.credentialsPath(), 0o644)
	if code, _, errOut := dave.run("", "ls"); code != 1 || !strings.Contains(errOut, "may be read by others (mode 0644); chmod 600 it") {
		t.Errorf("ls with a readable credentials file: exit %d, %q", code, errOut)
	}
}

// An issuer that offers no device flow: login takes a token instead.
func TestLoginIssuerWithoutDeviceFlow(t *testing.T) {
	p, err := oidctest.New(oidctest.Config{NoDeviceFlow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	addr, _ := loginServer(t, p)
	tm := newTerminal(t, addr)
	code, _, errOut := tm.run(testToken+"\n", "login")
	if code != 0 || !strings.Contains(errOut, "Issuer "+p.URL+" offers no device sign-in; give an API token") {
		t.Errorf("login: exit %d, %q", code, errOut)
	}
	if code, out, _ := tm.run("", "user", "ls"); code != 0 || !strings.Contains(out, "NAME") {
		t.Errorf("user ls with the saved admin token: exit %d, %q", code, out)
	}
}

// A malformed --oidc-issuer stops the server before it touches anything,
// saying what it wants.
func TestServerRefusesMalformedOIDCIssuer(t *testing.T) {
	for in, want := range map[string]string{
		"https://login.example.com":             "want ISSUER_URL=CLIENT_ID",
		"http://login.example.com=cove":         "must be https (or http on a loopback host)",
		"https://a.example=x,https://b.example": "oidc issuer \"https://b.example\": want ISSUER_URL=CLIENT_ID",
	} {
		home := filepath.Join(t.TempDir(), "home")
		err := runServer(t.Context(), serverConfig{Listen: "127.0.0.1:0", Home: home, OIDCIssuers: []string{in}})
		if err == nil || !strings.Contains(err.Error(), "server: --oidc-issuer: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("--oidc-issuer %q: %v, want %q", in, err, want)
		}
		if _, serr := os.Stat(home); !os.IsNotExist(serr) {
			t.Errorf("--oidc-issuer %q: the server made its home before refusing: %v", in, serr)
		}
	}
	twice, err := parseOIDCIssuers([]string{"https://a.example=x", "https://a.example=y"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := newServerOIDC(t.Context(), twice, st, nil); err == nil || !strings.Contains(err.Error(), "https://a.example is given twice") {
		t.Errorf("an issuer twice: %v", err)
	}
}

// A sign-in the user denies at the issuer ends login with the issuer's
// reason, and keeps nothing.
func TestLoginDenied(t *testing.T) {
	p, err := oidctest.New(oidctest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	addr, _ := loginServer(t, p)
	tm := newTerminal(t, addr)
	var (
		wg          sync.WaitGroup
		code        int
		out, errOut string
	)
	wg.Go(func() { code, out, errOut = tm.run("", "login") })
	select {
	case req := <-p.DeviceRequests():
		if err := p.Deny(req.UserCode); err != nil {
			t.Error(err)
		}
	case <-time.After(time.Minute): // a guard against a hang, not a measurement
		t.Error("no device authorization reached the provider")
	}
	wg.Wait()
	if code != 1 || out != "" || !strings.Contains(errOut, "cove: login: issuer "+p.URL+": ") || !strings.Contains(errOut, "access_denied") {
		t.Errorf("denied login: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, err := os.Stat(tm.credentialsPath()); !os.IsNotExist(err) {
		t.Errorf("a denied login kept a credential: %v", err)
	}
}

// Commands that find the ID token expired at once renew it once between
// them: the issuer rotates refresh tokens, so a second renewal with the
// spent one would fail; under the lock the others read the renewed token.
func TestConcurrentRenewal(t *testing.T) {
	p, err := oidctest.New(oidctest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.AddUser(oidctest.User{Subject: "sub-alice", PreferredUsername: "alice"})
	addr, _ := loginServer(t, p)
	tm := newTerminal(t, addr)
	deviceLogin(t, tm, p, "sub-alice")
	creds, err := loadCredentials(tm.credentialsPath())
	if err != nil {
		t.Fatal(err)
	}
	creds.Servers[addr].Expiry = time.Now().Add(-time.Minute)
	if err := saveCredentials(tm.credentialsPath(), creds); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	codes, errs := make([]int, 4), make([]string, 4)
	for i := range codes {
		wg.Go(func() { codes[i], _, errs[i] = tm.run("", "ls") })
	}
	wg.Wait()
	for i := range codes {
		if codes[i] != 0 {
			t.Errorf("ls %d: exit %d, %q", i, codes[i], errs[i])
		}
	}
}
