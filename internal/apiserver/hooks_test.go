package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// fakeHooks answers every delivery 202, or 401 for a body "bad", and
// records the hook names and bodies it was handed.
type fakeHooks struct {
	mu   sync.Mutex
	got  []string // guarded by mu; "NAME BODY"
	auth []string // guarded by mu; the Authorization header of each
}

func (f *fakeHooks) ServeHook(w http.ResponseWriter, r *http.Request, hook string) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.got = append(f.got, hook+" "+string(b))
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.mu.Unlock()
	if string(b) == "bad" {
		writeJSON(w, http.StatusUnauthorized, api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeUnauthorized, Message: "signature does not match"}})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"ok": true, "id": "d1"})
}

func (f *fakeHooks) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// fakeHookSecrets keeps secrets in a map; failing, if set, fails every call.
type fakeHookSecrets struct {
	mu      sync.Mutex
	secrets map[string]string // guarded by mu
	failing error             // guarded by mu
}

func (f *fakeHookSecrets) PutHookSecret(ctx context.Context, name string, secret []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing != nil {
		return f.failing
	}
	f.secrets[name] = string(secret)
	return nil
}

func (f *fakeHookSecrets) ListHooks(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing != nil {
		return nil, f.failing
	}
	var names []string
	for n := range f.secrets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (f *fakeHookSecrets) DeleteHook(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing != nil {
		return f.failing
	}
	if _, ok := f.secrets[name]; !ok {
		return fmt.Errorf("delete hook %s: %w", name, store.ErrNotFound)
	}
	delete(f.secrets, name)
	return nil
}

func newHookEnv(t *testing.T, edit ...func(*Config)) (*testEnv, *fakeHooks, *fakeHookSecrets) {
	hooks := &fakeHooks{}
	secrets := &fakeHookSecrets{secrets: map[string]string{}}
	e := newEnv(t, append([]func(*Config){func(c *Config) {
		c.Hooks, c.HookSecrets = hooks, secrets
	}}, edit...)...)
	return e, hooks, secrets
}

// TestHooksNeedNoToken protects the webhook routes: reachable without the
// bearer token (senders sign instead, which Hooks checks), the hook's name
// handed over, the receiver's answer passed through as it is, names no
// hook could have refused before it, and every delivery still passing
// through Authorize, the log and cove_webhooks_total.
func TestHooksNeedNoToken(t *testing.T) {
	var mu sync.Mutex
	var acts []Action // guarded by mu
	e, hooks, _ := newHookEnv(t, func(c *Config) {
		c.Authorize = func(ctx context.Context, a Action) error {
			mu.Lock()
			defer mu.Unlock()
			acts = append(acts, a)
			if a.Hook == "denied" {
				return api.Errorf(api.CodeUnauthorized, "policy: hook off")
			}
			return nil
		}
	})
	body := decode[map[string]any](t, e.do("POST", "/v1/hooks/github", strings.NewReader(`{"zen":"x"}`), "Authorization", "", "Content-Type", "application/json"), 202)
	if body["id"] != "d1" {
		t.Errorf("answer %v, want the receiver's", body)
	}
	decode[map[string]any](t, e.do("POST", "/v1/hooks/ci-1_x", strings.NewReader(`{}`), "Authorization", ""), 202)
	wantError(t, e.do("POST", "/v1/hooks/ci", strings.NewReader("bad"), "Authorization", ""), 401, api.CodeUnauthorized)
	// A token, if sent, is neither needed nor checked, nor hidden from
	// the receiver.
	decode[map[string]any](t, e.do("POST", "/v1/hooks/ci", strings.NewReader(`{}`), "Authorization", "Bearer wrong"), 202)
	for _, name := range []string{"Upper", "-x", strings.Repeat("a", 65), "a.b"} {
		wantError(t, e.do("POST", "/v1/hooks/"+name, nil, "Authorization", ""), 404, api.CodeNotFound)
	}
	wantError(t, e.do("POST", "/v1/hooks/denied", nil, "Authorization", ""), 401, api.CodeUnauthorized)
	// Other methods on a hook are refused as such, without asking for a
	// token that would not help (issue 13, finding 14).
	for _, p := range []string{"/v1/hooks/github", "/v1/hooks/ci"} {
		for _, m := range []string{"GET", "PUT", "DELETE"} {
			resp := e.do(m, p, nil, "Authorization", "")
			if got := resp.Header.Get("Allow"); got != "POST" {
				t.Errorf("%s %s: Allow %q, want POST", m, p, got)
			}
			if resp.Header.Get("WWW-Authenticate") != "" {
				t.Errorf("%s %s asks for a token", m, p)
			}
			wantError(t, resp, 405, codeMethodNotAllowed)
		}
	}
	// A path no route serves still needs the token to learn as much.
	wantError(t, e.do("GET", "/v1/nosuch", nil, "Authorization", ""), 401, api.CodeUnauthorized)

	want := []string{`github {"zen":"x"}`, "ci-1_x {}", "ci bad", "ci {}"}
	if got := hooks.calls(); !slices.Equal(got, want) {
		t.Errorf("receiver got %q, want %q", got, want)
	}
	mu.Lock()
	var names []string
	for _, a := range acts {
		if a.Verb != verbHookReceive {
			t.Errorf("action %+v, want verb %s", a, verbHookReceive)
		}
		names = append(names, a.Hook)
	}
	mu.Unlock()
	// Malformed names are refused by the handler, after Authorize.
	wantNames := []string{"github", "ci-1_x", "ci", "ci", "Upper", "-x", strings.Repeat("a", 65), "a.b", "denied"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("Authorize saw hooks %q, want %q", names, wantNames)
	}
	e.logs.waitFor(t, "method=GET path=/v1/hooks/github")
	log := e.logs.waitFor(t, "action.hook=denied")
	if !strings.Contains(log, "path=/v1/hooks/github status=202") || !strings.Contains(log, "action.hook=github") {
		t.Errorf("log lacks the GitHub delivery:\n%s", log)
	}

	m := scrape(t, e)
	for _, want := range []string{`cove_webhooks_total{code="202"} 3`, `cove_webhooks_total{code="401"} 2`, `cove_webhooks_total{code="404"} 4`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Without Config.Hooks or Config.HookSecrets their routes answer 503.
func TestHooksUnconfigured(t *testing.T) {
	e := newEnv(t)
	wantError(t, e.do("POST", "/v1/hooks/github", strings.NewReader(`{}`), "Authorization", ""), 503, api.CodeUnavailable)
	wantError(t, e.do("POST", "/v1/hooks/ci", strings.NewReader(`{}`), "Authorization", ""), 503, api.CodeUnavailable)
	wantError(t, e.do("GET", "/v1/hook-secrets", nil), 503, api.CodeUnavailable)
	wantError(t, e.doJSON("PUT", "/v1/hook-secrets/ci", api.HookSecretRequest{Secret: "x"}), 503, api.CodeUnavailable)
	wantError(t, e.do("DELETE", "/v1/hook-secrets/ci", nil), 503, api.CodeUnavailable)
}

// TestHookSecretsCRUD protects the hook-secret routes: put, list and
// delete with the token, the store's not-found as 404, bad names and
// secrets refused before the store, the secret never echoed, and no
// access without the token.
func TestHookSecretsCRUD(t *testing.T) {
	e, _, secrets := newHookEnv(t)
	for _, name := range []string{"github", "ci"} {
		if resp := e.doJSON("PUT", "/v1/hook-secrets/"+name, api.HookSecretRequest{Secret: "s3cr3t-" + name}); resp.StatusCode != 204 {
			t.Fatalf("put %s: %d", name, resp.StatusCode)
		}
	}
	// Replacing is allowed.
	if resp := e.doJSON("PUT", "/v1/hook-secrets/ci", api.HookSecretRequest{Secret: strings.Repeat("k", 1024)}); resp.StatusCode != 204 {
		t.Fatalf("replace: %d", resp.StatusCode)
	}
	if got := decode[hookList](t, e.do("GET", "/v1/hook-secrets", nil), 200); !slices.Equal(got.Hooks, []string{"ci", "github"}) {
		t.Errorf("list %+v", got)
	}
	secrets.mu.Lock()
	if secrets.secrets["ci"] != strings.Repeat("k", 1024) || secrets.secrets["github"] != "s3cr3t-github" {
		t.Errorf("store holds %q", secrets.secrets)
	}
	secrets.mu.Unlock()
	if resp := e.do("DELETE", "/v1/hook-secrets/ci", nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	wantError(t, e.do("DELETE", "/v1/hook-secrets/ci", nil), 404, api.CodeNotFound)
	wantError(t, e.do("DELETE", "/v1/hook-secrets/Bad!", nil), 404, api.CodeNotFound)

	for name, tc := range map[string]struct {
		name, body string
	}{
		"bad name":        {"Bad!", `{"secret":"x"}`},
		"long name":       {strings.Repeat("a", 65), `{"secret":"x"}`},
		"empty secret":    {"ci", `{"secret":""}`},
		"no secret":       {"ci", `{}`},
		"long secret":     {"ci", `{"secret":"` + strings.Repeat("k", 1025) + `"}`},
		"unknown field":   {"ci", `{"secret":"x","hmac":"sha1"}`},
		"secret not text": {"ci", `{"secret":42}`},
	} {
		t.Run(name, func(t *testing.T) {
			msg := wantError(t, e.with(t).do("PUT", "/v1/hook-secrets/"+tc.name, strings.NewReader(tc.body), "Content-Type", "application/json"), 400, api.CodeInvalid).Message
			if strings.Contains(msg, "kkkk") {
				t.Errorf("message %q echoes the secret", msg)
			}
		})
	}
	if got := decode[hookList](t, e.do("GET", "/v1/hook-secrets", nil), 200); !slices.Equal(got.Hooks, []string{"github"}) {
		t.Errorf("list after refusals %+v", got)
	}

	// No token, no secrets.
	for _, req := range []struct{ method, path string }{
		{"GET", "/v1/hook-secrets"}, {"PUT", "/v1/hook-secrets/ci"}, {"DELETE", "/v1/hook-secrets/github"},
	} {
		wantError(t, e.do(req.method, req.path, strings.NewReader(`{"secret":"evil"}`), "Authorization", ""), 401, api.CodeUnauthorized)
	}
	secrets.mu.Lock()
	if len(secrets.secrets) != 1 || secrets.secrets["github"] != "s3cr3t-github" {
		t.Errorf("unauthenticated requests changed the store: %q", secrets.secrets)
	}
	secrets.failing = errors.New("store: sqlite: disk I/O error at /var/lib/cove/state.db")
	secrets.mu.Unlock()
	msg := wantError(t, e.do("GET", "/v1/hook-secrets", nil), 500, api.CodeInternal).Message
	if strings.Contains(msg, "/var/lib") || !strings.Contains(msg, "hook.secret.list") {
		t.Errorf("message %q: want the operation and no host path", msg)
	}
	if log := e.logs.String(); strings.Contains(log, "s3cr3t") {
		t.Errorf("a secret is in the log:\n%s", log)
	}
}

// scrape returns the text of GET /metrics.
func scrape(t *testing.T, e *testEnv) string {
	t.Helper()
	resp := e.do("GET", "/metrics", nil, "Authorization", "")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}
