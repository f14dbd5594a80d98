package identity

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/store"
)

// newProvider starts a real OIDC provider on loopback (zitadel/oidc's OP).
func newProvider(t testing.TB, c oidctest.Config) *oidctest.Provider {
	t.Helper()
	p, err := oidctest.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// oidcEnv is a testEnv whose Authenticator accepts the ID tokens of one
// provider.
func oidcEnv(t testing.TB, p *oidctest.Provider) (*testEnv, *OIDC) {
	t.Helper()
	e := newTestEnv(t)
	v, err := NewOIDC(OIDCConfig{Issuers: []OIDCIssuer{{URL: p.URL, ClientID: p.ClientID}}, Store: e.st})
	if err != nil {
		t.Fatal(err)
	}
	e.auth = NewAuthenticator(AuthConfig{AdminToken: adminToken, Store: e.st, JWT: []JWTVerifier{v}, Now: e.clock.Now})
	return e, v
}

func idToken(t testing.TB, p *oidctest.Provider, c oidctest.Claims) string {
	t.Helper()
	tok, err := p.IDToken(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func users(t testing.TB, e *testEnv) []store.User {
	t.Helper()
	us, err := e.st.ListUsers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return us
}

// An ID token of a configured issuer signs its subject in: the first one
// makes an engineer named by preferred_username (else email), of that
// issuer and subject; the groups claim sets its teams in the store, each
// time it is present, and a token without it leaves them.
func TestOIDCSignIn(t *testing.T) {
	p := newProvider(t, oidctest.Config{})
	e, _ := oidcEnv(t, p)
	ctx := t.Context()

	pr, err := e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "Alice", Groups: []string{"platform", "Backend", "not a team"}}))
	if err != nil {
		t.Fatal(err)
	}
	u := pr.User
	if pr.Kind != KindUser || u.Name != "alice" || u.Kind != store.UserEngineer || u.Issuer != p.URL || u.Subject != "sub-1" || pr.IsAdmin() {
		t.Fatalf("principal %+v", pr)
	}
	if !slices.Equal(pr.Teams, []string{"backend", "platform"}) {
		t.Errorf("teams %q, want backend, platform", pr.Teams)
	}
	if teams, _ := e.st.TeamsOf(ctx, u.ID); !slices.Equal(teams, []string{"backend", "platform"}) {
		t.Errorf("stored teams %q", teams)
	}

	// The same subject again is the same user; its groups changed.
	pr, err = e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "renamed", Groups: []string{"security"}}))
	if err != nil || pr.User.ID != u.ID || pr.User.Name != "alice" || !slices.Equal(pr.Teams, []string{"security"}) {
		t.Fatalf("second sign-in: %+v, %v", pr, err)
	}
	// No groups claim: the teams stay.
	pr, err = e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-1"}))
	if err != nil || !slices.Equal(pr.Teams, []string{"security"}) {
		t.Fatalf("sign-in without groups: %+v, %v", pr, err)
	}
	// An empty groups claim: no teams.
	pr, err = e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-1", Groups: []string{}}))
	if err != nil || len(pr.Teams) != 0 {
		t.Fatalf("sign-in with no groups: %+v, %v", pr, err)
	}

	// Without preferred_username, the email names the user.
	pr, err = e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-2", Email: "Bob@Example.com"}))
	if err != nil || pr.User.Name != "bob@example.com" {
		t.Fatalf("email sign-in: %+v, %v", pr, err)
	}
	if n := len(users(t, e)); n != 2 {
		t.Errorf("%d users, want 2", n)
	}
}

// Tokens that must not sign anyone in are refused, each saying why, and
// change nothing: expired, wrongly signed, for another audience, of an
// issuer not configured, without a usable name; a name another user has
// is a conflict.
func TestOIDCRefusals(t *testing.T) {
	p := newProvider(t, oidctest.Config{})
	other := newProvider(t, oidctest.Config{})
	e, _ := oidcEnv(t, p)
	e.addUser(t, "carol", "")
	ctx := t.Context()
	forged, err := p.Forge(oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour)
	for _, tc := range []struct {
		name  string
		token string
		want  error
		msg   string
	}{
		{"expired", idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice", IssuedAt: past, Expiry: past.Add(time.Hour)}),
			ErrExpired, "ID token of " + p.URL + " expired at"},
		{"wrongly signed", forged, ErrInvalidToken, "failed to verify signature"},
		{"wrong audience", idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice", Audience: []string{"someone-else"}}),
			ErrInvalidToken, `expected audience "cove-cli"`},
		{"issuer not configured", idToken(t, other, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice"}),
			ErrUnknownToken, "a JWT of issuer \"" + other.URL + "\", which is not configured"},
		{"no name", idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "not a name!"}),
			ErrInvalidToken, "no preferred_username or email that makes a user name"},
		{"payload not JSON", "a.b.c", ErrUnknownToken, "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.auth.Authenticate(ctx, tc.token)
			if !errors.Is(err, tc.want) || !IsRefusal(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v, want %v saying %q", err, tc.want, tc.msg)
			}
		})
	}

	_, err = e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-9", PreferredUsername: "carol"}))
	if !api.IsCode(err, api.CodeConflict) || IsRefusal(err) || !strings.Contains(err.Error(), `would be user "carol", and another user has that name`) {
		t.Errorf("name clash: %v", err)
	}
	if us := users(t, e); len(us) != 1 || us[0].Name != "carol" || us[0].Issuer != "" {
		t.Errorf("users after refusals: %+v", us)
	}
}

