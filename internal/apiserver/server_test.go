package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

const testToken = "s3cret-token"

type testEnv struct {
	t      *testing.T
	srv    *httptest.Server
	fake   *fakeSessions
	images *fakeImages
	server *Server
	logs   *logSink
	// admin is the admin user the requests act as (see do); the copies
	// that with makes share it.
	admin *harnessAdmin
}

// harnessAdmin is the admin user whose API token the tests' requests
// carry: the admin token only bootstraps (users, teams, tokens), so
// everything else is done as a user, as an operator would. It is made on
// first need in dir, the Directory behind the server's identity routes
// and its Authenticator, and not through the API, so that what a test
// counts (requests, users, Authorize's calls) is its own;
// TestAdminTokenOnlyBootstraps makes users and tokens through the API
// with the admin token.
type harnessAdmin struct {
	dir   *identity.Directory
	mu    sync.Mutex
	token string // guarded by mu; "" until made
}

// harnessAdminName is the harness's admin user.
const harnessAdminName = "harness-admin"

// bootstrapPaths are the routes of what the admin token may do
// (bootstrapVerbs), which do sends with the admin token itself.
var bootstrapPaths = []string{"/v1/users", "/v1/teams", "/v1/tokens", "/v1/whoami"}

// isBootstrapPath reports whether path is one of bootstrapPaths or under
// one.
func isBootstrapPath(path string) bool {
	for _, p := range bootstrapPaths {
		if path == p || strings.HasPrefix(path, p+"/") || strings.HasPrefix(path, p+"?") {
			return true
		}
	}
	return false
}

// userToken is the harness admin user's API token, made (with the admin
// token, through the API) on first use.
func (e *testEnv) userToken() string {
	e.t.Helper()
	if e.admin == nil {
		e.t.Fatal("testEnv: no harness admin (make the env with newEnv, or set admin)")
	}
	e.admin.mu.Lock()
	defer e.admin.mu.Unlock()
	if e.admin.token == "" {
		ctx := context.Background()
		if _, err := e.admin.dir.AddUser(ctx, api.CreateUserRequest{Name: harnessAdminName, Kind: api.UserAdmin}); err != nil {
			e.t.Fatalf("harness admin: %v", err)
		}
		tok, err := e.admin.dir.CreateToken(ctx, api.CreateTokenRequest{Name: "harness", User: harnessAdminName})
		if err != nil {
			e.t.Fatalf("harness admin's token: %v", err)
		}
		e.admin.token = tok.Secret
	}
	return e.admin.token
}

