package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// The policy gate as cove server wires it: users, their teams and API
// tokens, sessions and templates in a real SQLite store; the real
// identity.Authenticator and Directory; the real session manager over the
// in-process fake VMM driver; a PolicyGate over a policy.Engine; a real
// HTTP server on loopback.

type policyEnv struct {
	*testEnv
	st     *sqlite.Store
	mgr    *session.Manager
	engine *policy.Engine
}

func newPolicyEnv(t *testing.T) *policyEnv {
	t.Helper()
	mgr, st, _ := newFakeManager(t, nil)
	e := &policyEnv{testEnv: &testEnv{t: t, images: &fakeImages{}, logs: &logSink{}, admin: &harnessAdmin{dir: &identity.Directory{Store: st}}}, st: st, mgr: mgr, engine: policy.New()}
	e.server = New(Config{Sessions: mgr, Images: e.images, Token: testToken,
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st}),
		Identities:    &identity.Directory{Store: st},
		Authorize:     (&PolicyGate{Policy: e.engine, Records: st}).Authorize,
		Log:           slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.srv = httptest.NewServer(e.server.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

// person is a user and the secret of an API token of its.
type person struct {
	api.User
	token string
}

// auth is the header pair that authenticates as p.
func (p person) auth() []string { return authAs(p.token) }

// person adds a user with the admin token and mints it a token.
func (e *policyEnv) person(t *testing.T, name, kind string, teams ...string) person {
	t.Helper()
	u := decode[api.User](t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: name, Kind: kind, Teams: teams}), 201)
	tok := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: name + "-laptop", User: name}), 201)
	return person{User: u, token: tok.Secret}
}

// createSession makes a session as p.
func (e *policyEnv) createSession(t *testing.T, p person, req api.CreateSessionRequest) api.Session {
	t.Helper()
	return decode[api.Session](t, e.doJSON("POST", "/v1/sessions", req, p.auth()...), 201)
}

// wantDenied checks a 403 whose message is the policy's reason for a
// request no policy permits: the action, the resource ("Session ID") and
// the principal ("User ID").
func wantDenied(t *testing.T, resp *http.Response, action policy.Action, resource, principal string) {
	t.Helper()
	body := wantError(t, resp, http.StatusForbidden, api.CodeForbidden)
	if want := fmt.Sprintf("no policy permits %s on %s for %s", action, resource, principal); body.Message != want {
		t.Errorf("%s %s: 403 %q, want %q", resp.Request.Method, resp.Request.URL, body.Message, want)
	}
}

