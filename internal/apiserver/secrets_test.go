package apiserver

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// secretEnv serves the secret routes as cove server wires them: users,
// teams, tokens and secrets in a real SQLite file at path; the real
// identity.Authenticator and Directory; a PolicyGate over the default
// policy; a secret.Keeper over a Box; a real HTTP server on loopback. Its
// templates are records in the store (the gate and the Keeper read them
// there), as no session manager runs.
type secretEnv struct {
	*testEnv
	st   *sqlite.Store
	path string
	res  *secret.Resolver
	// values are the secret values the test sent: no answer, log line or
	// database file may hold one.
	values []string
}

func newSecretEnv(t *testing.T) *secretEnv {
	t.Helper()
	e := &secretEnv{path: filepath.Join(t.TempDir(), "cove.db")}
	st, err := sqlite.Open(t.Context(), e.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.st = st
	key := make([]byte, secret.KeySize)
	rand.Read(key)
	box, err := secret.NewBox(key)
	if err != nil {
		t.Fatal(err)
	}
	e.res = &secret.Resolver{Store: st, Box: box}
	e.testEnv = newEnv(t, func(c *Config) {
		c.Identities = &identity.Directory{Store: st}
		c.Authenticator = identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st})
		c.Authorize = (&PolicyGate{Policy: policy.New(), Records: st}).Authorize
		c.Secrets = &secret.Keeper{Store: st, Box: box}
	})
	return e
}

// person adds a user with the admin token and mints it a token.
func (e *secretEnv) person(t *testing.T, name, kind string, teams ...string) person {
	t.Helper()
	u := decode[api.User](t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: name, Kind: kind, Teams: teams}), 201)
	tok := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: name + "-laptop", User: name}), 201)
	return person{User: u, token: tok.Secret}
}