// A user that an admin removed cannot sign in again by OIDC: its next ID
// token, whatever name it carries, is refused (ErrRevoked, saying how to
// re-add it) and makes no user; another subject of the issuer signs in
// as before. An admin's 'cove user add' of the name re-adds it, with its
// issuer and subject, and its sign-in works again as that user.
func TestOIDCRemovedUserStaysOut(t *testing.T) {
	p := newProvider(t, oidctest.Config{})
	e, _ := oidcEnv(t, p)
	ctx := t.Context()
	alice := idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice", Groups: []string{"platform"}})
	first, err := e.auth.Authenticate(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dir.RemoveUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"the same token": alice,
		"a new name":     idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice2"}),
	} {
		_, err := e.auth.Authenticate(ctx, tok)
		if !errors.Is(err, ErrRevoked) || !IsRefusal(err) || !strings.Contains(err.Error(), `user "alice" was removed`) ||
			!strings.Contains(err.Error(), "an admin must re-add them (cove user add alice)") {
			t.Errorf("%s after rm: %v; want ErrRevoked saying alice was removed and how to re-add", name, err)
		}
	}
	if us := users(t, e); len(us) != 0 {
		t.Fatalf("users after refused sign-ins: %+v; want none", us)
	}
	if pr, err := e.auth.Authenticate(ctx, idToken(t, p, oidctest.Claims{Subject: "sub-2", PreferredUsername: "bob"})); err != nil || pr.User.Name != "bob" {
		t.Errorf("another subject: %+v, %v", pr, err)
	}

	back := e.addUser(t, "alice", "")
	if back.Issuer != p.URL || back.Subject != "sub-1" || back.ID == first.User.ID {
		t.Errorf("re-added %+v; want a new id with issuer %s, subject sub-1", back, p.URL)
	}
	pr, err := e.auth.Authenticate(ctx, alice)
	if err != nil || pr.User.ID != back.ID || pr.User.Name != "alice" || !slices.Equal(pr.Teams, []string{"platform"}) {
		t.Errorf("sign-in after re-add: %+v, %v; want user %s in platform", pr, err, back.ID)
	}
}

