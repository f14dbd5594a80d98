package apiserver

import (
	"reflect"
	"strings"
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
	msg := wantError(t, e.do("DELETE", "/v1/templates/py", nil), 409, api.CodeConflict).Message
	if !strings.Contains(msg, clone.ID) {
		t.Errorf("conflict message %q does not name the clone", msg)
	}
	if resp := e.do("DELETE", "/v1/sessions/"+clone.ID, nil); resp.StatusCode != 204 {
		t.Fatalf("delete clone: %d", resp.StatusCode)
	}
	if resp := e.do("DELETE", "/v1/templates/py", nil); resp.StatusCode != 204 {
		t.Fatalf("delete template: %d", resp.StatusCode)
	}
	wantError(t, e.do("GET", "/v1/templates/py", nil), 404, api.CodeNotFound)

	// A failed setup step comes back with the manager's message.
	msg = wantError(t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "bad", Setup: []string{"true", "false"}}), 400, api.CodeInvalid).Message
	if !strings.Contains(msg, `setup step 2 ("false")`) {
		t.Errorf("message %q", msg)
	}
}
