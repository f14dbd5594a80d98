package apiserver

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// openAPIDoc is the part of the OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI  string                                `json:"openapi"`
	Paths    map[string]map[string]json.RawMessage `json:"paths"`
	Security []map[string][]string                 `json:"security"`
}

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

func loadOpenAPI(t *testing.T) (openAPIDoc, map[string]any) {
	t.Helper()
	b, err := openAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	var raw map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	return doc, raw
}

// The route table, the mux and the OpenAPI document describe the same
// routes, and the document marks exactly the routes that need no token:
// those outside /v1, the webhooks and the nodes' join and connect.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	if len(doc.Security) != 1 || doc.Security[0]["bearer"] == nil {
		t.Errorf("top-level security %v, want bearer", doc.Security)
	}

	inDoc := map[string]bool{}
	public := map[string]bool{}
	for p, item := range doc.Paths {
		for m, op := range item {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			key := strings.ToUpper(m) + " " + p
			inDoc[key] = true
			var o struct {
				Security *[]map[string][]string `json:"security"`
			}
			if err := json.Unmarshal(op, &o); err != nil {
				t.Fatal(err)
			}
			if o.Security != nil && len(*o.Security) == 0 {
				public[key] = true
			}
		}
	}

	s := New(Config{Sessions: newFakeSessions(), Token: "x"})
	inTable := map[string]bool{}
	for _, rt := range routes {
		key := rt.Method + " " + rt.Path
		if inTable[key] {
			t.Errorf("route %s is in the table twice", key)
		}
		inTable[key] = true
		if !inDoc[key] {
			t.Errorf("route %s is not in api/openapi.yaml", key)
		}
		if public[key] != rt.NoToken {
			t.Errorf("route %s: document says public=%v, server says %v", key, public[key], rt.NoToken)
		}
		if rt.NoToken && isV1(rt.Path) && rt.Verb != verbHookReceive && rt.Verb != verbNodeJoin && rt.Verb != verbNodeConnect {
			t.Errorf("route %s: only webhooks and nodes' join and connect go without the token under /v1", key)
		}
		// The mux serves the route with its own pattern.
		concrete := strings.NewReplacer("{id}", "s1", "{name}", "tiny").Replace(rt.Path)
		if _, pat := s.mux.Handler(httptest.NewRequest(rt.Method, concrete, nil)); pat != key {
			t.Errorf("%s %s: mux pattern %q, want %q", rt.Method, concrete, pat, key)
		}
	}
	for key := range inDoc {
		if !inTable[key] {
			t.Errorf("api/openapi.yaml has %s, which the server does not serve", key)
		}
	}
}

// Every $ref in the document points at something in it.
func TestOpenAPIRefsResolve(t *testing.T) {
	_, raw := loadOpenAPI(t)
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if ref, ok := x.(string); ok && k == "$ref" {
					if !resolves(raw, ref) {
						t.Errorf("$ref %q does not resolve", ref)
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(raw)
}

func resolves(doc map[string]any, ref string) bool {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return false
	}
	var cur any = doc
	for part := range strings.SplitSeq(p, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if cur, ok = m[part]; !ok {
			return false
		}
	}
	return true
}

func TestOpenAPIServedAsJSON(t *testing.T) {
	e := newEnv(t)
	resp := e.do("GET", "/v1/openapi.json", nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("openapi.json: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc openAPIDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	for _, p := range []string{"/v1/sessions", "/v1/sessions/{id}/exec/ws", "/v1/images/{name}/build", "/v1/sessions/{id}/park", "/v1/templates/{name}"} {
		if doc.Paths[p] == nil {
			t.Errorf("served document lacks %s", p)
		}
	}
}