// identityStore opens a real SQLite store for the users and tokens of a
// test's server, closed at cleanup.
func identityStore(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "identity.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// withIdentities wires st's users and tokens into c, as cove server does,
// and returns the harness admin to be made there.
func withIdentities(c *Config, st *sqlite.Store) *harnessAdmin {
	dir := &identity.Directory{Store: st}
	c.Identities = dir
	c.Authenticator = identity.NewAuthenticator(identity.AuthConfig{Store: st})
	return &harnessAdmin{dir: dir}
}

// newEnv starts a real HTTP server over a fake session manager, its users
// and tokens in a real SQLite store. edit, if given, adjusts the Config
// first.
func newEnv(t *testing.T, edit ...func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, fake: newFakeSessions(), images: &fakeImages{}, logs: &logSink{}}
	cfg := Config{
		Sessions: e.fake,
		Images:   e.images,
		Token:    testToken,
		Log:      slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	e.admin = withIdentities(&cfg, identityStore(t))
	for _, f := range edit {
		f(&cfg)
	}
	if d, ok := cfg.Identities.(*identity.Directory); ok { // an edit's own (newIDEnv's)
		e.admin.dir = d
	}
	e.server = New(cfg)
	e.srv = httptest.NewServer(e.server.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

// with returns e for use by the (sub)test t.
func (e *testEnv) with(t *testing.T) *testEnv {
	c := *e
	c.t = t
	return &c
}

// do sends a request unless hdr sets Authorization (to "" for none) with
// the admin token to the routes it may use (bootstrapPaths), else as the
// harness's admin user (userToken).
func (e *testEnv) do(method, path string, body io.Reader, hdr ...string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if !setsAuth(hdr) {
		token := testToken
		if !isBootstrapPath(path) {
			token = e.userToken()
		}
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// setsAuth reports whether the header pairs hdr set Authorization.
func setsAuth(hdr []string) bool {
	for i := 0; i+1 < len(hdr); i += 2 {
		if http.CanonicalHeaderKey(hdr[i]) == "Authorization" {
			return true
		}
	}
	return false
}

// doJSON sends v as a JSON body.
func (e *testEnv) doJSON(method, path string, v any, hdr ...string) *http.Response {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(method, path, bytes.NewReader(b), append([]string{"Content-Type", "application/json"}, hdr...)...)
}

// decode checks the status and decodes the JSON body into v.
func decode[T any](t *testing.T, resp *http.Response, status int) T {
	t.Helper()
	var v T
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, body)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return v
}

// wantError checks an api.ErrorResponse answer.
func wantError(t *testing.T, resp *http.Response, status int, code string) api.ErrorBody {
	t.Helper()
	er := decode[api.ErrorResponse](t, resp, status)
	if er.Error.Code != code || er.Error.Message == "" {
		t.Fatalf("error %+v, want code %q and a message", er.Error, code)
	}
	return er.Error
}

// logSink collects log output. The gate logs after the answer is sent, so
// tests wait for the line they expect.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor returns the log once it holds want, or fails after a while.
func (l *logSink) waitFor(t *testing.T, want string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // generous: only a missing line waits it out
	for {
		s := l.String()
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHealthzNeedsNoToken(t *testing.T) {
	e := newEnv(t)
	resp := e.do("GET", "/healthz", nil, "Authorization", "")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"ok":true}` {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
}

func TestAuthRefusesMissingAndWrongTokens(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ name, auth string }{
		{"missing", ""},
		{"wrong", "Bearer nope"},
		{"prefix of the token", "Bearer " + testToken[:4]},
		{"other scheme", "Basic " + testToken},
		{"no scheme", testToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			for _, path := range []string{"/v1/sessions", "/v1/openapi.json", "/v1/no-such-route"} {
				resp := e.do("GET", path, nil, "Authorization", tc.auth)
				wantError(t, resp, http.StatusUnauthorized, api.CodeUnauthorized)
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("%s: no WWW-Authenticate header", path)
				}
			}
			if n := e.fake.calls.Load(); n != 0 {
				t.Errorf("session manager called %d times for unauthenticated requests", n)
			}
		})
	}
	// The scheme is case-insensitive.
	decode[sessionList](t, e.do("GET", "/v1/sessions", nil, "Authorization", "bearer "+e.userToken()), 200)
}

func TestEmptyTokenRefusesEverything(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Token = "" })
	wantError(t, e.do("GET", "/v1/sessions", nil, "Authorization", "Bearer "), 401, api.CodeUnauthorized)
	wantError(t, e.do("GET", "/v1/sessions", nil, "Authorization", "Bearer x"), 401, api.CodeUnauthorized)
}

func TestAuthorizeSeesActionBeforeTheService(t *testing.T) {
	var mu sync.Mutex
	var got []Action // guarded by mu
	e := newEnv(t, func(c *Config) {
		c.Authorize = func(ctx context.Context, a Action) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, a)
			if a.Verb == "file.remove" {
				return api.Errorf(api.CodeUnauthorized, "policy: no deleting")
			}
			return nil
		}
	})
	e.do("PUT", "/v1/sessions/s1/files?path=/work/../etc/x&mode=0600", strings.NewReader("hi"))
	resp := e.do("DELETE", "/v1/sessions/s1/files?path=/etc/x", nil)
	wantError(t, resp, 401, api.CodeUnauthorized)
	e.do("POST", "/v1/images/tiny/build", nil)
	e.do("GET", "/healthz", nil)
	e.do("POST", "/v1/sessions/s1/park", nil)
	e.do("POST", "/v1/sessions/s1/wake", nil)
	e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "py"})
	e.do("GET", "/v1/templates", nil)
	e.do("GET", "/v1/templates/py", nil)
	e.do("DELETE", "/v1/templates/py", nil)
	e.do("GET", "/v1/hook-secrets", nil)
	e.do("DELETE", "/v1/hook-secrets/ci", nil)
	e.do("POST", "/v1/hooks/github", nil, "Authorization", "")
	want := []Action{
		{Verb: "file.write", SessionID: "s1", Path: "/etc/x"},
		{Verb: "file.remove", SessionID: "s1", Path: "/etc/x"},
		{Verb: "image.build", Image: "tiny"},
		{Verb: "session.park", SessionID: "s1"},
		{Verb: "session.wake", SessionID: "s1"},
		{Verb: "template.create"}, // the name is in the body, read later
		{Verb: "template.list"},
		{Verb: "template.get", Template: "py"}, // the list asks about each item
		{Verb: "template.get", Template: "py"},
		{Verb: "template.delete", Template: "py"},
		{Verb: "hook.secret.list"},
		{Verb: "hook.secret.delete", Hook: "ci"},
		{Verb: "hook.receive", Hook: "github"},
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("Authorize saw %+v, want %+v", got, want)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("action %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := e.fake.Stat(context.Background(), "s1", "/etc/x"); err != nil {
		t.Errorf("the denied remove reached the service: %v", err)
	}
}

func TestJSONBodyErrors(t *testing.T) {
	e := newEnv(t)
	big := `{"image":"` + strings.Repeat("a", 17<<20) + `"}`
	for _, tc := range []struct {
		name, body, contentType string
		chunked                 bool
		status                  int
		code                    string
	}{
		{"malformed", `{"image":`, "application/json", false, 400, api.CodeInvalid},
		{"not an object", `[1]`, "", false, 400, api.CodeInvalid},
		{"unknown field", `{"imag":"tiny"}`, "application/json", false, 400, api.CodeInvalid},
		{"wrong type", `{"cpus":"two"}`, "application/json", false, 400, api.CodeInvalid},
		{"trailing data", `{"image":"tiny"} {}`, "application/json", false, 400, api.CodeInvalid},
		{"trailing garbage", `{"image":"tiny"}x`, "application/json", false, 400, api.CodeInvalid},
		{"wrong content type", `{}`, "text/plain", false, 415, api.CodeUnsupported},
		{"oversized", big, "application/json", false, 413, api.CodeTooLarge},
		{"oversized chunked", big, "application/json", true, 413, api.CodeTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			resp := e.do("POST", "/v1/sessions", body, "Content-Type", tc.contentType)
			wantError(t, resp, tc.status, tc.code)
			if n := e.fake.calls.Load(); n != 0 {
				t.Errorf("session manager called %d times", n)
			}
		})
	}
	// The decoder's message reaches the client.
	msg := wantError(t, e.do("POST", "/v1/sessions", strings.NewReader(`{"imag":1}`)), 400, api.CodeInvalid).Message
	if !strings.Contains(msg, `unknown field "imag"`) {
		t.Errorf("message %q does not name the unknown field", msg)
	}
}

func TestValidationRejectsBeforeTheService(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, path string
		body       any
	}{
		{"memory too small", "/v1/sessions", api.CreateSessionRequest{MemoryMiB: 63}},
		{"memory too large", "/v1/sessions", api.CreateSessionRequest{MemoryMiB: 65537}},
		{"cpus", "/v1/sessions", api.CreateSessionRequest{CPUs: 65}},
		{"negative cpus", "/v1/sessions", api.CreateSessionRequest{CPUs: -1}},
		{"image name", "/v1/sessions", api.CreateSessionRequest{Image: "Tiny"}},
		{"image name slash", "/v1/sessions", api.CreateSessionRequest{Image: "a/b"}},
		{"env empty key", "/v1/sessions", api.CreateSessionRequest{Env: map[string]string{"": "x"}}},
		{"env key with =", "/v1/sessions", api.CreateSessionRequest{Env: map[string]string{"A=B": "x"}}},
		{"env key with NUL", "/v1/sessions", api.CreateSessionRequest{Env: map[string]string{"A\x00": "x"}}},
		{"boot timeout", "/v1/sessions", api.CreateSessionRequest{BootTimeout: "soon"}},
		{"boot timeout zero", "/v1/sessions", api.CreateSessionRequest{BootTimeout: "0s"}},
		{"empty argv", "/v1/sessions/s1/exec", api.ExecRequest{}},
		{"empty argv0", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{""}}},
		{"relative cwd", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"ls"}, Cwd: "tmp"}},
		{"negative timeout", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"ls"}, Timeout: "-1s"}},
		{"exec env", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"ls"}, Env: map[string]string{"X=": ""}}},
		{"template name on create", "/v1/sessions", api.CreateSessionRequest{Template: "Py"}},
		{"template with image", "/v1/sessions", api.CreateSessionRequest{Template: "py", Image: "tiny"}},
		{"template with memory", "/v1/sessions", api.CreateSessionRequest{Template: "py", MemoryMiB: 1024}},
		{"idle timeout", "/v1/sessions", api.CreateSessionRequest{IdleTimeout: "later"}},
		{"negative idle timeout", "/v1/sessions", api.CreateSessionRequest{IdleTimeout: "-1m"}},
		{"template without name", "/v1/templates", api.CreateTemplateRequest{}},
		{"template name", "/v1/templates", api.CreateTemplateRequest{Name: "Py"}},
		{"template name slash", "/v1/templates", api.CreateTemplateRequest{Name: "a/b"}},
		{"template name too long", "/v1/templates", api.CreateTemplateRequest{Name: strings.Repeat("a", 65)}},
		{"template name leading dot", "/v1/templates", api.CreateTemplateRequest{Name: ".py"}},
		{"template image", "/v1/templates", api.CreateTemplateRequest{Name: "py", Image: "Tiny"}},
		{"template memory", "/v1/templates", api.CreateTemplateRequest{Name: "py", MemoryMiB: 1}},
		{"template cpus", "/v1/templates", api.CreateTemplateRequest{Name: "py", CPUs: 65}},
		{"template env", "/v1/templates", api.CreateTemplateRequest{Name: "py", Env: map[string]string{"": "x"}}},
		{"empty setup", "/v1/templates", api.CreateTemplateRequest{Name: "py", Setup: []string{"true", ""}}},
		{"blank setup", "/v1/templates", api.CreateTemplateRequest{Name: "py", Setup: []string{" \t"}}},
		{"setup with NUL", "/v1/templates", api.CreateTemplateRequest{Name: "py", Setup: []string{"a\x00b"}}},
		{"negative pool", "/v1/templates", api.CreateTemplateRequest{Name: "py", Pool: -1}},
		{"pool too large", "/v1/templates", api.CreateTemplateRequest{Name: "py", Pool: 65}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			wantError(t, e.doJSON("POST", tc.path, tc.body), 400, api.CodeInvalid)
		})
	}
	for _, q := range []string{"", "?path=", "?path=relative", "?path=/a%00b"} {
		wantError(t, e.do("GET", "/v1/sessions/s1/files/stat"+q, nil), 400, api.CodeInvalid)
	}
	wantError(t, e.do("PUT", "/v1/sessions/s1/files?path=/x&mode=0999", strings.NewReader("")), 400, api.CodeInvalid)
	wantError(t, e.do("POST", "/v1/images/Bad!/build", nil), 400, api.CodeInvalid)
	wantError(t, e.do("GET", "/v1/templates/Bad!", nil), 400, api.CodeInvalid)
	wantError(t, e.do("DELETE", "/v1/templates/Bad!", nil), 400, api.CodeInvalid)
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("session manager called %d times", n)
	}
	// Zero values are the defaults, and an empty body is {}.
	decode[api.Session](t, e.do("POST", "/v1/sessions", nil), 201)
	// The limits themselves pass.
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{IdleTimeout: "0s"}), 201)
	decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: strings.Repeat("a", 64), Pool: 64}), 201)
	decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "0.a_b-c"}), 201)
}

func TestUnknownSessionAndRoutes(t *testing.T) {
	e := newEnv(t)
	wantError(t, e.do("GET", "/v1/sessions/nope", nil), 404, api.CodeNotFound)
	wantError(t, e.do("DELETE", "/v1/sessions/nope", nil), 404, api.CodeNotFound)
	wantError(t, e.doJSON("POST", "/v1/sessions/nope/exec", api.ExecRequest{Argv: []string{"true"}}), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/sessions/nope/files?path=/x", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/no-such-route", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/sessions/s1/nope", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/nope", nil, "Authorization", ""), 404, api.CodeNotFound)

	resp := e.do("PATCH", "/v1/sessions/s1", nil)
	wantError(t, resp, 405, codeMethodNotAllowed)
	if got := resp.Header.Get("Allow"); got != "GET, DELETE" {
		t.Errorf("Allow %q, want %q", got, "GET, DELETE")
	}
	wantError(t, e.do("DELETE", "/v1/sessions", nil), 405, codeMethodNotAllowed)
	// A wrong method under /v1 still needs the token.
	wantError(t, e.do("PATCH", "/v1/sessions/s1", nil, "Authorization", ""), 401, api.CodeUnauthorized)
}

func TestInternalErrorsKeepHostDetailsInTheLog(t *testing.T) {
	e := newEnv(t)
	e.fake.setCreate(func() error {
		return errors.New("session: create: mkdir /var/lib/cove/sessions/s9: permission denied")
	})
	body := wantError(t, e.do("POST", "/v1/sessions", strings.NewReader(`{}`)), 500, api.CodeInternal)
	if strings.Contains(body.Message, "/var/lib") || !strings.Contains(body.Message, "session.create") {
		t.Errorf("message %q: want the operation and no host path", body.Message)
	}
	e.logs.waitFor(t, "/var/lib/cove/sessions/s9")
	// Errors with a code pass through with their message.
	e.fake.setCreate(func() error { return api.Errorf(api.CodeUnavailable, "no capacity") })
	if m := wantError(t, e.do("POST", "/v1/sessions", nil), 503, api.CodeUnavailable).Message; m != "no capacity" {
		t.Errorf("message %q", m)
	}
}

func TestSessionsCRUD(t *testing.T) {
	e := newEnv(t)
	s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{Image: "tiny", MemoryMiB: 64, CPUs: 2}), 201)
	if s.ID == "" || s.Image != "tiny" {
		t.Fatalf("created %+v", s)
	}
	list := decode[sessionList](t, e.do("GET", "/v1/sessions", nil), 200)
	if len(list.Sessions) != 2 {
		t.Fatalf("list %+v", list)
	}
	if got := decode[api.Session](t, e.do("GET", "/v1/sessions/"+s.ID, nil), 200); got.ID != s.ID {
		t.Fatalf("get %+v", got)
	}
	if resp := e.do("DELETE", "/v1/sessions/"+s.ID, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	wantError(t, e.do("GET", "/v1/sessions/"+s.ID, nil), 404, api.CodeNotFound)
}

func TestRequestsAreLogged(t *testing.T) {
	e := newEnv(t)
	e.do("GET", "/v1/sessions/s1?path=/x", nil)
	log := e.logs.waitFor(t, "path=/v1/sessions/s1")
	for _, want := range []string{"method=GET", "path=/v1/sessions/s1", "status=200", "duration=", "action.verb=session.get", "action.session=s1"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, testToken) {
		t.Errorf("the token is in the log")
	}
}
