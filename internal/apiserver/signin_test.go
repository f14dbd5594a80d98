package apiserver

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// A scoped API token is refused what its scopes do not cover, with 403
// naming them, even where the policy allows it (alice owns the session);
// what they cover works; lists hide what a token may not read.
func TestTokenScopesEnforced(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	s := e.createSession(t, alice, api.CreateSessionRequest{})
	ro := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens",
		api.CreateTokenRequest{Name: "ro", User: "alice", Scopes: []string{"session.list", "session.read"}}), 201).Secret

	if ids := e.sessionIDs(t, authAs(ro)...); !slices.Equal(ids, []string{s.ID}) {
		t.Errorf("list with the read-only token: %v", ids)
	}
	decode[api.Session](t, e.do("GET", "/v1/sessions/"+s.ID, nil, authAs(ro)...), 200)
	for _, c := range []struct{ method, path, verb, action string }{
		{"POST", "/v1/sessions/" + s.ID + "/exec", "session.exec", "session.exec"},
		{"POST", "/v1/sessions/" + s.ID + "/park", "session.park", "session.park"},
		{"DELETE", "/v1/sessions/" + s.ID, "session.delete", "session.delete"},
		{"GET", "/v1/sessions/" + s.ID + "/files?path=/etc/hostname", "file.read", "session.files"},
		{"POST", "/v1/tokens", "token.create", "token.create"},
	} {
		body := wantError(t, e.doJSON(c.method, c.path, api.ExecRequest{Argv: []string{"true"}}, authAs(ro)...), http.StatusForbidden, api.CodeForbidden)
		if want := c.verb + " refused: this token's scopes (session.list, session.read) do not include " + c.action; body.Message != want {
			t.Errorf("%s %s: %q, want %q", c.method, c.path, body.Message, want)
		}
	}
	// The session is still there, running, for its owner's full token.
	if got := decode[api.Session](t, e.do("GET", "/v1/sessions/"+s.ID, nil, alice.auth()...), 200); got.State != api.StateRunning {
		t.Errorf("session after refusals: %s", got.State)
	}
	// A token scoped to tokens only sees no sessions.
	tokOnly := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens",
		api.CreateTokenRequest{Name: "tok", User: "alice", Scopes: []string{"token.*", "session.list"}}), 201).Secret
	if ids := e.sessionIDs(t, authAs(tokOnly)...); len(ids) != 0 {
		t.Errorf("a token without session.read lists %v", ids)
	}
	who := decode[api.WhoAmI](t, e.do("GET", "/v1/whoami", nil, authAs(ro)...), 200)
	if who.Kind != "user" || who.User == nil || who.User.Name != "alice" || !slices.Equal(who.Scopes, []string{"session.list", "session.read"}) {
		t.Errorf("whoami: %+v", who)
	}
}

// Without a policy (admins only), an admin's scoped token is still held
// to its scopes.
func TestTokenScopesWithoutPolicy(t *testing.T) {
	e := newIDEnv(t)
	e.addUser(t, "root", api.UserAdmin)
	tok := e.mint(t, api.CreateTokenRequest{Name: "ro", User: "root", Scopes: []string{"session.list"}}).Secret
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil, authAs(tok)...), 200)
	body := wantError(t, e.do("GET", "/v1/users", nil, authAs(tok)...), http.StatusForbidden, api.CodeForbidden)
	if body.Message != "user.list refused: this token's scopes (session.list) do not include user.admin" {
		t.Errorf("users with a session.list token: %q", body.Message)
	}
}

// oidcServer is an API server under the default policy that accepts the
// ID tokens of p (on the real clock, as p signs them), and publishes p at
// /auth/oidc.
func oidcServer(t *testing.T, p *oidctest.Provider) *idEnv {
	t.Helper()
	return newIDEnv(t, func(c *Config) {
		dir := c.Identities.(*identity.Directory)
		v, err := identity.NewOIDC(identity.OIDCConfig{Issuers: []identity.OIDCIssuer{{URL: p.URL, ClientID: p.ClientID}}, Store: dir.Store})
		if err != nil {
			t.Fatal(err)
		}
		c.Authenticator = identity.NewAuthenticator(identity.AuthConfig{Store: dir.Store, JWT: []identity.JWTVerifier{v}, Now: dir.Now})
		c.Authorize = (&PolicyGate{Policy: policy.New(), Records: dir.Store.(*sqlite.Store)}).Authorize
		c.SignIn = []api.OIDCIssuer{{Issuer: p.URL, ClientID: p.ClientID}}
	})
}

