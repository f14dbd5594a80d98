package apiserver

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

// bootstrapReason is what the gate says when it refuses the admin token.
const bootstrapReason = "the admin token only bootstraps (users, teams, tokens), not "

// wantBootstrapOnly checks the 403 that refuses the admin token verb.
func wantBootstrapOnly(t *testing.T, resp *http.Response, verb string) {
	t.Helper()
	body := wantError(t, resp, http.StatusForbidden, api.CodeForbidden)
	want := "forbidden: " + bootstrapReason + verb + "; act as a user: 'cove login', or a token from 'cove token create --user NAME'"
	if body.Message != want {
		t.Errorf("403 %q, want %q", body.Message, want)
	}
}

// TestAdminTokenOnlyBootstraps walks the OpenAPI document with the admin
// token, under the default policy and under one that permits everything
// ("permit(principal, action, resource);"): every route that needs a
// token and is not in bootstrapVerbs is refused 403 saying why, and
// changes nothing (alice's session and template); the identity routes answer it: users added, listed and
// removed, team members added and removed, tokens minted for a named user
// (400 without one: it is no user), listed and revoked, whoami.
func TestAdminTokenOnlyBootstraps(t *testing.T) {
	for _, permissive := range []bool{false, true} {
		name := "default policy"
		if permissive {
			name = "permissive policy"
		}
		t.Run(name, func(t *testing.T) {
			e := newPolicyEnv(t)
			if permissive {
				path := filepath.Join(t.TempDir(), "all.cedar")
				if err := os.WriteFile(path, []byte("permit(principal, action, resource);\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := e.engine.Load(t.Context(), path); err != nil {
					t.Fatal(err)
				}
			}
			testAdminTokenOnlyBootstraps(t, e)
		})
	}
}

func testAdminTokenOnlyBootstraps(t *testing.T, e *policyEnv) {
	admin := authAs(testToken)
	alice := e.person(t, "alice", "", "platform")
	mine := e.createSession(t, alice, api.CreateSessionRequest{})
	decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "alice-tpl"}, alice.auth()...), 201)

	verbs := map[string]string{} // "METHOD PATH" of the route table: its verb
	for _, rt := range routes {
		verbs[rt.Method+" "+rt.Path] = rt.Verb
	}
	concrete := strings.NewReplacer("{id}", mine.ID, "{name}", "alice-tpl", "{team}", "platform", "{user}", "alice")
	doc, _ := loadOpenAPI(t)
	refused := 0
	for p, item := range doc.Paths {
		for m := range item {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			key := strings.ToUpper(m) + " " + p
			rt := routes[slices.IndexFunc(routes, func(r route) bool { return r.Method+" "+r.Path == key })]
			verb, ok := verbs[key]
			if !ok {
				t.Errorf("%s is in the OpenAPI document but not in the route table", key)
				continue
			}
			if rt.NoToken || bootstrapVerbs[verb] {
				continue
			}
			refused++
			t.Run(key, func(t *testing.T) {
				// A body of the route's shape would not be read: the gate
				// refuses first.
				resp := e.with(t).do(rt.Method, concrete.Replace(p), strings.NewReader("{}"), append(admin, "Content-Type", "application/json")...)
				wantBootstrapOnly(t, resp, verb)
			})
		}
	}
	want := 0
	for _, rt := range routes {
		if !rt.NoToken && !bootstrapVerbs[rt.Verb] {
			want++
		}
	}
	if refused != want {
		t.Errorf("the admin token was refused on %d routes of the document, and the route table has %d it may not use", refused, want)
	}

	// Nothing changed.
	if s, err := e.mgr.Get(t.Context(), mine.ID); err != nil || s.State != api.StateRunning {
		t.Errorf("alice's session after the admin token's attempts: %+v, %v", s, err)
	}
	if tp, err := e.mgr.GetTemplate(t.Context(), "alice-tpl"); err != nil || tp.Version != 1 {
		t.Errorf("alice's template after the admin token's attempts: %+v, %v", tp, err)
	}
	if ss, err := e.mgr.List(t.Context()); err != nil || len(ss) != 1 {
		t.Errorf("sessions after the admin token's attempts: %+v, %v; want alice's alone", ss, err)
	}

	// What it may do, it does.
	bob := decode[api.User](t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: "bob"}, admin...), 201)
	if users := decode[userList](t, e.do("GET", "/v1/users", nil, admin...), 200).Users; len(users) != 2 {
		t.Errorf("users: %+v, want alice and bob", users)
	}
	if resp := e.do("PUT", "/v1/teams/platform/members/bob", nil, admin...); resp.StatusCode != 204 {
		t.Errorf("team member add: %d", resp.StatusCode)
	}
	if teams := decode[teamList](t, e.do("GET", "/v1/teams", nil, admin...), 200).Teams; len(teams) != 1 || len(teams[0].Members) != 2 {
		t.Errorf("teams: %+v, want platform with alice and bob", teams)
	}
	if resp := e.do("DELETE", "/v1/teams/platform/members/bob", nil, admin...); resp.StatusCode != 204 {
		t.Errorf("team member remove: %d", resp.StatusCode)
	}
	body := wantError(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "x"}, admin...), 400, api.CodeInvalid)
	if !strings.Contains(body.Message, "user: missing; the admin token is no user") {
		t.Errorf("token create without user: %q", body.Message)
	}
	tok := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "laptop", User: "bob"}, admin...), 201)
	if tok.User != "bob" {
		t.Errorf("token for bob is %s's", tok.User)
	}
	if who := decode[api.WhoAmI](t, e.do("GET", "/v1/whoami", nil, authAs(tok.Secret)...), 200); who.User == nil || who.User.ID != bob.ID {
		t.Errorf("the minted token acts for %+v, want bob", who)
	}
	if toks := decode[tokenList](t, e.do("GET", "/v1/tokens", nil, admin...), 200).Tokens; len(toks) != 2 {
		t.Errorf("tokens: %+v, want alice's and bob's", toks)
	}
	decode[api.Token](t, e.do("POST", "/v1/tokens/"+tok.ID+"/revoke", nil, admin...), 200)
	if who := decode[api.WhoAmI](t, e.do("GET", "/v1/whoami", nil, admin...), 200); who.Kind != "admin-token" || who.User != nil {
		t.Errorf("whoami with the admin token: %+v", who)
	}
	if resp := e.do("DELETE", "/v1/users/bob", nil, admin...); resp.StatusCode != 204 {
		t.Errorf("user delete: %d", resp.StatusCode)
	}
}

// TestAdminTokenOnlyBootstrapsWithoutAPolicy: where no policy decides
// (Config.Authorize nil: admins may do everything), the admin token is
// still refused sessions, templates and hooks, and the session manager is
// never asked; an admin user is not.
func TestAdminTokenOnlyBootstrapsWithoutAPolicy(t *testing.T) {
	e := newEnv(t)
	admin := authAs(testToken)
	wantBootstrapOnly(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}, admin...), "session.create")
	wantBootstrapOnly(t, e.do("GET", "/v1/sessions", nil, admin...), "session.list")
	wantBootstrapOnly(t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"true"}}, admin...), "session.exec")
	wantBootstrapOnly(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "py"}, admin...), "template.create")
	wantBootstrapOnly(t, e.doJSON("PUT", "/v1/hook-secrets/ci", api.HookSecretRequest{Secret: "s"}, admin...), "hook.secret.put")
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("the session manager was called %d times for the admin token", n)
	}
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil), 200) // the harness's admin user
	decode[userList](t, e.do("GET", "/v1/users", nil, admin...), 200)
}
