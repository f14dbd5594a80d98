package apiserver

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/policy"
)

// teams lists the teams with the admin token, as name: members.
func (e *testEnv) teams(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, tm := range decode[teamList](t, e.do("GET", "/v1/teams", nil), 200).Teams {
		out[tm.Name] = tm.Members
	}
	return out
}

// status sends a request and checks its status, reading no body.
func (e *testEnv) status(t *testing.T, want int, method, path string, hdr ...string) {
	t.Helper()
	if resp := e.do(method, path, nil, hdr...); resp.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d", method, path, resp.StatusCode, want)
	}
}

// TestTeamMembers protects /v1/teams with the admin token, over a real
// SQLite store: add (idempotent), list with members sorted, remove;
// unknown users and non-members 404, malformed team names 400, each
// changing nothing; a removed user leaves its teams.
func TestTeamMembers(t *testing.T) {
	e := newIDEnv(t)
	e.addUser(t, "alice", "", "backend")
	e.addUser(t, "carol", "")
	e.addUser(t, "bob", "")

	if got := decode[teamList](t, e.do("GET", "/v1/teams", nil), 200); got.Teams == nil {
		t.Error("teams is null, want a list")
	}
	e.status(t, 204, "PUT", "/v1/teams/platform/members/carol")
	e.status(t, 204, "PUT", "/v1/teams/platform/members/alice")
	e.status(t, 204, "PUT", "/v1/teams/platform/members/alice") // again: no error
	want := map[string][]string{"backend": {"alice"}, "platform": {"alice", "carol"}}
	if got := e.teams(t); !mapsEqual(got, want) {
		t.Errorf("teams %v, want %v", got, want)
	}
	if u := decode[userList](t, e.do("GET", "/v1/users", nil), 200).Users[0]; u.Name != "alice" || !slices.Equal(u.Teams, []string{"backend", "platform"}) {
		t.Errorf("alice in /v1/users: %+v", u)
	}

	for _, tc := range []struct {
		method, path string
		status       int
		code, msg    string
	}{
		{"PUT", "/v1/teams/platform/members/nobody", 404, api.CodeNotFound, `no user "nobody"`},
		{"DELETE", "/v1/teams/platform/members/nobody", 404, api.CodeNotFound, `no user "nobody"`},
		{"DELETE", "/v1/teams/platform/members/bob", 404, api.CodeNotFound, `user "bob" is not in team "platform"`},
		{"DELETE", "/v1/teams/nosuch/members/alice", 404, api.CodeNotFound, `user "alice" is not in team "nosuch"`},
		{"PUT", "/v1/teams/Platform/members/bob", 400, api.CodeInvalid, `team: "Platform" is not a team name`},
		{"PUT", "/v1/teams/a%20b/members/bob", 400, api.CodeInvalid, `team: "a b" is not a team name`},
		{"PUT", "/v1/teams/" + strings.Repeat("x", 65) + "/members/bob", 400, api.CodeInvalid, `is not a team name`},
		{"DELETE", "/v1/teams/-x/members/alice", 400, api.CodeInvalid, `team: "-x" is not a team name`},
	} {
		body := wantError(t, e.do(tc.method, tc.path, nil), tc.status, tc.code)
		if !strings.Contains(body.Message, tc.msg) {
			t.Errorf("%s %s: %q does not say %q", tc.method, tc.path, body.Message, tc.msg)
		}
	}
	if got := e.teams(t); !mapsEqual(got, want) {
		t.Errorf("teams after refused requests %v, want %v", got, want)
	}

	e.status(t, 204, "DELETE", "/v1/teams/platform/members/alice")
	e.status(t, 204, "DELETE", "/v1/users/carol")
	want = map[string][]string{"backend": {"alice"}}
	if got := e.teams(t); !mapsEqual(got, want) {
		t.Errorf("teams after alice left platform and carol was removed: %v, want %v", got, want)
	}
	wantError(t, e.do("DELETE", "/v1/teams/platform/members/alice", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/teams", nil, "Authorization", ""), 401, api.CodeUnauthorized)
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// The team routes are an admin's whatever the policy says: under a
// policy that permits user.admin to everyone, an engineer is still
// refused 403, and nothing changes; an admin user may.
func TestTeamRoutesAdminOnly(t *testing.T) {
	engine := policy.New()
	path := filepath.Join(t.TempDir(), "lax.cedar")
	lax := `
@id("everyone-admins-users")
permit (principal is Cove::User, action == Cove::Action::"user.admin", resource == Cove::Server::"cove");
`
	if err := os.WriteFile(path, append(policy.Default(), lax...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := engine.Load(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	gate := &PolicyGate{Policy: engine}
	e := newIDEnv(t, func(c *Config) { c.Authorize = gate.Authorize })
	gate.Records = e.st
	e.addUser(t, "alice", "", "platform")
	e.addUser(t, "dave", "")
	e.addUser(t, "root", api.UserAdmin)
	dave := authAs(e.mint(t, api.CreateTokenRequest{Name: "laptop", User: "dave"}).Secret)
	root := authAs(e.mint(t, api.CreateTokenRequest{Name: "laptop", User: "root"}).Secret)

	for _, rq := range []struct{ method, path string }{
		{"GET", "/v1/teams"},
		{"PUT", "/v1/teams/platform/members/dave"},
		{"DELETE", "/v1/teams/platform/members/alice"},
	} {
		body := wantError(t, e.do(rq.method, rq.path, nil, dave...), 403, api.CodeForbidden)
		if !strings.Contains(body.Message, "is not an admin") {
			t.Errorf("%s %s as dave: %q", rq.method, rq.path, body.Message)
		}
	}
	want := map[string][]string{"platform": {"alice"}}
	if got := e.teams(t); !mapsEqual(got, want) {
		t.Errorf("teams after dave's attempts %v, want %v", got, want)
	}
	e.status(t, 204, "PUT", "/v1/teams/platform/members/dave", root...)
	if got := decode[teamList](t, e.do("GET", "/v1/teams", nil, root...), 200).Teams; len(got) != 1 || !slices.Equal(got[0].Members, []string{"alice", "dave"}) {
		t.Errorf("teams as root after adding dave: %+v", got)
	}
}

// TestTeamRoutesUnconfigured: without Identities the team routes are 503.
func TestTeamRoutesUnconfigured(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Identities = nil })
	for _, rq := range []struct{ method, path string }{
		{"GET", "/v1/teams"},
		{"PUT", "/v1/teams/platform/members/alice"},
		{"DELETE", "/v1/teams/platform/members/alice"},
	} {
		wantError(t, e.do(rq.method, rq.path, nil), http.StatusServiceUnavailable, api.CodeUnavailable)
	}
}

// TestTeamMembershipGrants: under a policy that lets team platform read
// the sessions of its members, what `cove team add` and `cove team rm`
// change is what the next request is decided on. carol, put in platform
// by an admin, reads and lists alice's session; dave, in no team, is
// refused; once carol is taken out of platform she is refused at once,
// with the token she had.
func TestTeamMembershipGrants(t *testing.T) {
	e := newPolicyEnv(t)
	path := filepath.Join(t.TempDir(), "team.cedar")
	grant := `
@id("team-platform-read")
permit (
  principal in Cove::Team::"platform",
  action == Cove::Action::"session.read",
  resource in Cove::Team::"platform"
);
`
	if err := os.WriteFile(path, append(policy.Default(), grant...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.engine.Load(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	alice := e.person(t, "alice", "")
	carol := e.person(t, "carol", "")
	dave := e.person(t, "dave", "")
	mine := e.createSession(t, alice, api.CreateSessionRequest{})
	get := "/v1/sessions/" + mine.ID

	// Before any team: carol is refused.
	wantDenied(t, e.do("GET", get, nil, carol.auth()...), policy.SessionRead, "Session "+mine.ID, "User "+carol.ID)

	e.status(t, 204, "PUT", "/v1/teams/platform/members/alice")
	e.status(t, 204, "PUT", "/v1/teams/platform/members/carol")
	if got := decode[api.Session](t, e.do("GET", get, nil, carol.auth()...), 200); got.ID != mine.ID || got.Owner != alice.ID {
		t.Errorf("carol reads alice's session as %+v", got)
	}
	if got := e.sessionIDs(t, carol.auth()...); !slices.Equal(got, []string{mine.ID}) {
		t.Errorf("carol lists %q, want alice's %s", got, mine.ID)
	}
	wantDenied(t, e.do("DELETE", get, nil, carol.auth()...), policy.SessionDelete, "Session "+mine.ID, "User "+carol.ID)
	wantDenied(t, e.do("GET", get, nil, dave.auth()...), policy.SessionRead, "Session "+mine.ID, "User "+dave.ID)

	e.status(t, 204, "DELETE", "/v1/teams/platform/members/carol")
	wantDenied(t, e.do("GET", get, nil, carol.auth()...), policy.SessionRead, "Session "+mine.ID, "User "+carol.ID)
	if got := e.sessionIDs(t, carol.auth()...); len(got) != 0 {
		t.Errorf("carol, out of platform, lists %q", got)
	}

	// Taking the owner out of the team takes her sessions out of it too.
	e.status(t, 204, "PUT", "/v1/teams/platform/members/carol")
	e.status(t, 204, "DELETE", "/v1/teams/platform/members/alice")
	wantDenied(t, e.do("GET", get, nil, carol.auth()...), policy.SessionRead, "Session "+mine.ID, "User "+carol.ID)
}