// newOIDCProvider starts a real OIDC provider on loopback.
func newOIDCProvider(t *testing.T) *oidctest.Provider {
	t.Helper()
	p, err := oidctest.New(oidctest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Through the gate: GET /auth/oidc tells a client without a token where
// to sign in; an ID token of the configured issuer is its user (whoami);
// expired, wrongly signed, wrongly audienced, unconfigured issuers' and
// oversized tokens are 401 each saying why and make no user; an issuer
// whose keys cannot be fetched is 503, not 401.
func TestOIDCThroughTheGate(t *testing.T) {
	p := newOIDCProvider(t)
	other := newOIDCProvider(t)
	e := oidcServer(t, p)

	si := decode[api.SignIn](t, e.do("GET", "/auth/oidc", nil, "Authorization", ""), 200)
	if len(si.OIDC) != 1 || si.OIDC[0].Issuer != p.URL || si.OIDC[0].ClientID != p.ClientID {
		t.Errorf("GET /auth/oidc: %+v", si)
	}

	sign := func(pr *oidctest.Provider, c oidctest.Claims) string {
		t.Helper()
		tok, err := pr.IDToken(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// The keys cannot be fetched (first use): 503, and no user.
	good := sign(p, oidctest.Claims{Subject: "s1", PreferredUsername: "alice", Groups: []string{"platform"}})
	p.SetKeysDown(true)
	body := wantError(t, e.do("GET", "/v1/whoami", nil, authAs(good)...), http.StatusServiceUnavailable, api.CodeUnavailable)
	if !strings.Contains(body.Message, "OIDC issuer "+p.URL+" cannot be reached") {
		t.Errorf("503 %q", body.Message)
	}
	p.SetKeysDown(false)

	forged, err := p.Forge(oidctest.Claims{Subject: "s1", PreferredUsername: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-3 * time.Hour)
	for _, c := range []struct{ name, token, msg string }{
		{"expired", sign(p, oidctest.Claims{Subject: "s1", PreferredUsername: "alice", IssuedAt: past, Expiry: past.Add(time.Hour)}),
			"invalid bearer token: token expired: ID token of " + p.URL + " expired at " + past.Add(time.Hour).UTC().Format(time.RFC3339)},
		{"wrongly signed", forged, "invalid bearer token: invalid token: ID token of " + p.URL + ": failed to verify signature"},
		{"wrong audience", sign(p, oidctest.Claims{Subject: "s1", PreferredUsername: "alice", Audience: []string{"billing"}}),
			`invalid bearer token: invalid token: ID token of ` + p.URL + `: expected audience "cove-cli" got ["billing"]`},
		{"issuer not configured", sign(other, oidctest.Claims{Subject: "s1", PreferredUsername: "alice"}),
			`invalid bearer token: unknown token: a JWT of issuer "` + other.URL + `", which is not configured`},
		{"oversized", sign(p, oidctest.Claims{Subject: "s1", PreferredUsername: "alice", Groups: slices.Repeat([]string{"platform"}, 2000)}),
			"invalid bearer token: token too large:"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := e.do("GET", "/v1/whoami", nil, authAs(c.token)...)
			body := wantError(t, resp, http.StatusUnauthorized, api.CodeUnauthorized)
			if !strings.HasPrefix(body.Message, c.msg) {
				t.Errorf("401 %q, want %q…", body.Message, c.msg)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if us := decode[struct{ Users []api.User }](t, e.do("GET", "/v1/users", nil), 200).Users; len(us) != 0 {
		t.Errorf("refused tokens made users: %+v", us)
	}
	// With the keys back, the same token is alice.
	who := decode[api.WhoAmI](t, e.do("GET", "/v1/whoami", nil, authAs(good)...), 200)
	if who.Kind != "user" || who.User == nil || who.User.Name != "alice" || who.User.Issuer != p.URL || who.User.Subject != "s1" ||
		!slices.Equal(who.User.Teams, []string{"platform"}) {
		t.Errorf("whoami: %+v (user %+v)", who, who.User)
	}

	// An ID token with a large groups claim, as Azure AD and Okta issue
	// for a user in many groups, is over 8 KiB and still accepted.
	var groups []string
	for i := range 150 {
		groups = append(groups, fmt.Sprintf("dept-%03d-%s", i, strings.Repeat("x", 52)))
	}
	big := sign(p, oidctest.Claims{Subject: "s2", PreferredUsername: "carol", Groups: groups})
	if n := len(big); n <= 8<<10 || n > 16<<10 {
		t.Fatalf("the large ID token is %d bytes; want over 8 KiB and within 16 KiB", n)
	}
	who = decode[api.WhoAmI](t, e.do("GET", "/v1/whoami", nil, authAs(big)...), 200)
	if who.User == nil || who.User.Name != "carol" || len(who.User.Teams) == 0 {
		t.Errorf("whoami with a large groups claim: %+v (user %+v)", who, who.User)
	}
}
