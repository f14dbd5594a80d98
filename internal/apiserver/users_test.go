package apiserver

import (
	"context"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// idEnv is a server whose users and tokens live in a real SQLite store,
// kept by a real identity.Directory and checked by a real
// identity.Authenticator, on a settable clock.
type idEnv struct {
	*testEnv
	st    *sqlite.Store
	path  string
	mu    sync.Mutex
	clock time.Time // guarded by mu
}

func (e *idEnv) now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.clock
}

func (e *idEnv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock = e.clock.Add(d)
}

func newIDEnv(t *testing.T, edit ...func(*Config)) *idEnv {
	t.Helper()
	e := &idEnv{path: filepath.Join(t.TempDir(), "cove.db"), clock: time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)}
	st, err := sqlite.Open(t.Context(), e.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.st = st
	e.testEnv = newEnv(t, append([]func(*Config){func(c *Config) {
		c.Identities = &identity.Directory{Store: st, Now: e.now}
		c.Authenticator = identity.NewAuthenticator(identity.AuthConfig{Store: st, Now: e.now})
	}}, edit...)...)
	return e
}

// authAs is the header pair that authenticates as token.
func authAs(token string) []string { return []string{"Authorization", "Bearer " + token} }

// addUser adds a user with the admin token.
func (e *idEnv) addUser(t *testing.T, name, kind string, teams ...string) api.User {
	t.Helper()
	return decode[api.User](t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: name, Kind: kind, Teams: teams}), 201)
}

// mint makes a token with the admin token.
func (e *idEnv) mint(t *testing.T, req api.CreateTokenRequest) api.CreatedToken {
	t.Helper()
	return decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", req), 201)
}

// TestUsersCRUD protects /v1/users with the admin token: add (default
// kind engineer, teams sorted), a taken name 409, malformed fields 400
// naming the field and changing nothing, list, remove, unknown 404.
func TestUsersCRUD(t *testing.T) {
	e := newIDEnv(t)
	u := e.addUser(t, "alice", "", "platform", "backend")
	if u.Name != "alice" || u.Kind != api.UserEngineer || !slices.Equal(u.Teams, []string{"backend", "platform"}) || u.ID == "" {
		t.Errorf("created %+v", u)
	}
	e.addUser(t, "ci", api.UserService)

	body := wantError(t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: "alice"}), 409, api.CodeConflict)
	if body.Message != `user "alice" exists` {
		t.Errorf("duplicate: %q", body.Message)
	}
	for _, tc := range []struct{ body, msg string }{
		{`{"name":"Bob"}`, `name: "Bob" is not a user name`},
		{`{"name":"bob","kind":"god"}`, `kind: "god"`},
		{`{"name":"bob","teams":["a b"]}`, `teams: "a b"`},
		{`{"name":"bob","admin":true}`, `unknown field "admin"`},
		{`{}`, `name: "" is not a user name`},
	} {
		body := wantError(t, e.do("POST", "/v1/users", strings.NewReader(tc.body), "Content-Type", "application/json"), 400, api.CodeInvalid)
		if !strings.Contains(body.Message, tc.msg) {
			t.Errorf("%s: %q does not say %q", tc.body, body.Message, tc.msg)
		}
	}

	list := decode[userList](t, e.do("GET", "/v1/users", nil), 200)
	var names []string
	for _, u := range list.Users {
		names = append(names, u.Name)
	}
	if !slices.Equal(names, []string{"alice", "ci"}) {
		t.Errorf("users %q, want [alice ci]", names)
	}

	if resp := e.do("DELETE", "/v1/users/alice", nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	body = wantError(t, e.do("DELETE", "/v1/users/alice", nil), 404, api.CodeNotFound)
	if body.Message != `no user "alice"` {
		t.Errorf("delete unknown: %q", body.Message)
	}
	if list := decode[userList](t, e.do("GET", "/v1/users", nil), 200); len(list.Users) != 1 || list.Users[0].Name != "ci" {
		t.Errorf("users after delete: %+v", list.Users)
	}
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("the session manager was called %d times", n)
	}
}

// A server without Identities answers the user and token routes 503,
// once the caller is known to be an admin.
func TestIdentityRoutesUnconfigured(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Identities = nil })
	for _, rq := range []struct{ method, path, body string }{
		{"POST", "/v1/users", `{"name":"a"}`},
		{"GET", "/v1/users", ""},
		{"DELETE", "/v1/users/a", ""},
		{"POST", "/v1/tokens", `{"name":"a","user":"a"}`},
		{"GET", "/v1/tokens", ""},
		{"POST", "/v1/tokens/tok_a/revoke", ""},
	} {
		resp := e.do(rq.method, rq.path, strings.NewReader(rq.body))
		wantError(t, resp, 503, api.CodeUnavailable)
	}
	wantError(t, e.do("GET", "/v1/users", nil, authAs("cove_x")...), 401, api.CodeUnauthorized)
}

// The gate gives Authorize the user's name and the token's id (not a
// session id) of the identity routes, and the principal in the context.
func TestIdentityActionsReachAuthorize(t *testing.T) {
	var mu sync.Mutex
	var got []Action             // guarded by mu
	var who []identity.Principal // guarded by mu
	e := newIDEnv(t, func(c *Config) {
		c.Authorize = func(ctx context.Context, a Action) error {
			p, _ := identity.FromContext(ctx)
			mu.Lock()
			defer mu.Unlock()
			got, who = append(got, a), append(who, p)
			return nil
		}
	})
	e.do("DELETE", "/v1/users/alice", nil)
	e.do("POST", "/v1/tokens/tok_abc/revoke", nil)
	e.do("GET", "/v1/tokens?user=bob", nil)
	e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: "carol"})
	want := []Action{
		{Verb: "user.delete", User: "alice"},
		{Verb: "token.revoke", Token: "tok_abc"},
		{Verb: "token.list", User: "bob"},
		{Verb: "user.create"},
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Authorize saw %+v, want %+v", got, want)
	}
	for i, p := range who {
		if p.Kind != identity.KindAdminToken {
			t.Errorf("action %d: principal %+v, want the admin token's", i, p)
		}
	}
}

// The user routes are an admin's even when a policy lets everyone
// through: an engineer's token is refused 403 with the reason. (The token
// routes are the policy's: see TestPolicyTokens.)
func TestUserRoutesNeedAnAdmin(t *testing.T) {
	e := newIDEnv(t, func(c *Config) { c.Authorize = func(context.Context, Action) error { return nil } })
	e.addUser(t, "bob", "")
	tok := e.mint(t, api.CreateTokenRequest{Name: "b", User: "bob"})
	for _, rq := range []struct{ method, path, body string }{
		{"POST", "/v1/users", `{"name":"mallory","kind":"admin"}`},
		{"GET", "/v1/users", ""},
		{"DELETE", "/v1/users/bob", ""},
	} {
		resp := e.do(rq.method, rq.path, strings.NewReader(rq.body), authAs(tok.Secret)...)
		body := wantError(t, resp, http.StatusForbidden, codeForbidden)
		if !strings.Contains(body.Message, `user "bob" is not an admin`) {
			t.Errorf("%s %s: %q", rq.method, rq.path, body.Message)
		}
	}
	if list := decode[userList](t, e.do("GET", "/v1/users", nil), 200); len(list.Users) != 1 {
		t.Errorf("users after refusals: %+v", list.Users)
	}
	if toks := decode[tokenList](t, e.do("GET", "/v1/tokens", nil), 200); len(toks.Tokens) != 1 || toks.Tokens[0].State != api.TokenActive {
		t.Errorf("tokens after refusals: %+v", toks.Tokens)
	}
}