// call sends a request as hdr says (see do) and returns the status and
// body, failing the test if the body holds any value the test sent.
func (e *secretEnv) call(t *testing.T, method, path string, body any, hdr ...string) (int, []byte) {
	t.Helper()
	var resp *http.Response
	switch b := body.(type) {
	case nil:
		resp = e.do(method, path, nil, hdr...)
	case string:
		resp = e.do(method, path, strings.NewReader(b), append([]string{"Content-Type", "application/json"}, hdr...)...)
	default:
		resp = e.doJSON(method, path, b, hdr...)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range e.values {
		if v != "" && bytes.Contains(raw, []byte(v)) {
			t.Errorf("%s %s: the answer holds a secret's value: %s", method, path, raw)
		}
	}
	return resp.StatusCode, raw
}

// put sets a secret as hdr's holder, wanting status; it answers the
// secret (on 200) or the error's message.
func (e *secretEnv) put(t *testing.T, name string, req api.PutSecretRequest, status int, hdr ...string) (api.Secret, string) {
	t.Helper()
	e.values = append(e.values, req.Value)
	code, raw := e.call(t, "PUT", "/v1/secrets/"+name, req, hdr...)
	if code != status {
		t.Fatalf("PUT %s %+v: %d %s, want %d", name, req, code, raw, status)
	}
	if code != 200 {
		var er api.ErrorResponse
		json.Unmarshal(raw, &er)
		return api.Secret{}, er.Error.Message
	}
	var s api.Secret
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s, ""
}

// names lists the secrets the query names as hdr's holder sees them, as
// "KIND OWNER/NAME", wanting status.
func (e *secretEnv) names(t *testing.T, query string, status int, hdr ...string) []string {
	t.Helper()
	code, raw := e.call(t, "GET", "/v1/secrets"+query, nil, hdr...)
	if code != status {
		t.Fatalf("GET /v1/secrets%s: %d %s, want %d", query, code, raw, status)
	}
	if code != 200 {
		return nil
	}
	var list secretList
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, s := range list.Secrets {
		out = append(out, s.OwnerKind+" "+s.Owner+"/"+s.Name)
	}
	return out
}

// wantDeniedBody checks a 403 whose message is the policy's reason.
func wantDeniedBody(t *testing.T, code int, raw []byte, action policy.Action, resource, principal string) {
	t.Helper()
	var er api.ErrorResponse
	json.Unmarshal(raw, &er)
	want := fmt.Sprintf("no policy permits %s on %s for %s", action, resource, principal)
	if code != 403 || er.Error.Code != api.CodeForbidden || er.Error.Message != want {
		t.Errorf("%d %s, want 403 %q", code, raw, want)
	}
}

const bearerAuth = "Authorization: Bearer {{value}}"

// TestSecretsOwnAndOthers protects the secret routes under the default
// policy: an engineer sets, lists, replaces and removes its own; another
// engineer can neither list, overwrite nor remove them (403, the
// policy's reason) and sees none of them in its own list; admins manage
// anyone's and list all; the admin token, which only bootstraps, none;
// the answers never hold a value, and what was
// refused changed nothing (the Resolver still opens the owner's value).
func TestSecretsOwnAndOthers(t *testing.T) {
	e := newSecretEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")

	s, _ := e.put(t, "github", api.PutSecretRequest{Value: "ghp_ALICE-first", Hosts: []string{"GitHub.com", "api.github.com"},
		Header: "authorization:  Bearer {{value}}"}, 200, alice.auth()...)
	want := api.Secret{Name: "github", OwnerKind: "user", Owner: "alice", OwnerID: alice.ID, Hosts: []string{"github.com", "api.github.com"},
		Header: bearerAuth, HeaderName: "Authorization"}
	if s.Name != want.Name || s.OwnerKind != want.OwnerKind || s.Owner != want.Owner || s.OwnerID != want.OwnerID ||
		!slices.Equal(s.Hosts, want.Hosts) || s.Header != want.Header || s.HeaderName != want.HeaderName || s.CreatedAt.IsZero() || !s.UpdatedAt.Equal(s.CreatedAt) {
		t.Errorf("put answered %+v, want %+v", s, want)
	}
	// A replace keeps CreatedAt and the name; the value is the new one.
	s2, _ := e.put(t, "github", api.PutSecretRequest{Value: "ghp_ALICE-second", Hosts: []string{"github.com"}, Header: bearerAuth}, 200, alice.auth()...)
	if !s2.CreatedAt.Equal(s.CreatedAt) || s2.UpdatedAt.Before(s.UpdatedAt) || !slices.Equal(s2.Hosts, []string{"github.com"}) {
		t.Errorf("replace answered %+v after %+v", s2, s)
	}
	e.put(t, "npm", api.PutSecretRequest{Value: "npm_BOB", Hosts: []string{"registry.npmjs.org"}, Header: bearerAuth}, 200, bob.auth()...)

	if got := e.names(t, "", 200, alice.auth()...); !slices.Equal(got, []string{"user alice/github"}) {
		t.Errorf("alice lists %q", got)
	}
	if got := e.names(t, "?user=alice", 200, alice.auth()...); !slices.Equal(got, []string{"user alice/github"}) {
		t.Errorf("alice lists ?user=alice: %q", got)
	}
	if got := e.names(t, "", 200, bob.auth()...); !slices.Equal(got, []string{"user bob/npm"}) {
		t.Errorf("bob lists %q", got)
	}

	// bob at alice's: refused, by the policy, each way.
	aliceUser, bobUser := "User "+alice.ID, "User "+bob.ID
	code, raw := e.call(t, "GET", "/v1/secrets?user=alice", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretList, aliceUser, bobUser)
	e.values = append(e.values, "ghp_BOB-overwrite")
	code, raw = e.call(t, "PUT", "/v1/secrets/github", api.PutSecretRequest{Value: "ghp_BOB-overwrite", Hosts: []string{"github.com"},
		Header: bearerAuth, User: "alice"}, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretWrite, aliceUser, bobUser)
	code, raw = e.call(t, "DELETE", "/v1/secrets/github?user=alice", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretDelete, aliceUser, bobUser)
	code, raw = e.call(t, "GET", "/v1/secrets?all=true", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretList, "Server cove", bobUser)
	// bob's own "github" is none: 404, and alice's stays.
	if code, raw := e.call(t, "DELETE", "/v1/secrets/github", nil, bob.auth()...); code != 404 || !strings.Contains(string(raw), `no secret \"github\" of user bob`) {
		t.Errorf("bob removes his own github: %d %s", code, raw)
	}
	plain, err := e.res.For(t.Context(), alice.ID, "")
	if err != nil || len(plain) != 1 || plain[0].Value != "Bearer ghp_ALICE-second" || !slices.Equal(plain[0].Hosts, []string{"github.com"}) {
		t.Errorf("alice's secrets after bob's attempts: %v, %v", plain, err)
	}

	// An admin user: anyone's, and all.
	// (By owner kind, owner id and name: the ids are random.)
	if got := e.names(t, "?all=true", 200); !slices.Equal(sorted(got...), []string{"user alice/github", "user bob/npm"}) {
		t.Errorf("admin lists all: %q", got)
	}
	if got := e.names(t, "?user=bob", 200); !slices.Equal(got, []string{"user bob/npm"}) {
		t.Errorf("admin lists bob's: %q", got)
	}
	e.put(t, "gitlab", api.PutSecretRequest{Value: "glpat_ADMIN-for-bob", Hosts: []string{"gitlab.example"}, Header: "PRIVATE-TOKEN: {{value}}", User: "bob"}, 200)
	if got := e.names(t, "", 200, bob.auth()...); !slices.Equal(got, []string{"user bob/gitlab", "user bob/npm"}) {
		t.Errorf("bob lists after the admin set one of his: %q", got)
	}
	if code, raw := e.call(t, "DELETE", "/v1/secrets/gitlab?user=bob", nil); code != 204 {
		t.Errorf("admin removes bob's: %d %s", code, raw)
	}
	wantError(t, e.do("GET", "/v1/secrets?user=nobody", nil), 404, api.CodeNotFound)

	// The admin token only bootstraps: no secrets, whatever the policy.
	admin := authAs(testToken)
	e.values = append(e.values, "x_ADMIN-TOKEN")
	wantBootstrapOnly(t, e.do("GET", "/v1/secrets?all=true", nil, admin...), "secret.list")
	wantBootstrapOnly(t, e.do("GET", "/v1/secrets?user=alice", nil, admin...), "secret.list")
	wantBootstrapOnly(t, e.doJSON("PUT", "/v1/secrets/github", api.PutSecretRequest{Value: "x_ADMIN-TOKEN", Hosts: []string{"github.com"},
		Header: bearerAuth, User: "alice"}, admin...), "secret.put")
	wantBootstrapOnly(t, e.do("DELETE", "/v1/secrets/github?user=alice", nil, admin...), "secret.delete")

	// The owner removes its own: gone, and the next remove is a 404.
	if code, raw := e.call(t, "DELETE", "/v1/secrets/github", nil, alice.auth()...); code != 204 {
		t.Errorf("alice removes hers: %d %s", code, raw)
	}
	if code, _ := e.call(t, "DELETE", "/v1/secrets/github", nil, alice.auth()...); code != 404 {
		t.Errorf("alice removes hers again: %d", code)
	}
	if got := e.names(t, "", 200, alice.auth()...); len(got) != 0 {
		t.Errorf("alice lists after the remove: %q", got)
	}
	e.checkLogsAndDisk(t)
}

// TestSecretsTeamsAndTemplates protects the owners beyond oneself under
// the default policy: a team's members list the team's secrets and only
// admins set or remove them; a template's owner manages the template's,
// another engineer nothing of them; an unknown template is a 404.
func TestSecretsTeamsAndTemplates(t *testing.T) {
	e := newSecretEnv(t)
	alice := e.person(t, "alice", "", "platform")
	bob := e.person(t, "bob", "")
	if err := e.st.CreateTemplate(t.Context(), &store.Template{Name: "alice-tpl", State: "ready", Owner: alice.ID}); err != nil {
		t.Fatal(err)
	}
	bobUser := "User " + bob.ID
	npm := api.PutSecretRequest{Value: "npm_TEAM", Hosts: []string{"registry.npmjs.org"}, Header: bearerAuth, Team: "platform"}

	// A team's: members may not set it, admins may; members list it.
	_, msg := e.put(t, "npm", npm, 403, alice.auth()...)
	if msg != "no policy permits secret.write on Team platform for User "+alice.ID {
		t.Errorf("alice sets platform's: %q", msg)
	}
	e.put(t, "npm", npm, 200)
	if got := e.names(t, "?team=platform", 200, alice.auth()...); !slices.Equal(got, []string{"team platform/npm"}) {
		t.Errorf("alice lists platform's: %q", got)
	}
	code, raw := e.call(t, "GET", "/v1/secrets?team=platform", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretList, "Team platform", bobUser)
	code, raw = e.call(t, "DELETE", "/v1/secrets/npm?team=platform", nil, alice.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretDelete, "Team platform", "User "+alice.ID)
	// alice's session gets the team's.
	if plain, err := e.res.For(t.Context(), alice.ID, ""); err != nil || len(plain) != 1 || plain[0].Value != "Bearer npm_TEAM" {
		t.Errorf("alice's secrets: %v, %v", plain, err)
	}

	// A template's: its owner's to manage.
	tpl := api.PutSecretRequest{Value: "pypi_TEMPLATE", Hosts: []string{"*.pypi.org"}, Header: "X-Token: {{value}}", Template: "alice-tpl"}
	if s, _ := e.put(t, "pypi", tpl, 200, alice.auth()...); s.OwnerKind != "template" || s.Owner != "alice-tpl" || s.OwnerID != "" {
		t.Errorf("template secret: %+v", s)
	}
	if got := e.names(t, "?template=alice-tpl", 200, alice.auth()...); !slices.Equal(got, []string{"template alice-tpl/pypi"}) {
		t.Errorf("alice lists her template's: %q", got)
	}
	bobTpl := tpl
	bobTpl.Value = "pypi_BOB"
	_, msg = e.put(t, "pypi", bobTpl, 403, bob.auth()...)
	if msg != "no policy permits secret.write on Template alice-tpl for "+bobUser {
		t.Errorf("bob sets alice's template's: %q", msg)
	}
	code, raw = e.call(t, "GET", "/v1/secrets?template=alice-tpl", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretList, "Template alice-tpl", bobUser)
	code, raw = e.call(t, "DELETE", "/v1/secrets/pypi?template=alice-tpl", nil, bob.auth()...)
	wantDeniedBody(t, code, raw, policy.SecretDelete, "Template alice-tpl", bobUser)
	if plain, err := e.res.For(t.Context(), bob.ID, "alice-tpl"); err != nil || len(plain) != 1 || plain[0].Value != "pypi_TEMPLATE" {
		t.Errorf("a clone of alice-tpl for bob gets: %v, %v", plain, err)
	}
	wantError(t, e.do("GET", "/v1/secrets?template=nope", nil, alice.auth()...), 404, api.CodeNotFound)
	e.put(t, "x", api.PutSecretRequest{Value: "x_NOPE", Hosts: []string{"a.example"}, Header: bearerAuth, Template: "nope"}, 404, alice.auth()...)
	if code, _ := e.call(t, "DELETE", "/v1/secrets/pypi?template=alice-tpl", nil, alice.auth()...); code != 204 {
		t.Errorf("alice removes her template's: %d", code)
	}
	// A removed template takes its secrets with it.
	e.put(t, "pypi", tpl, 200, alice.auth()...)
	if err := e.st.DeleteTemplate(t.Context(), "alice-tpl"); err != nil {
		t.Fatal(err)
	}
	if got := e.names(t, "?all=true", 200); !slices.Equal(got, []string{"team platform/npm"}) {
		t.Errorf("after the template went: %q", got)
	}
	e.checkLogsAndDisk(t)
}

// TestSecretsRefuseBadInput: a malformed name, header, host or value,
// two owners, an unknown field, each is a 400 that says which and never
// quotes the value, and changes nothing.
func TestSecretsRefuseBadInput(t *testing.T) {
	e := newSecretEnv(t)
	alice := e.person(t, "alice", "")
	good := api.PutSecretRequest{Value: "ghp_GOOD", Hosts: []string{"github.com"}, Header: bearerAuth}
	e.put(t, "github", good, 200, alice.auth()...)
	with := func(f func(*api.PutSecretRequest)) api.PutSecretRequest {
		r := good
		r.Value = "VALUE_BAD_INPUT"
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name string
		req  api.PutSecretRequest
		msg  string
	}{
		{"-bad", with(func(r *api.PutSecretRequest) {}), "name: \"-bad\" is not a secret name"},
		{"github", with(func(r *api.PutSecretRequest) { r.Header = "Host: {{value}}" }), "header: Host is the proxy's"},
		{"github", with(func(r *api.PutSecretRequest) { r.Header = "Authorization: Bearer" }), "holds {{value}} 0 times"},
		{"github", with(func(r *api.PutSecretRequest) { r.Header = "Authorization: Bearer {{value}}\r\nX: y" }), "byte 0x0d"},
		{"github", with(func(r *api.PutSecretRequest) { r.Hosts = nil }), "hosts: none"},
		{"github", with(func(r *api.PutSecretRequest) { r.Hosts = []string{"https://github.com"} }), "a URL"},
		{"github", with(func(r *api.PutSecretRequest) { r.Value = "" }), "value: empty"},
		{"github", with(func(r *api.PutSecretRequest) { r.Value += "\n" }), "value: a control character (byte 0x0a)"},
		{"github", with(func(r *api.PutSecretRequest) { r.Value = strings.Repeat("VALUE_BAD_INPUT", 1200) }), "the limit is 16384"},
		{"github", with(func(r *api.PutSecretRequest) { r.Team, r.Template = "platform", "x" }), "name at most one of user, team, template"},
		// As an admin, whom the policy lets set a team's: the name is
		// then checked (alice would get the policy's 403 first).
		{"github", with(func(r *api.PutSecretRequest) { r.Team = "Platform" }), `team: "Platform" is not a team name`},
	} {
		hdr := alice.auth()
		if tc.req.Team == "Platform" {
			hdr = nil
		}
		_, msg := e.put(t, tc.name, tc.req, 400, hdr...)
		if !strings.Contains(msg, tc.msg) {
			t.Errorf("PUT %s %+v: %q, want it to say %q", tc.name, tc.req, msg, tc.msg)
		}
	}
	// Unknown fields are refused as elsewhere.
	code, raw := e.call(t, "PUT", "/v1/secrets/github", `{"value":"VALUE_BAD_INPUT","hosts":["github.com"],"header":"A: {{value}}","owner":"x"}`, alice.auth()...)
	if code != 400 || !strings.Contains(string(raw), `unknown field \"owner\"`) {
		t.Errorf("unknown field: %d %s", code, raw)
	}
	if code, _ := e.call(t, "GET", "/v1/secrets?team=a&template=b", nil, alice.auth()...); code != 400 {
		t.Errorf("list naming two owners: %d", code)
	}
	// Nothing changed.
	plain, err := e.res.For(t.Context(), alice.ID, "")
	if err != nil || len(plain) != 1 || plain[0].Value != "Bearer ghp_GOOD" {
		t.Errorf("alice's secrets after the refusals: %v, %v", plain, err)
	}
	if all, _ := e.st.ListSecrets(t.Context(), "", ""); len(all) != 1 {
		t.Errorf("store holds %d secrets, want 1", len(all))
	}
	e.checkLogsAndDisk(t)
}

// checkLogsAndDisk: no value the test sent is in the server's log or in
// the database's files (the main file, its WAL and shared memory). The
// log holds the secret requests (so it is the log of this test's
// requests), and a plaintext the store does keep, a hook secret, is found
// by the same scan (so it reads the files the store writes).
func (e *secretEnv) checkLogsAndDisk(t *testing.T) {
	t.Helper()
	marker := "HOOK-PLAINTEXT-MARKER-" + t.Name()
	if err := e.st.PutHookSecret(t.Context(), "marker", []byte(marker)); err != nil {
		t.Fatal(err)
	}
	// The gate logs after the answer: wait for a last request's line.
	last := "/v1/no-such-route-" + strings.ReplaceAll(t.Name(), "/", "-")
	e.do("GET", last, nil)
	logs := e.logs.waitFor(t, "path="+last)
	if !strings.Contains(logs, "verb=secret.put") {
		t.Errorf("the log has no secret.put line:\n%s", logs)
	}
	var disk []byte
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(e.path + suffix)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		disk = append(disk, b...)
	}
	if !bytes.Contains(disk, []byte(marker)) {
		t.Fatalf("the database files lack the hook secret %q: the scan does not see what the store writes", marker)
	}
	for _, v := range e.values {
		if v == "" {
			continue
		}
		if strings.Contains(logs, v) {
			t.Errorf("the server's log holds the value %q", v)
		}
		if bytes.Contains(disk, []byte(v)) {
			t.Errorf("the database files hold the value %q", v)
		}
	}
}