// sessionIDs lists the sessions as the holder of hdr sees them.
func (e *policyEnv) sessionIDs(t *testing.T, hdr ...string) []string {
	t.Helper()
	var ids []string
	for _, s := range decode[sessionList](t, e.do("GET", "/v1/sessions", nil, hdr...), 200).Sessions {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

// templateNames lists the templates as the holder of hdr sees them.
func (e *policyEnv) templateNames(t *testing.T, hdr ...string) []string {
	t.Helper()
	var names []string
	for _, tp := range decode[templateList](t, e.do("GET", "/v1/templates", nil, hdr...), 200).Templates {
		names = append(names, tp.Name)
	}
	slices.Sort(names)
	return names
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// crossCase is one route asked by one engineer about another's: the
// request, and the 403 it must get (the policy action and what the reason
// names), or for a route that is not about another's, the status it gets.
type crossCase struct {
	path   string // with the query
	body   any    // JSON, or []byte sent raw
	action policy.Action
	names  []string
	status int // for allowed and public routes: the answer
	public bool
	// ws: the route is a WebSocket whose first message (body) is
	// decided: the 403 comes in-band, as an error message.
	ws bool
}

// TestCrossEngineerDenied walks the OpenAPI document: engineer bob, with
// his own API token, is refused 403 with the policy's reason on every
// route about engineer alice's session, template or tokens, on the routes
// of admins, and sees none of her sessions or templates in lists; the
// routes that concern no one's sessions answer him, and the public ones
// need no token. Nothing of alice's changes. Then alice does all of it to
// her own, and an admin (a user of kind admin, and the admin token) to
// hers.
func TestCrossEngineerDenied(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	root := e.person(t, "root", api.UserAdmin)

	mine := e.createSession(t, alice, api.CreateSessionRequest{Agent: "review-bot"})
	if mine.Owner != alice.ID || mine.Agent != "review-bot" {
		t.Fatalf("alice's session: owner %q, agent %q; want %q, review-bot", mine.Owner, mine.Agent, alice.ID)
	}
	tpl := decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "alice-tpl"}, alice.auth()...), 201)
	if tpl.Owner != alice.ID {
		t.Fatalf("alice's template: owner %q, want %q", tpl.Owner, alice.ID)
	}
	bobs := e.createSession(t, bob, api.CreateSessionRequest{})
	aliceTok := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "ci", User: "alice"}), 201)

	sess, tmpl := "Session "+mine.ID, "Template alice-tpl"
	bobUser, aliceUser, server := "User "+bob.ID, "User "+alice.ID, "Server cove"
	cases := map[string]crossCase{
		"GET /healthz":          {path: "/healthz", status: 200, public: true},
		"GET /metrics":          {path: "/metrics", status: 200, public: true},
		"GET /v1/openapi.json":  {path: "/v1/openapi.json", status: 200},
		"GET /v1/whoami":        {path: "/v1/whoami", status: 200}, // bob himself
		"GET /auth/oidc":        {path: "/auth/oidc", status: 200, public: true},
		"POST /v1/hooks/github": {path: "/v1/hooks/github", status: 503, public: true}, // no receiver here
		"POST /v1/hooks/{name}": {path: "/v1/hooks/deploys", status: 503, public: true},
		// No issuer here (identity_test.go serves one).
		"GET /.well-known/openid-configuration": {path: "/.well-known/openid-configuration", status: 404, public: true},
		"GET /.well-known/jwks.json":            {path: "/.well-known/jwks.json", status: 404, public: true},

		"POST /v1/sessions": {path: "/v1/sessions", body: api.CreateSessionRequest{Template: "alice-tpl"},
			action: policy.SessionCreate, names: []string{tmpl, bobUser}},
		"GET /v1/sessions":                            {path: "/v1/sessions", status: 200},       // checked below: without alice's
		"GET /v1/sessions/watch":                      {path: "/v1/sessions/watch", status: 200}, // TestWatchSessionsPushesOnlyOwn: without alice's
		"GET /v1/sessions/{id}":                       {path: "/v1/sessions/" + mine.ID, action: policy.SessionRead, names: []string{sess, bobUser}},
		"DELETE /v1/sessions/{id}":                    {path: "/v1/sessions/" + mine.ID, action: policy.SessionDelete, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/park":                 {path: "/v1/sessions/" + mine.ID + "/park", action: policy.SessionPark, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/wake":                 {path: "/v1/sessions/" + mine.ID + "/wake", action: policy.SessionWake, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/revoke":               {path: "/v1/sessions/" + mine.ID + "/revoke", action: policy.SessionRevoke, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/events":                {path: "/v1/sessions/" + mine.ID + "/events", action: policy.SessionEvents, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/checkpoints":          {path: "/v1/sessions/" + mine.ID + "/checkpoints", body: api.CheckpointRequest{}, action: policy.SessionCheckpoint, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/checkpoints":           {path: "/v1/sessions/" + mine.ID + "/checkpoints", action: policy.SessionRead, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/checkpoints/{name}":    {path: "/v1/sessions/" + mine.ID + "/checkpoints/c", action: policy.SessionRead, names: []string{sess, bobUser}},
		"DELETE /v1/sessions/{id}/checkpoints/{name}": {path: "/v1/sessions/" + mine.ID + "/checkpoints/c", action: policy.SessionCheckpoint, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/rollback":             {path: "/v1/sessions/" + mine.ID + "/rollback", body: api.RollbackRequest{Checkpoint: "c"}, action: policy.SessionCheckpoint, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/fork":                 {path: "/v1/sessions/" + mine.ID + "/fork", body: api.ForkRequest{}, action: policy.SessionCheckpoint, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/exec":                 {path: "/v1/sessions/" + mine.ID + "/exec", body: api.ExecRequest{Argv: []string{"touch", "/tmp/bob"}}, action: policy.SessionExec, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/exec/ws":               {path: "/v1/sessions/" + mine.ID + "/exec/ws", body: api.ExecRequest{Argv: []string{"touch", "/tmp/bob"}}, ws: true, action: policy.SessionExec, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/files":                 {path: "/v1/sessions/" + mine.ID + "/files?path=/etc/hostname", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"PUT /v1/sessions/{id}/files":                 {path: "/v1/sessions/" + mine.ID + "/files?path=/tmp/bob", body: []byte("bob was here"), action: policy.SessionFiles, names: []string{sess, bobUser}},
		"DELETE /v1/sessions/{id}/files":              {path: "/v1/sessions/" + mine.ID + "/files?path=/tmp", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/files/stat":            {path: "/v1/sessions/" + mine.ID + "/files/stat?path=/", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/files/list":            {path: "/v1/sessions/" + mine.ID + "/files/list?path=/", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"GET /v1/sessions/{id}/files/watch":           {path: "/v1/sessions/" + mine.ID + "/files/watch?path=/", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"POST /v1/sessions/{id}/files/mkdir":          {path: "/v1/sessions/" + mine.ID + "/files/mkdir?path=/tmp/bobdir", action: policy.SessionFiles, names: []string{sess, bobUser}},
		"GET /v1/images":                              {path: "/v1/images", status: 200}, // base images are everyone's
		"POST /v1/images/{name}/build":                {path: "/v1/images/tiny/build", action: policy.ImageBuild, names: []string{server, bobUser}},
		"POST /v1/templates":                          {path: "/v1/templates", body: api.CreateTemplateRequest{Name: "bob-tpl"}, status: 201}, // his own
		"GET /v1/templates":                           {path: "/v1/templates", status: 200},                                                   // checked below: without alice's
		"GET /v1/templates/{name}":                    {path: "/v1/templates/alice-tpl", action: policy.TemplateRead, names: []string{tmpl, bobUser}},
		"DELETE /v1/templates/{name}":                 {path: "/v1/templates/alice-tpl", action: policy.TemplateDelete, names: []string{tmpl, bobUser}},
		"GET /v1/templates/{name}/versions":           {path: "/v1/templates/alice-tpl/versions", action: policy.TemplateRead, names: []string{tmpl, bobUser}},
		"POST /v1/templates/{name}/rebuild":           {path: "/v1/templates/alice-tpl/rebuild", action: policy.TemplateRebuild, names: []string{tmpl, bobUser}},
		"PUT /v1/templates/{name}/pool":               {path: "/v1/templates/alice-tpl/pool", body: map[string]int{"size": 3}, action: policy.TemplateRebuild, names: []string{tmpl, bobUser}},
		"GET /v1/hook-secrets":                        {path: "/v1/hook-secrets", action: policy.HookAdmin, names: []string{server, bobUser}},
		"PUT /v1/hook-secrets/{name}":                 {path: "/v1/hook-secrets/deploys", body: api.HookSecretRequest{Secret: "s"}, action: policy.HookAdmin, names: []string{server, bobUser}},
		"DELETE /v1/hook-secrets/{name}":              {path: "/v1/hook-secrets/deploys", action: policy.HookAdmin, names: []string{server, bobUser}},
		"POST /v1/users":                              {path: "/v1/users", body: api.CreateUserRequest{Name: "mallory", Kind: api.UserAdmin}, action: policy.UserAdmin, names: []string{server, bobUser}},
		"GET /v1/users":                               {path: "/v1/users", action: policy.UserAdmin, names: []string{server, bobUser}},
		"DELETE /v1/users/{name}":                     {path: "/v1/users/alice", action: policy.UserAdmin, names: []string{server, bobUser}},
		"POST /v1/tokens":                             {path: "/v1/tokens", body: api.CreateTokenRequest{Name: "stolen", User: "alice"}, action: policy.TokenCreate, names: []string{aliceUser, bobUser}},
		"GET /v1/tokens":                              {path: "/v1/tokens?user=alice", action: policy.TokenList, names: []string{aliceUser, bobUser}},
		"POST /v1/tokens/{id}/revoke":                 {path: "/v1/tokens/" + aliceTok.ID + "/revoke", action: policy.TokenRevoke, names: []string{aliceUser, bobUser}},

		// Secrets: alice's own, and her template's.
		"PUT /v1/secrets/{name}": {path: "/v1/secrets/github", body: api.PutSecretRequest{Value: "ghp_bob", Hosts: []string{"github.com"},
			Header: "Authorization: Bearer {{value}}", User: "alice"}, action: policy.SecretWrite, names: []string{aliceUser, bobUser}},
		"GET /v1/secrets":           {path: "/v1/secrets?template=alice-tpl", action: policy.SecretList, names: []string{tmpl, bobUser}},
		"DELETE /v1/secrets/{name}": {path: "/v1/secrets/github?user=alice", action: policy.SecretDelete, names: []string{aliceUser, bobUser}},

		// Teams are an admin's to manage, as users are.
		"GET /v1/teams":                          {path: "/v1/teams", action: policy.UserAdmin, names: []string{server, bobUser}},
		"PUT /v1/teams/{team}/members/{user}":    {path: "/v1/teams/platform/members/bob", action: policy.UserAdmin, names: []string{server, bobUser}},
		"DELETE /v1/teams/{team}/members/{user}": {path: "/v1/teams/platform/members/alice", action: policy.UserAdmin, names: []string{server, bobUser}},

		// The audit log is an admin's to read.
		"GET /v1/audit/entries":       {path: "/v1/audit/entries", action: policy.AuditRead, names: []string{server, bobUser}},
		"GET /v1/audit/proof/{index}": {path: "/v1/audit/proof/0", action: policy.AuditRead, names: []string{server, bobUser}},
		"GET /v1/audit/checkpoint":    {path: "/v1/audit/checkpoint", action: policy.AuditRead, names: []string{server, bobUser}},
		"GET /v1/audit/key":           {path: "/v1/audit/key", action: policy.AuditRead, names: []string{server, bobUser}},
		"GET /v1/audit/export":        {path: "/v1/audit/export", action: policy.AuditRead, names: []string{server, bobUser}},
		"GET /v1/audit/witnesses":     {path: "/v1/audit/witnesses", action: policy.AuditRead, names: []string{server, bobUser}},
		"POST /v1/audit/witnesses": {path: "/v1/audit/witnesses", body: api.AuditWitness{URL: "http://127.0.0.1:1", Key: "w+00000000+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
			action: policy.AuditAdmin, names: []string{server, bobUser}},
		"DELETE /v1/audit/witnesses":   {path: "/v1/audit/witnesses?url=http://127.0.0.1:1", action: policy.AuditAdmin, names: []string{server, bobUser}},
		"POST /v1/admin/gc":            {path: "/v1/admin/gc", action: policy.ObjectsAdmin, names: []string{server, bobUser}},
		"GET /v1/nodes":                {path: "/v1/nodes", action: policy.NodesAdmin, names: []string{server, bobUser}},
		"GET /v1/nodes/{id}":           {path: "/v1/nodes/host-a", action: policy.NodesAdmin, names: []string{server, bobUser}},
		"DELETE /v1/nodes/{id}":        {path: "/v1/nodes/host-a", action: policy.NodesAdmin, names: []string{server, bobUser}},
		"POST /v1/nodes/{id}/cordon":   {path: "/v1/nodes/host-a/cordon", action: policy.NodesAdmin, names: []string{server, bobUser}},
		"POST /v1/nodes/{id}/uncordon": {path: "/v1/nodes/host-a/uncordon", action: policy.NodesAdmin, names: []string{server, bobUser}},
		"POST /v1/nodes/{id}/drain":    {path: "/v1/nodes/host-a/drain", action: policy.NodesAdmin, names: []string{server, bobUser}},

		// Nodes join with the join token and connect with their
		// credential, not an API token; no NodeLink here.
		"POST /v1/nodes/join":   {path: "/v1/nodes/join", status: 403, public: true},
		"GET /v1/nodes/connect": {path: "/v1/nodes/connect", status: 503, public: true},
	}

	doc, _ := loadOpenAPI(t)
	walked := 0
	for p, item := range doc.Paths {
		for m := range item {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			key := strings.ToUpper(m) + " " + p
			c, ok := cases[key]
			if !ok {
				t.Errorf("%s is in the OpenAPI document but not in this test: say what another engineer gets there", key)
				continue
			}
			walked++
			t.Run(key, func(t *testing.T) {
				if c.ws {
					wsDenied(t, e.with(t), c.path, bob.token, c.body, fmt.Sprintf("no policy permits %s on %s for %s", c.action, c.names[0], c.names[1]))
					return
				}
				hdr := bob.auth()
				if c.public {
					hdr = []string{"Authorization", ""}
				}
				var body io.Reader
				switch b := c.body.(type) {
				case nil:
				case []byte:
					body = bytes.NewReader(b)
				default:
					j, _ := json.Marshal(b)
					body, hdr = bytes.NewReader(j), append(hdr, "Content-Type", "application/json")
				}
				resp := e.with(t).do(strings.ToUpper(m), c.path, body, hdr...)
				if c.action != "" {
					wantDenied(t, resp, c.action, c.names[0], c.names[1])
					return
				}
				if resp.StatusCode != c.status {
					b, _ := io.ReadAll(resp.Body)
					t.Errorf("status %d, want %d: %s", resp.StatusCode, c.status, b)
				}
			})
		}
	}
	if walked != len(cases) {
		t.Errorf("walked %d routes of the OpenAPI document, and this test has %d: a route is gone from the document", walked, len(cases))
	}

	// A template from alice's checkpoint would be her session's whole
	// machine: bob is refused, as for her checkpoints themselves.
	wantDenied(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "bob-steal", FromCheckpoint: mine.ID + ":c"}, bob.auth()...),
		policy.SessionCheckpoint, sess, bobUser)

	// Lists show bob his own only.
	if got := e.sessionIDs(t, bob.auth()...); !slices.Equal(got, []string{bobs.ID}) {
		t.Errorf("bob lists sessions %q, want only his %s", got, bobs.ID)
	}
	if got := e.templateNames(t, bob.auth()...); !slices.Equal(got, []string{"bob-tpl"}) {
		t.Errorf("bob lists templates %q, want only his bob-tpl", got)
	}

	// Nothing of alice's changed.
	if got, err := e.mgr.Get(t.Context(), mine.ID); err != nil || got.State != api.StateRunning {
		t.Fatalf("alice's session after bob's attempts: %+v, %v", got, err)
	}
	for _, p := range []string{"/tmp/bob", "/tmp/bobdir"} {
		if _, err := e.mgr.Stat(t.Context(), mine.ID, p); !api.IsCode(err, api.CodeNotFound) {
			t.Errorf("%s in alice's guest after bob was refused: %v", p, err)
		}
	}
	if _, err := e.mgr.Stat(t.Context(), mine.ID, "/tmp"); err != nil {
		t.Errorf("/tmp in alice's guest after bob was refused its removal: %v", err)
	}
	if got, err := e.mgr.GetTemplate(t.Context(), "alice-tpl"); err != nil || got.Version != 1 || got.Rebuilding {
		t.Errorf("alice's template after bob's attempts: %+v, %v", got, err)
	}
	if toks := decode[tokenList](t, e.do("GET", "/v1/tokens?user=alice", nil), 200).Tokens; len(toks) != 2 || toks[1].State != api.TokenActive {
		t.Errorf("alice's tokens after bob's attempts: %+v", toks)
	}
	if users := decode[userList](t, e.do("GET", "/v1/users", nil), 200).Users; len(users) != 3 {
		t.Errorf("users after bob's attempts: %+v", users)
	}
	if teams := decode[teamList](t, e.do("GET", "/v1/teams", nil), 200).Teams; len(teams) != 0 {
		t.Errorf("teams after bob's attempts: %+v", teams)
	}

	t.Run("the owner may", func(t *testing.T) {
		e := &policyEnv{testEnv: e.with(t), st: e.st, mgr: e.mgr, engine: e.engine}
		ownerMay(t, e, alice, mine.ID)
		clone := e.createSession(t, alice, api.CreateSessionRequest{Template: "alice-tpl", Agent: "fixer"})
		if clone.Owner != alice.ID || clone.Agent != "fixer" {
			t.Errorf("alice's clone of her template: owner %q, agent %q", clone.Owner, clone.Agent)
		}
		if got := e.sessionIDs(t, alice.auth()...); !slices.Equal(got, sorted(mine.ID, clone.ID)) {
			t.Errorf("alice lists %q, want her %s and %s", got, mine.ID, clone.ID)
		}
		if got := e.templateNames(t, alice.auth()...); !slices.Equal(got, []string{"alice-tpl"}) {
			t.Errorf("alice lists templates %q", got)
		}
		if resp := e.do("DELETE", "/v1/sessions/"+clone.ID, nil, alice.auth()...); resp.StatusCode != 204 {
			t.Errorf("alice deletes her clone: %d", resp.StatusCode)
		}
	})
	t.Run("an admin may", func(t *testing.T) {
		e := &policyEnv{testEnv: e.with(t), st: e.st, mgr: e.mgr, engine: e.engine}
		all := e.sessionIDs(t, root.auth()...)
		if !slices.Equal(all, sorted(mine.ID, bobs.ID)) {
			t.Errorf("admin user root lists %q, want every session: %s, %s", all, mine.ID, bobs.ID)
		}
		if got := e.templateNames(t, root.auth()...); !slices.Equal(got, []string{"alice-tpl", "bob-tpl"}) {
			t.Errorf("admin user root lists templates %q", got)
		}
		ownerMay(t, e, root, bobs.ID)
		decode[api.Session](t, e.do("GET", "/v1/sessions/"+mine.ID, nil, root.auth()...), 200)
		decode[api.Template](t, e.do("GET", "/v1/templates/alice-tpl", nil, root.auth()...), 200)
		// The admin token makes no session now; one that an earlier version
		// let it make is "admin"'s: admins see it, bob does not.
		wantBootstrapOnly(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}, authAs(testToken)...), "session.create")
		adm, err := e.mgr.Create(t.Context(), store.OwnerAdmin, api.CreateSessionRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if adm.Owner != api.OwnerAdmin || api.OwnerAdmin != store.OwnerAdmin {
			t.Errorf("the admin token's session is owned by %q, want %q (= store's %q)", adm.Owner, api.OwnerAdmin, store.OwnerAdmin)
		}
		if got := e.sessionIDs(t, root.auth()...); !slices.Contains(got, adm.ID) {
			t.Errorf("admin user root lists %q, without the admin token's %s", got, adm.ID)
		}
		if got := e.sessionIDs(t, bob.auth()...); slices.Contains(got, adm.ID) {
			t.Errorf("bob lists the admin token's session: %q", got)
		}
		wantDenied(t, e.do("GET", "/v1/sessions/"+adm.ID, nil, bob.auth()...), policy.SessionRead, "Session "+adm.ID, "User "+bob.ID)
		if resp := e.do("DELETE", "/v1/sessions/"+adm.ID, nil, root.auth()...); resp.StatusCode != 204 {
			t.Errorf("admin user root deletes the admin token's session: %d", resp.StatusCode)
		}
		if resp := e.do("DELETE", "/v1/sessions/"+bobs.ID, nil, root.auth()...); resp.StatusCode != 204 {
			t.Errorf("admin user root deletes bob's session: %d", resp.StatusCode)
		}
		if got := e.sessionIDs(t, root.auth()...); !slices.Equal(got, []string{mine.ID}) {
			t.Errorf("after the deletes admin user root lists %q, want only %s", got, mine.ID)
		}
	})
}

// wsDenied dials the exec WebSocket at path with token, sends req and
// wants a forbidden error message saying msg, then close 1008.
func wsDenied(t *testing.T, e *testEnv, path, token string, req any, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL(e, path), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", path, err, resp)
	}
	defer c.CloseNow()
	wsSend(t, c, req)
	ev, err := wsRead(t, c)
	if err != nil || ev.Type != api.EventError || ev.Error == nil || ev.Error.Code != api.CodeForbidden || ev.Error.Message != msg {
		t.Fatalf("first message after the request: %+v (%+v), %v; want a forbidden error %q", ev, ev.Error, err, msg)
	}
	if _, err := wsRead(t, c); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("after the refusal: %v, want close 1008", err)
	}
}

// ownerMay runs the session routes but delete as p on session id, which p
// may use: each answers 2xx.
func ownerMay(t *testing.T, e *policyEnv, p person, id string) {
	t.Helper()
	base := "/v1/sessions/" + id
	ok := func(resp *http.Response) {
		t.Helper()
		if resp.StatusCode/100 != 2 {
			b, _ := io.ReadAll(resp.Body)
			t.Errorf("%s %s as %s: %d %s", resp.Request.Method, resp.Request.URL.Path, p.Name, resp.StatusCode, b)
		}
	}
	ok(e.do("GET", base, nil, p.auth()...))
	ok(e.do("GET", base+"/events", nil, p.auth()...))
	ok(e.do("PUT", base+"/files?path=/tmp/mine", strings.NewReader("mine"), p.auth()...))
	ok(e.do("GET", base+"/files?path=/tmp/mine", nil, p.auth()...))
	ok(e.do("GET", base+"/files/stat?path=/tmp/mine", nil, p.auth()...))
	ok(e.do("GET", base+"/files/list?path=/tmp", nil, p.auth()...))
	ok(e.do("POST", base+"/files/mkdir?path=/tmp/d", nil, p.auth()...))
	ok(e.do("DELETE", base+"/files?path=/tmp/d", nil, p.auth()...))
	res := decode[api.ExecResult](t, e.doJSON("POST", base+"/exec", api.ExecRequest{Argv: []string{"cat", "/tmp/mine"}}, p.auth()...), 200)
	if string(res.Stdout) != "mine" {
		t.Errorf("exec as %s: %+v", p.Name, res)
	}
	ok(e.do("POST", base+"/park", nil, p.auth()...))
	ok(e.do("POST", base+"/wake", nil, p.auth()...))
}

// TestTeamGrantReadsNotExec loads a policy that grants team platform
// reading each other's sessions: carol, alice's teammate, reads alice's
// session and lists it, but may not run a command in it; dave, of no
// team, reads nothing of hers.
func TestTeamGrantReadsNotExec(t *testing.T) {
	e := newPolicyEnv(t)
	path := filepath.Join(t.TempDir(), "team.cedar")
	grant := `
@id("team-platform-read")
permit (
  principal in Cove::Team::"platform",
  action in [Cove::Action::"session.read", Cove::Action::"session.events"],
  resource in Cove::Team::"platform"
);
`
	if err := os.WriteFile(path, append(policy.Default(), grant...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.engine.Load(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	alice := e.person(t, "alice", "", "platform")
	carol := e.person(t, "carol", "", "platform", "web")
	dave := e.person(t, "dave", "", "web")
	mine := e.createSession(t, alice, api.CreateSessionRequest{})

	if got := decode[api.Session](t, e.do("GET", "/v1/sessions/"+mine.ID, nil, carol.auth()...), 200); got.Owner != alice.ID {
		t.Errorf("carol reads alice's session as %+v", got)
	}
	if got := e.sessionIDs(t, carol.auth()...); !slices.Equal(got, []string{mine.ID}) {
		t.Errorf("carol lists %q, want alice's %s", got, mine.ID)
	}
	wantDenied(t, e.doJSON("POST", "/v1/sessions/"+mine.ID+"/exec", api.ExecRequest{Argv: []string{"true"}}, carol.auth()...),
		policy.SessionExec, "Session "+mine.ID, "User "+carol.ID)
	wantDenied(t, e.do("DELETE", "/v1/sessions/"+mine.ID, nil, carol.auth()...), policy.SessionDelete, "Session "+mine.ID, "User "+carol.ID)
	wantDenied(t, e.do("GET", "/v1/sessions/"+mine.ID, nil, dave.auth()...), policy.SessionRead, "Session "+mine.ID, "User "+dave.ID)
	if got := e.sessionIDs(t, dave.auth()...); len(got) != 0 {
		t.Errorf("dave lists %q, want none", got)
	}
}

// TestExecDecidedOnItsCommandLine: a policy that forbids sudo refuses
// that command line, over HTTP and over the WebSocket (an error message,
// code forbidden, then close 1008), and lets others run; the command
// never reaches the guest.
func TestExecDecidedOnItsCommandLine(t *testing.T) {
	e := newPolicyEnv(t)
	path := filepath.Join(t.TempDir(), "nosudo.cedar")
	forbid := `
@id("no-sudo")
forbid (principal is Cove::User, action == Cove::Action::"session.exec", resource)
when { context.command == "sudo" };
`
	if err := os.WriteFile(path, append(policy.Default(), forbid...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.engine.Load(t.Context(), path); err != nil {
		t.Fatal(err)
	}
	alice := e.person(t, "alice", "")
	id := e.createSession(t, alice, api.CreateSessionRequest{}).ID

	body := wantError(t, e.doJSON("POST", "/v1/sessions/"+id+"/exec", api.ExecRequest{Argv: []string{"sudo", "touch", "/tmp/root"}}, alice.auth()...), 403, api.CodeForbidden)
	if want := `forbidden by policy "no-sudo"`; body.Message != want {
		t.Errorf("sudo refused with %q, want %q", body.Message, want)
	}
	decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/"+id+"/exec", api.ExecRequest{Argv: []string{"true"}}, alice.auth()...), 200)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL(e.testEnv, "/v1/sessions/"+id+"/exec/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + alice.token}},
	})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	wsSend(t, c, api.ExecRequest{Argv: []string{"sudo", "touch", "/tmp/root"}})
	ev, err := wsRead(t, c)
	if err != nil || ev.Type != api.EventError || ev.Error == nil || ev.Error.Code != api.CodeForbidden || ev.Error.Message != `forbidden by policy "no-sudo"` {
		t.Fatalf("first message after sudo over the WebSocket: %+v, %v; want a forbidden error naming no-sudo", ev, err)
	}
	if _, err := wsRead(t, c); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("after the refusal: %v, want close 1008", err)
	}
	if _, err := e.mgr.Stat(t.Context(), id, "/tmp/root"); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("the refused command ran: /tmp/root: %v", err)
	}
}

// TestPolicyTokens: with the default policy a user mints, lists and
// revokes its own API tokens (an engineer's list without ?user is its
// own), and none of another's; an admin lists everyone's.
func TestPolicyTokens(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")

	own := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "ci"}, alice.auth()...), 201)
	if own.User != "alice" {
		t.Errorf("alice's own token is %q's", own.User)
	}
	named := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "ci2", User: "alice"}, alice.auth()...), 201)
	toks := decode[tokenList](t, e.do("GET", "/v1/tokens", nil, alice.auth()...), 200).Tokens
	if len(toks) != 3 {
		t.Errorf("alice lists %d tokens, want her 3: %+v", len(toks), toks)
	}
	for _, tok := range toks {
		if tok.User != "alice" {
			t.Errorf("alice lists %s's token %s", tok.User, tok.ID)
		}
	}
	decode[api.Token](t, e.do("POST", "/v1/tokens/"+named.ID+"/revoke", nil, alice.auth()...), 200)
	wantDenied(t, e.do("POST", "/v1/tokens/"+own.ID+"/revoke", nil, bob.auth()...), policy.TokenRevoke, "User "+alice.ID, "User "+bob.ID)
	wantDenied(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "x", User: "bob"}, alice.auth()...), policy.TokenCreate, "User "+bob.ID, "User "+alice.ID)
	// An unknown user is the directory's answer, after the gate.
	wantError(t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "x", User: "nobody"}, alice.auth()...), 400, api.CodeInvalid)
	wantError(t, e.do("POST", "/v1/tokens/tok_nope/revoke", nil, alice.auth()...), 404, api.CodeNotFound)
	if all := decode[tokenList](t, e.do("GET", "/v1/tokens", nil), 200).Tokens; len(all) != 4 {
		t.Errorf("the admin token lists %d tokens, want all 4 (2 laptops, alice's 2)", len(all))
	}
	// The token alice revoked no longer works; hers that bob tried to does.
	wantError(t, e.do("GET", "/v1/sessions", nil, authAs(named.Secret)...), 401, api.CodeUnauthorized)
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil, authAs(own.Secret)...), 200)
}

