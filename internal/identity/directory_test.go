package identity

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

func wantCode(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	if !api.IsCode(err, code) || !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: %v; want %s saying %q", what, err, code, msg)
	}
}

// AddUser makes engineers by default, keeps teams sorted and once each,
// and refuses a taken name or malformed fields, writing nothing.
func TestAddUser(t *testing.T) {
	e := newTestEnv(t)
	u := e.addUser(t, "alice", "", "platform", "backend", "platform")
	if u.Kind != api.UserEngineer || !slices.Equal(u.Teams, []string{"backend", "platform"}) ||
		!strings.HasPrefix(u.ID, "u_") || !u.CreatedAt.Equal(e.clock.Now()) {
		t.Errorf("AddUser = %+v", u)
	}
	e.addUser(t, "ci-bot", api.UserService)
	e.addUser(t, "root@example.com", api.UserAdmin)

	for _, tc := range []struct {
		req       api.CreateUserRequest
		code, msg string
	}{
		{api.CreateUserRequest{Name: "alice"}, api.CodeConflict, `user "alice" exists`},
		{api.CreateUserRequest{Name: "Alice"}, api.CodeInvalid, `name: "Alice" is not a user name`},
		{api.CreateUserRequest{Name: ""}, api.CodeInvalid, "name:"},
		{api.CreateUserRequest{Name: "-x"}, api.CodeInvalid, "name:"},
		{api.CreateUserRequest{Name: strings.Repeat("a", 65)}, api.CodeInvalid, "name:"},
		{api.CreateUserRequest{Name: "bob", Kind: "root"}, api.CodeInvalid, `kind: "root" is not one of engineer, service, admin`},
		{api.CreateUserRequest{Name: "bob", Teams: []string{"ok", "Not OK"}}, api.CodeInvalid, `teams: "Not OK" is not a team name`},
		{api.CreateUserRequest{Name: "bob", Teams: make([]string, 65)}, api.CodeInvalid, "teams: 65; the limit is 64"},
	} {
		_, err := e.dir.AddUser(t.Context(), tc.req)
		wantCode(t, tc.req.Name, err, tc.code, tc.msg)
	}
	users, err := e.dir.ListUsers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
	}
	if !slices.Equal(names, []string{"alice", "ci-bot", "root@example.com"}) {
		t.Errorf("users %q", names)
	}
	if !slices.Equal(users[0].Teams, []string{"backend", "platform"}) || users[1].Teams == nil || len(users[1].Teams) != 0 {
		t.Errorf("teams %q, %#v", users[0].Teams, users[1].Teams)
	}
}