// An issuer whose keys or discovery document cannot be fetched makes no
// refusal: the token may be good, so the answer is CodeUnavailable (503),
// and once the keys are back the same token signs in.
func TestOIDCIssuerUnreachable(t *testing.T) {
	p := newProvider(t, oidctest.Config{})
	e, _ := oidcEnv(t, p)
	tok := idToken(t, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice"})
	p.SetKeysDown(true)
	_, err := e.auth.Authenticate(t.Context(), tok)
	if !api.IsCode(err, api.CodeUnavailable) || IsRefusal(err) || !strings.Contains(err.Error(), "cannot be reached") {
		t.Fatalf("keys down: %v, want CodeUnavailable", err)
	}
	if n := len(users(t, e)); n != 0 {
		t.Errorf("%d users made while the keys were down", n)
	}
	p.SetKeysDown(false)
	if pr, err := e.auth.Authenticate(t.Context(), tok); err != nil || pr.User.Name != "alice" {
		t.Fatalf("keys back: %+v, %v", pr, err)
	}

	// An issuer whose discovery fails is not asked again for a while: its
	// tokens are 503 at once until rediscoverAfter has passed.
	q := newProvider(t, oidctest.Config{})
	e3 := newTestEnv(t)
	v3, err := NewOIDC(OIDCConfig{Issuers: []OIDCIssuer{{URL: q.URL, ClientID: q.ClientID}}, Store: e3.st, Now: e3.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tokQ := idToken(t, q, oidctest.Claims{Subject: "sub-q", PreferredUsername: "quinn", Expiry: e3.clock.Now().Add(time.Hour)})
	q.SetDown(true)
	if _, err := v3.Verify(t.Context(), tokQ); !api.IsCode(err, api.CodeUnavailable) {
		t.Fatalf("issuer down: %v", err)
	}
	q.SetDown(false)
	if _, err := v3.Verify(t.Context(), tokQ); !api.IsCode(err, api.CodeUnavailable) {
		t.Errorf("issuer back, within %s of the failure: %v, want the failure again", rediscoverAfter, err)
	}
	e3.clock.Advance(rediscoverAfter)
	if pr, err := v3.Verify(t.Context(), tokQ); err != nil || pr.User.Name != "quinn" {
		t.Errorf("issuer back, %s later: %+v, %v", rediscoverAfter, pr, err)
	}

	// An issuer that is not there at all.
	gone := newProvider(t, oidctest.Config{})
	tok = idToken(t, gone, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice"})
	e2, v := oidcEnv(t, gone)
	gone.Close()
	if err := v.Discover(t.Context()); err == nil || !strings.Contains(err.Error(), "discovery") {
		t.Errorf("Discover of a closed issuer: %v", err)
	}
	if _, err := e2.auth.Authenticate(t.Context(), tok); !api.IsCode(err, api.CodeUnavailable) || IsRefusal(err) {
		t.Errorf("issuer down: %v, want CodeUnavailable", err)
	}
}

// ParseOIDCIssuer takes ISSUER_URL=CLIENT_ID and refuses the rest, saying
// what it wants; NewOIDC refuses an issuer twice.
func TestParseOIDCIssuer(t *testing.T) {
	is, err := ParseOIDCIssuer(" https://login.example.com/realms/eng = cove ")
	if err != nil || is.URL != "https://login.example.com/realms/eng" || is.ClientID != "cove" {
		t.Errorf("ParseOIDCIssuer = %+v, %v", is, err)
	}
	if _, err := ParseOIDCIssuer("http://127.0.0.1:5556=cli"); err != nil {
		t.Errorf("loopback http: %v", err)
	}
	for in, want := range map[string]string{
		"https://login.example.com":       "want ISSUER_URL=CLIENT_ID",
		"http://login.example.com=cove":   "must be https",
		"https://login.example.com?a=b=c": "not an issuer URL",
		"login.example.com=cove":          "not an issuer URL",
		"https://login.example.com=":      "client id",
		"https://login.example.com=a b":   "client id",
	} {
		if _, err := ParseOIDCIssuer(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOIDCIssuer(%q) = %v, want %q", in, err, want)
		}
	}
	e := newTestEnv(t)
	twice := OIDCIssuer{URL: "https://login.example.com", ClientID: "cove"}
	if _, err := NewOIDC(OIDCConfig{Issuers: []OIDCIssuer{twice, twice}, Store: e.st}); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("an issuer twice: %v", err)
	}
}

// Scopes narrow a token to actions or families of them; a token without
// any may do all; a scope that names no action is refused at create.
func TestScopes(t *testing.T) {
	p := Principal{Scopes: []string{"session.read", "template.*"}}
	for action, want := range map[string]bool{"session.read": true, "session.exec": false, "session.list": false,
		"template.delete": true, "templates.read": false, "token.create": false} {
		if got := p.ScopeAllows(action); got != want {
			t.Errorf("ScopeAllows(%s) = %v, want %v", action, got, want)
		}
	}
	if !(Principal{}).ScopeAllows("user.admin") {
		t.Error("a principal without scopes is refused")
	}
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	for _, bad := range []string{"sessions:read", "session.*x", ".*", "nothing.*", "session"} {
		_, err := e.dir.CreateToken(t.Context(), api.CreateTokenRequest{Name: "x", User: "alice", Scopes: []string{"session.read", bad}})
		if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), `scopes: "`+bad+`" is not a scope`) {
			t.Errorf("scope %q: %v", bad, err)
		}
	}
	if toks, _ := e.dir.ListTokens(t.Context(), ""); len(toks) != 0 {
		t.Errorf("refused creates made %d tokens", len(toks))
	}
	if _, err := e.dir.CreateToken(t.Context(), api.CreateTokenRequest{Name: "ro", User: "alice", Scopes: []string{"session.list", "session.read", "image.*"}}); err != nil {
		t.Errorf("good scopes: %v", err)
	}
}

// BenchmarkAuthenticateOIDC measures authenticating an ID token of a real
// provider on loopback with its keys cached: signature, claims, the user
// by subject and its teams in a real SQLite store.
func BenchmarkAuthenticateOIDC(b *testing.B) {
	p := newProvider(b, oidctest.Config{})
	e, _ := oidcEnv(b, p)
	tok := idToken(b, p, oidctest.Claims{Subject: "sub-1", PreferredUsername: "alice", Groups: []string{"platform"}})
	ctx := context.Background()
	if _, err := e.auth.Authenticate(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.auth.Authenticate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