// TestPolicyRulesCoverTheRoutes: every route of the OpenAPI document has
// a verb that verbRules maps to a policy action, or that publicVerbs
// names, never both; the public ones are those served without a token
// and the API's own description; and verbRules names no verb that no
// route has.
func TestPolicyRulesCoverTheRoutes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	byKey := map[string]route{}
	for _, rt := range routes {
		byKey[rt.Method+" "+rt.Path] = rt
	}
	used := map[string]bool{}
	for p, item := range doc.Paths {
		for m := range item {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			key := strings.ToUpper(m) + " " + p
			rt, ok := byKey[key]
			if !ok {
				t.Errorf("%s: no route (TestOpenAPIMatchesRoutes says more)", key)
				continue
			}
			used[rt.Verb] = true
			rule, mapped := verbRules[rt.Verb]
			why, public := publicVerbs[rt.Verb]
			switch {
			case mapped && public:
				t.Errorf("%s: verb %s is both decided (%s) and public (%s)", key, rt.Verb, rule.action, why)
			case !mapped && !public:
				t.Errorf("%s: verb %s has no policy action in verbRules and is not in publicVerbs", key, rt.Verb)
			case public && !rt.NoToken && rt.Verb != "openapi.get" && rt.Verb != "whoami.get":
				t.Errorf("%s: verb %s is public but needs a token; only the API's description and whoami may be", key, rt.Verb)
			case mapped && !slices.Contains(policy.Actions(), rule.action):
				t.Errorf("%s: verb %s maps to %q, which is no policy action", key, rt.Verb, rule.action)
			}
		}
	}
	for verb := range verbRules {
		if !used[verb] {
			t.Errorf("verbRules maps %s, which no route has", verb)
		}
	}
	for verb := range publicVerbs {
		if !used[verb] {
			t.Errorf("publicVerbs names %s, which no route has", verb)
		}
	}
}