// CreateToken answers the secret once and stores only its hash: the
// secret is nowhere in the database's files, and the hash finds it.
func TestCreateTokenKeepsOnlyTheHash(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	d := &Directory{Store: st}
	if _, err := d.AddUser(t.Context(), api.CreateUserRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	created, err := d.CreateToken(t.Context(), api.CreateTokenRequest{Name: "laptop", User: "alice",
		ExpiresIn: "720h", Scopes: []string{"session.read"}})
	if err != nil {
		t.Fatal(err)
	}
	if !isAPIToken(created.Secret) || created.User != "alice" || created.State != api.TokenActive ||
		created.ExpiresAt == nil || !created.ExpiresAt.Equal(created.CreatedAt.Add(720*time.Hour)) ||
		!strings.HasPrefix(created.ID, "tok_") {
		t.Errorf("created %+v", created.Token)
	}
	got, err := st.GetTokenByHash(t.Context(), HashToken(created.Secret))
	if err != nil || got.ID != created.ID {
		t.Fatalf("GetTokenByHash(hash of the secret) = %+v, %v", got, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "cove.db*"))
	if len(files) == 0 {
		t.Fatal("no database files")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		hash := HashToken(created.Secret)
		if bytes.Contains(b, []byte(created.Secret)) || bytes.Contains(b, []byte(created.Secret[5:])) {
			t.Errorf("%s holds the secret", filepath.Base(f))
		}
		if bytes.Contains(b, hash[:]) {
			return // the hash is what is there
		}
	}
	t.Error("no database file holds the hash")
}

// CreateToken refuses malformed requests and unknown users, writing no
// token.
func TestCreateTokenRefusals(t *testing.T) {
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	many := make([]string, 33)
	for i := range many {
		many[i] = "s" + strings.Repeat("x", i)
	}
	for _, tc := range []struct {
		req       api.CreateTokenRequest
		code, msg string
	}{
		{api.CreateTokenRequest{Name: "", User: "alice"}, api.CodeInvalid, "name:"},
		{api.CreateTokenRequest{Name: "a b", User: "alice"}, api.CodeInvalid, `name: "a b" is not a token name`},
		{api.CreateTokenRequest{Name: "ci"}, api.CodeInvalid, "user: missing"},
		{api.CreateTokenRequest{Name: "ci", User: "bob"}, api.CodeInvalid, `user: no user "bob"`},
		{api.CreateTokenRequest{Name: "ci", User: "alice", Scopes: []string{"Session"}}, api.CodeInvalid, `scopes: "Session" is not a scope`},
		{api.CreateTokenRequest{Name: "ci", User: "alice", Scopes: []string{"a", "b", "a"}}, api.CodeInvalid, `scopes: "a" is given twice`},
		{api.CreateTokenRequest{Name: "ci", User: "alice", Scopes: many}, api.CodeInvalid, "scopes: 33; the limit is 32"},
		{api.CreateTokenRequest{Name: "ci", User: "alice", ExpiresIn: "soon"}, api.CodeInvalid, `expires_in: "soon" is not a duration`},
		{api.CreateTokenRequest{Name: "ci", User: "alice", ExpiresIn: "-1h"}, api.CodeInvalid, "expires_in:"},
		{api.CreateTokenRequest{Name: "ci", User: "alice", ExpiresIn: "0s"}, api.CodeInvalid, "expires_in:"},
		{api.CreateTokenRequest{Name: "ci", User: "alice", ExpiresIn: "87601h"}, api.CodeInvalid, "up to 87600h"},
	} {
		_, err := e.dir.CreateToken(t.Context(), tc.req)
		wantCode(t, tc.req.Name+"/"+tc.req.User, err, tc.code, tc.msg)
	}
	if toks, err := e.dir.ListTokens(t.Context(), ""); err != nil || len(toks) != 0 {
		t.Errorf("tokens after refusals: %+v, %v", toks, err)
	}
}

// Tokens list with their states, oldest first, by user or all; revoking
// keeps the first time; removing a user revokes its tokens, and a new
// user of its name holds none of them.
func TestTokenLifecycle(t *testing.T) {
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	e.addUser(t, "bob", "")
	a1 := e.mint(t, api.CreateTokenRequest{Name: "a1", User: "alice"})
	e.clock.Advance(time.Second)
	e.mint(t, api.CreateTokenRequest{Name: "a2", User: "alice", ExpiresIn: "1m"})
	e.clock.Advance(time.Second)
	b1 := e.mint(t, api.CreateTokenRequest{Name: "b1", User: "bob", Scopes: []string{"session.*"}})
	e.clock.Advance(time.Minute)

	revokedAt := e.clock.Now()
	r, err := e.dir.RevokeToken(t.Context(), a1.ID)
	if err != nil || r.State != api.TokenRevoked || r.RevokedAt == nil || !r.RevokedAt.Equal(revokedAt) || r.User != "alice" {
		t.Fatalf("RevokeToken = %+v, %v", r, err)
	}
	e.clock.Advance(time.Minute)
	if r, err = e.dir.RevokeToken(t.Context(), a1.ID); err != nil || !r.RevokedAt.Equal(revokedAt) {
		t.Errorf("second RevokeToken = %+v, %v; want the first time kept", r, err)
	}
	_, err = e.dir.RevokeToken(t.Context(), "tok_nope")
	wantCode(t, "revoke unknown", err, api.CodeNotFound, `no token "tok_nope"`)

	states := func(user string) string {
		t.Helper()
		toks, err := e.dir.ListTokens(t.Context(), user)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, tok := range toks {
			s = append(s, tok.Name+"="+tok.User+"/"+tok.State)
		}
		return strings.Join(s, " ")
	}
	if got := states(""); got != "a1=alice/revoked a2=alice/expired b1=bob/active" {
		t.Errorf("all tokens: %s", got)
	}
	if got := states("bob"); got != "b1=bob/active" {
		t.Errorf("bob's tokens: %s", got)
	}
	_, err = e.dir.ListTokens(t.Context(), "carol")
	wantCode(t, "tokens of unknown", err, api.CodeNotFound, `no user "carol"`)

	if err := e.dir.RemoveUser(t.Context(), "bob"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "remove again", e.dir.RemoveUser(t.Context(), "bob"), api.CodeNotFound, `no user "bob"`)
	if got := states(""); got != "a1=alice/revoked a2=alice/expired b1=/revoked" {
		t.Errorf("after removing bob: %s", got)
	}
	if _, err := e.auth.Authenticate(t.Context(), b1.Secret); !errors.Is(err, ErrRevoked) {
		t.Errorf("removed user's token: %v, want ErrRevoked", err)
	}
	e.addUser(t, "bob", "")
	if got := states("bob"); got != "" {
		t.Errorf("the new bob holds %s", got)
	}
	if _, err := e.auth.Authenticate(t.Context(), b1.Secret); !errors.Is(err, ErrRevoked) {
		t.Errorf("old bob's token once a new bob exists: %v, want ErrRevoked", err)
	}
}

// A store's failure is no client error: it comes back wrapped, not as an
// api code or a refusal of the credential.
func TestStoreErrorsPassThrough(t *testing.T) {
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	tok := e.mint(t, api.CreateTokenRequest{Name: "ci", User: "alice"})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.dir.ListUsers(ctx); !errors.Is(err, context.Canceled) || api.CodeOf(err) != api.CodeInternal {
		t.Errorf("ListUsers: %v", err)
	}
	if _, err := e.dir.CreateToken(ctx, api.CreateTokenRequest{Name: "x", User: "alice"}); !errors.Is(err, context.Canceled) || api.CodeOf(err) != api.CodeInternal {
		t.Errorf("CreateToken: %v", err)
	}
	_, err := e.auth.Authenticate(ctx, tok.Secret)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Authenticate: %v; want the store's error", err)
	}
	if IsRefusal(err) {
		t.Errorf("Authenticate: %v is a refusal", err)
	}
}

