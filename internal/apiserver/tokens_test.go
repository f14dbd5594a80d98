package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store"
)

// TestTokensEndToEnd protects API tokens over HTTP: an admin mints one
// for a user (its secret shown once, never listed); an admin user's token
// passes the gate like the admin token, and mints for itself; an
// engineer's token is 403 everywhere until a policy decides, and reaches
// no service; revoked, expired, unknown and oversized tokens are 401 each
// saying why; the admin token works as before.
func TestTokensEndToEnd(t *testing.T) {
	e := newIDEnv(t)
	e.addUser(t, "root", api.UserAdmin)
	e.addUser(t, "bob", "")

	resp := e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "ops", User: "root", Scopes: []string{"session.*", "token.create"}})
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	rootTok := decode[api.CreatedToken](t, resp, 201)
	if !strings.HasPrefix(rootTok.Secret, "cove_") || rootTok.User != "root" || rootTok.State != api.TokenActive ||
		len(rootTok.Scopes) != 2 || rootTok.ExpiresAt != nil {
		t.Errorf("created %+v", rootTok.Token)
	}

	// The admin user's token: sessions, and a token of its own, scoped
	// within its own scopes: it cannot mint a wider one.
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil, authAs(rootTok.Secret)...), 200)
	before, _ := e.st.ListTokens(t.Context(), "")
	for _, tc := range []struct {
		scopes []string
		msg    string
	}{
		{nil, "token.create refused: the token you use is scoped (session.*, token.create), so the token it mints must be too"},
		{[]string{"session.read", "image.build"}, `token.create refused: scope "image.build" is beyond the scopes of the token you use (session.*, token.create)`},
		{[]string{"token.*"}, `token.create refused: scope "token.*" is beyond the scopes`},
	} {
		body := wantError(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "wide", Scopes: tc.scopes}, authAs(rootTok.Secret)...), 403, api.CodeForbidden)
		if !strings.HasPrefix(body.Message, tc.msg) {
			t.Errorf("scoped token mints scopes %q: %q, want %q…", tc.scopes, body.Message, tc.msg)
		}
	}
	if after, _ := e.st.ListTokens(t.Context(), ""); len(after) != len(before) {
		t.Errorf("refused mints stored tokens: %d before, %d after", len(before), len(after))
	}
	own := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "second", ExpiresIn: "1h",
		Scopes: []string{"session.list", "session.*", "token.create"}}, authAs(rootTok.Secret)...), 201)
	if own.User != "root" || own.ExpiresAt == nil || !own.ExpiresAt.Equal(e.now().Add(time.Hour)) || len(own.Scopes) != 3 {
		t.Errorf("token minted by root for itself: %+v", own.Token)
	}
	// A scoped token's mints expire with it at the latest.
	for _, expires := range []string{"", "2h"} {
		sub := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "sub", ExpiresIn: expires,
			Scopes: []string{"session.read"}}, authAs(own.Secret)...), 201)
		if sub.ExpiresAt == nil || !sub.ExpiresAt.Equal(*own.ExpiresAt) {
			t.Errorf("minted with expires_in %q by a token that expires at %s: expires at %v", expires, own.ExpiresAt, sub.ExpiresAt)
		}
	}
	if sub := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "sub", ExpiresIn: "30m",
		Scopes: []string{"session.read"}}, authAs(own.Secret)...), 201); sub.ExpiresAt == nil || !sub.ExpiresAt.Equal(e.now().Add(30*time.Minute)) {
		t.Errorf("minted with expires_in 30m by a token with an hour left: expires at %v", sub.ExpiresAt)
	}
	// The admin token is no user: it names one.
	body := wantError(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "x"}), 400, api.CodeInvalid)
	if !strings.Contains(body.Message, "user: missing; the admin token is no user") {
		t.Errorf("admin token without user: %q", body.Message)
	}
	body = wantError(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "x", User: "nobody"}), 400, api.CodeInvalid)
	if body.Message != `user: no user "nobody"` {
		t.Errorf("unknown user: %q", body.Message)
	}

	// An engineer's token: refused everywhere, the manager never asked.
	bobTok := e.mint(t, api.CreateTokenRequest{Name: "laptop", User: "bob"})
	calls := e.fake.calls.Load()
	for _, path := range []string{"/v1/sessions", "/v1/templates", "/v1/openapi.json"} {
		body := wantError(t, e.do("GET", path, nil, authAs(bobTok.Secret)...), http.StatusForbidden, codeForbidden)
		if !strings.Contains(body.Message, `user "bob" is not an admin, and only admins may use this server until a policy is configured`) {
			t.Errorf("%s: %q", path, body.Message)
		}
	}
	if n := e.fake.calls.Load() - calls; n != 0 {
		t.Errorf("the session manager was called %d times for an engineer", n)
	}

	// The list never holds a secret.
	resp = e.do("GET", "/v1/tokens", nil)
	raw, _ := io.ReadAll(resp.Body)
	for _, s := range []string{rootTok.Secret, own.Secret, bobTok.Secret, "secret"} {
		if strings.Contains(string(raw), s) {
			t.Errorf("token list holds %q: %s", s, raw)
		}
	}
	if resp := e.do("GET", "/v1/tokens?user=bob", nil); resp.StatusCode != 200 {
		t.Errorf("tokens of bob: %d", resp.StatusCode)
	} else if list := decode[tokenList](t, resp, 200); len(list.Tokens) != 1 || list.Tokens[0].ID != bobTok.ID {
		t.Errorf("tokens of bob: %+v", list.Tokens)
	}
	wantError(t, e.do("GET", "/v1/tokens?user=nobody", nil), 404, api.CodeNotFound)

	// Revoked: 401 at once, saying so; listed revoked.
	revoked := decode[api.Token](t, e.do("POST", "/v1/tokens/"+rootTok.ID+"/revoke", nil), 200)
	if revoked.State != api.TokenRevoked || revoked.RevokedAt == nil {
		t.Errorf("revoked %+v", revoked)
	}
	wantError(t, e.do("POST", "/v1/tokens/tok_nope/revoke", nil), 404, api.CodeNotFound)

	// Expired, once the clock passes its hour.
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil, authAs(own.Secret)...), 200)
	e.advance(time.Hour)

	unknown := "cove_" + strings.Repeat("A", 43)
	for _, tc := range []struct{ name, token, msg string }{
		{"revoked", rootTok.Secret, "invalid bearer token: token revoked: token " + rootTok.ID},
		{"expired", own.Secret, "invalid bearer token: token expired: token " + own.ID},
		{"unknown", unknown, "invalid bearer token: unknown token: no such API token"},
		{"garbage", "nope", "invalid bearer token: unknown token"},
		{"too large", strings.Repeat("x", 17000), "invalid bearer token: token too large: 17000 bytes; the limit is 16384"},
	} {
		resp := e.do("GET", "/v1/sessions", nil, authAs(tc.token)...)
		body := wantError(t, resp, 401, api.CodeUnauthorized)
		if !strings.HasPrefix(body.Message, tc.msg) {
			t.Errorf("%s: %q, want it to start %q", tc.name, body.Message, tc.msg)
		}
		if h := resp.Header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, h)
		}
	}

	// Removing bob revokes his token.
	if resp := e.do("DELETE", "/v1/users/bob", nil); resp.StatusCode != 204 {
		t.Fatalf("remove bob: %d", resp.StatusCode)
	}
	body = wantError(t, e.do("GET", "/v1/sessions", nil, authAs(bobTok.Secret)...), 401, api.CodeUnauthorized)
	if !strings.Contains(body.Message, "token revoked") {
		t.Errorf("removed user's token: %q", body.Message)
	}

	// The admin token is as it was.
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil), 200)
	wantError(t, e.do("GET", "/v1/sessions", nil, authAs(testToken+"x")...), 401, api.CodeUnauthorized)
}