// TestPolicyGateAgentAndUnknowns: a session's own identity (an agent
// principal) may park its session and nothing else, whatever its owner
// may; a verb the table does not know is denied; a session that does not
// exist is a 404, not a decision.
func TestPolicyGateAgentAndUnknowns(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	alice := store.User{ID: "u_alice", Name: "alice", Kind: store.UserEngineer}
	if err := st.PutUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	for _, s := range []store.Session{{ID: "s-1", Owner: alice.ID, Agent: "review-bot"}, {ID: "s-2", Owner: alice.ID}} {
		if err := st.CreateSession(ctx, &s); err != nil {
			t.Fatal(err)
		}
	}
	g := &PolicyGate{Policy: policy.New(), Records: st}
	agent := identity.NewContext(ctx, identity.Principal{Kind: identity.KindAgent, User: alice, Session: "s-1"})
	if err := g.Authorize(agent, Action{Verb: "session.park", SessionID: "s-1"}); err != nil {
		t.Errorf("the agent parks its own session: %v", err)
	}
	for _, a := range []Action{
		{Verb: "session.park", SessionID: "s-2"},
		{Verb: "session.exec", SessionID: "s-1", Argv: []string{"true"}},
		{Verb: "session.get", SessionID: "s-1"},
		{Verb: "session.list"},
	} {
		if err := g.Authorize(agent, a); !api.IsCode(err, api.CodeForbidden) {
			t.Errorf("the agent of s-1 asks %+v: %v, want forbidden", a, err)
		}
	}
	user := identity.NewContext(ctx, identity.Principal{Kind: identity.KindUser, User: alice})
	if err := g.Authorize(user, Action{Verb: "session.exec", SessionID: "s-1", Argv: []string{"true"}}); err != nil {
		t.Errorf("alice execs in her session: %v", err)
	}
	if err := g.Authorize(user, Action{Verb: "session.teleport", SessionID: "s-1"}); !api.IsCode(err, api.CodeForbidden) {
		t.Errorf("an unknown verb: %v, want forbidden", err)
	}
	if err := g.Authorize(user, Action{Verb: "session.get", SessionID: "s-nope"}); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("a missing session: %v, want not_found", err)
	}
	if err := g.Authorize(ctx, Action{Verb: "session.get", SessionID: "s-1"}); !api.IsCode(err, api.CodeForbidden) {
		t.Errorf("no principal: %v, want forbidden", err)
	}
}