// MintToken keeps a scoped caller within its scopes: a scope is covered
// by itself or its family, a family only by itself; a token with no scope
// (all its user may) is refused; an unscoped caller mints anything. A
// refusal is CodeForbidden and stores nothing.
func TestMintTokenWithinTheCallersScopes(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d := &Directory{Store: st}
	if _, err := d.AddUser(t.Context(), api.CreateUserRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	scoped := Principal{Kind: KindUser, Scopes: []string{"session.*", "token.create", "template.read"}}
	for _, tc := range []struct {
		caller Principal
		scopes []string
		ok     bool
	}{
		{scoped, []string{"session.exec", "token.create"}, true},
		{scoped, []string{"session.*"}, true},
		{scoped, []string{"template.read"}, true},
		{scoped, nil, false},
		{scoped, []string{"template.*"}, false}, // a family it holds one action of
		{scoped, []string{"template.delete"}, false},
		{scoped, []string{"session.read", "user.admin"}, false},
		{Principal{Kind: KindUser}, nil, true},
		{Principal{Kind: KindUser}, []string{"user.*"}, true},
	} {
		before, _ := st.ListTokens(t.Context(), "")
		_, err := d.MintToken(t.Context(), tc.caller, api.CreateTokenRequest{Name: "t", User: "alice", Scopes: tc.scopes})
		after, _ := st.ListTokens(t.Context(), "")
		switch {
		case tc.ok && err != nil:
			t.Errorf("caller %q mints %q: %v", tc.caller.Scopes, tc.scopes, err)
		case !tc.ok && !api.IsCode(err, api.CodeForbidden):
			t.Errorf("caller %q mints %q: %v, want forbidden", tc.caller.Scopes, tc.scopes, err)
		case !tc.ok && len(after) != len(before):
			t.Errorf("caller %q mints %q: refused, and stored a token", tc.caller.Scopes, tc.scopes)
		}
	}
	// A typo is a malformed scope, not one beyond the caller's.
	if _, err := d.MintToken(t.Context(), scoped, api.CreateTokenRequest{Name: "t", User: "alice", Scopes: []string{"sesion.read"}}); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("a misspelt scope: %v, want invalid", err)
	}
}

// FirstAdmin makes an admin user named admin while no user is an admin,
// once: called again (a restart) it makes no second, and where another
// admin exists it makes none; where no user is an admin but "admin" is an
// engineer's name, it changes nothing and says how to make one.
func TestFirstAdmin(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.addUser(t, "alice", "")
	u, made, err := e.dir.FirstAdmin(ctx)
	if err != nil || !made || u.Name != FirstAdminName || u.Kind != api.UserAdmin {
		t.Fatalf("FirstAdmin = %+v, %v, %v; want a new admin named %s", u, made, err, FirstAdminName)
	}
	again, made, err := e.dir.FirstAdmin(ctx)
	if err != nil || made || again.ID != u.ID {
		t.Errorf("FirstAdmin again = %+v, %v, %v; want the same user, not made", again, made, err)
	}
	if users, _ := e.dir.ListUsers(ctx); len(users) != 2 {
		t.Errorf("users %+v, want alice and one admin", users)
	}

	other := newTestEnv(t)
	root := other.addUser(t, "root", api.UserAdmin)
	if got, made, err := other.dir.FirstAdmin(ctx); err != nil || made || got.ID != root.ID {
		t.Errorf("with an admin root: %+v, %v, %v; want root, not made", got, made, err)
	}

	taken := newTestEnv(t)
	taken.addUser(t, FirstAdminName, api.UserEngineer)
	_, made, err = taken.dir.FirstAdmin(ctx)
	wantCode(t, "admin is an engineer", err, api.CodeConflict, "cove user add NAME --kind admin")
	if made {
		t.Error("made an admin where the name is taken")
	}
	if users, _ := taken.dir.ListUsers(ctx); len(users) != 1 || users[0].Kind != api.UserEngineer {
		t.Errorf("users %+v, want the engineer named admin alone, unchanged", users)
	}
}