// authFunc is an Authenticator made of a function.
type authFunc func(ctx context.Context, bearer string) (identity.Principal, error)

func (f authFunc) Authenticate(ctx context.Context, bearer string) (identity.Principal, error) {
	return f(ctx, bearer)
}

// An Authenticator that cannot check a credential (its store unavailable,
// or worse) is no refusal: 503 with the store's reason, or 500 with the
// detail kept in the log, never a 401 that would tell a client with a good
// token to give up on it.
func TestAuthenticatorFailuresAreNotRefusals(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Authenticator = authFunc(func(ctx context.Context, bearer string) (identity.Principal, error) {
			switch bearer {
			case "locked":
				return identity.Principal{}, fmt.Errorf("identity: authenticate: %w: the database is locked by another process", store.ErrUnavailable)
			case "revoked":
				return identity.Principal{}, fmt.Errorf("%w: by hand", identity.ErrRevoked)
			}
			return identity.Principal{}, errors.New("identity: authenticate: disk on fire at /var/lib/cove")
		})
	})
	body := wantError(t, e.do("GET", "/v1/sessions", nil, authAs("locked")...), 503, api.CodeUnavailable)
	if !strings.Contains(body.Message, "state store unavailable: the database is locked") {
		t.Errorf("locked: %q", body.Message)
	}
	body = wantError(t, e.do("GET", "/v1/sessions", nil, authAs("other")...), 500, api.CodeInternal)
	if strings.Contains(body.Message, "/var/lib/cove") {
		t.Errorf("internal error leaks host detail: %q", body.Message)
	}
	body = wantError(t, e.do("GET", "/v1/sessions", nil, authAs("revoked")...), 401, api.CodeUnauthorized)
	if body.Message != "invalid bearer token: token revoked: by hand" {
		t.Errorf("revoked: %q", body.Message)
	}
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("the session manager was called %d times", n)
	}
	// The admin token never reaches the Authenticator.
	decode[userList](t, e.do("GET", "/v1/users", nil, authAs(testToken)...), 200)
}

// A write the store refused because the record changed since it was read
// (another request or server wrote it first) is a 409 that names the
// record, not a 500: the client reads again and decides afresh.
func TestStoreConflictIs409(t *testing.T) {
	e := newEnv(t)
	e.fake.setCreate(func() error {
		return fmt.Errorf("session: create s-abc: record: sqlite: update session s-abc: %w (generation 3, the copy's 2)", store.ErrConflict)
	})
	body := wantError(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 409, api.CodeConflict)
	if !strings.Contains(body.Message, "session s-abc") || !strings.Contains(body.Message, "changed since it was read") {
		t.Errorf("conflict message = %q, want it to name the session and say it changed", body.Message)
	}
}