// BenchmarkPolicyGate is one decision of the gate as a request pays it:
// the session and its owner's teams read from SQLite, then Cedar. It
// reports the p50 of single decisions as p50-ns.
func BenchmarkPolicyGate(b *testing.B) {
	ctx := b.Context()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	alice := store.User{ID: "u_alice", Name: "alice", Kind: store.UserEngineer}
	if err := st.PutUser(ctx, alice); err != nil {
		b.Fatal(err)
	}
	if err := st.AddTeamMember(ctx, alice.ID, "platform"); err != nil {
		b.Fatal(err)
	}
	if err := st.CreateSession(ctx, &store.Session{ID: "s-1", Owner: alice.ID}); err != nil {
		b.Fatal(err)
	}
	g := &PolicyGate{Policy: policy.New(), Records: st}
	user := identity.NewContext(ctx, identity.Principal{Kind: identity.KindUser, User: alice, Teams: []string{"platform"}})
	a := Action{Verb: "session.exec", SessionID: "s-1", Argv: []string{"make", "test"}}
	samples := make([]time.Duration, 1<<16) // the last 64Ki decisions' times
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if err := g.Authorize(user, a); err != nil {
			b.Fatal(err)
		}
		samples[n%len(samples)] = time.Since(start)
		n++
	}
	samples = samples[:min(n, len(samples))]
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns")
}
