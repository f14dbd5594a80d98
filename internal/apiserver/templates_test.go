package apiserver

import (
	"context"
	"reflect"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestTemplatesCRUD protects the template routes end to end over the fake
// manager: create, list, get, clone, delete, and the manager's 404 and 409.
func TestTemplatesCRUD(t *testing.T) {
	e := newEnv(t)
	if list := decode[templateList](t, e.do("GET", "/v1/templates", nil), 200); list.Templates == nil || len(list.Templates) != 0 {
		t.Fatalf("empty list: %+v (want [], not null)", list)
	}

	req := api.CreateTemplateRequest{Name: "py", Image: "tiny", MemoryMiB: 1024, CPUs: 2, Env: map[string]string{"A": "1"},
		Setup: []string{"apk add python3", "pip install x"}, Start: "pyright --stdio", Pool: 2}
	tp := decode[api.Template](t, e.doJSON("POST", "/v1/templates", req), 201)
	if tp.Name != "py" || tp.State != api.TemplateReady || tp.Pool != 2 {
		t.Fatalf("create: %+v", tp)
	}
	e.fake.mu.Lock()
	got := e.fake.created[0]
	e.fake.mu.Unlock()
	if !reflect.DeepEqual(got, req) {
		t.Errorf("manager got %+v, want %+v", got, req)
	}
	wantError(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "py"}), 409, api.CodeConflict)

	list := decode[templateList](t, e.do("GET", "/v1/templates", nil), 200)
	if len(list.Templates) != 1 || list.Templates[0].Name != "py" {
		t.Fatalf("list: %+v", list)
	}
	if got := decode[api.Template](t, e.do("GET", "/v1/templates/py", nil), 200); got.Name != "py" || got.Start != req.Start {
		t.Fatalf("get: %+v", got)
	}
	wantError(t, e.do("GET", "/v1/templates/nope", nil), 404, api.CodeNotFound)
	wantError(t, e.do("DELETE", "/v1/templates/nope", nil), 404, api.CodeNotFound)

	// A clone keeps its template.
	clone := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{Template: "py", IdleTimeout: "0s", NoAutoWake: true}), 201)
	if clone.Template != "py" || clone.IdleTimeout != "0s" || clone.AutoWake {
		t.Fatalf("clone: %+v", clone)
	}
	// The Sessions' conflict passes through as it is (the fake's message;
	// the manager's own is TestManagerConflicts').
	msg := wantError(t, e.do("DELETE", "/v1/templates/py", nil), 409, api.CodeConflict).Message
	if want := e.fake.DeleteTemplate(context.Background(), "py"); want == nil || msg != want.Error() {
		t.Errorf("conflict message %q, want the Sessions' %v as it is", msg, want)
	}
	if resp := e.do("DELETE", "/v1/sessions/"+clone.ID, nil); resp.StatusCode != 204 {
		t.Fatalf("delete clone: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/v1/templates/py", nil); resp.StatusCode != 204 {
		t.Fatalf("delete template: %d", resp.StatusCode)
	}
	wantError(t, e.do("GET", "/v1/templates/py", nil), 404, api.CodeNotFound)

	// A failed setup step comes back with the Sessions' message as it is.
	bad := api.CreateTemplateRequest{Name: "bad", Setup: []string{"true", "false"}}
	msg = wantError(t, e.doJSON("POST", "/v1/templates", bad), 400, api.CodeInvalid).Message
	if _, want := e.fake.CreateTemplate(context.Background(), "", bad); want == nil || msg != want.Error() {
		t.Errorf("message %q, want the Sessions' %v as it is", msg, want)
	}
}

// TestTemplateRepoRoutes protects the repo fields of create (hostile URLs,
// branches and dirs are refused before the manager is asked), the
// versions list and the rebuild (202 at once, 404 for an unknown name).
func TestTemplateRepoRoutes(t *testing.T) {
	e := newEnv(t)
	for _, req := range []api.CreateTemplateRequest{
		{Name: "r1", Repo: "ext::sh -c id"},
		{Name: "r2", Repo: "-uhttps://x/y"},
		{Name: "r3", Repo: "https://github.com/acme/api", Branch: "--upload-pack=id"},
		{Name: "r4", Repo: "https://github.com/acme/api", RepoDir: "workspace"},
		{Name: "r5", Repo: "https://github.com/acme/api", RepoDir: "/"},
		{Name: "r6", Branch: "main"},
		{Name: "r7", Repo: "ftp://example.com/acme/api"},
	} {
		wantError(t, e.doJSON("POST", "/v1/templates", req), 400, api.CodeInvalid)
	}
	e.fake.mu.Lock()
	n := len(e.fake.created)
	e.fake.mu.Unlock()
	if n != 0 {
		t.Fatalf("the manager was asked for %d templates with bad repo fields", n)
	}
	req := api.CreateTemplateRequest{Name: "api", Image: "debian", Repo: "git@github.com:acme/api.git", Branch: "release/2", RepoDir: "/src/api"}
	decode[api.Template](t, e.doJSON("POST", "/v1/templates", req), 201)
	e.fake.mu.Lock()
	got := e.fake.created[0]
	e.fake.mu.Unlock()
	if !reflect.DeepEqual(got, req) {
		t.Errorf("manager got %+v, want %+v", got, req)
	}

	vs := decode[templateVersionList](t, e.do("GET", "/v1/templates/api/versions", nil), 200)
	if len(vs.Versions) != 1 || !vs.Versions[0].Current || vs.Versions[0].Version != 1 {
		t.Fatalf("versions: %+v", vs)
	}
	wantError(t, e.do("GET", "/v1/templates/nope/versions", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/templates/BAD!/versions", nil), 400, api.CodeInvalid)

	if tp := decode[api.Template](t, e.do("POST", "/v1/templates/api/rebuild", nil), 202); tp.Name != "api" || !tp.Rebuilding {
		t.Fatalf("rebuild: %+v", tp)
	}
	wantError(t, e.do("POST", "/v1/templates/nope/rebuild", nil), 404, api.CodeNotFound)
}
