package dashboard_test

// These tests hold the dashboard's own promises at its seam with the
// API: which requests reach the API's handler, with which credential.
// The API behind it here is a plain handler that knows one token and
// records what it was asked; the real API server, policy and browser are
// the end-to-end test's (cmd/cove, TestDashboard).

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/dashboard"
)

const goodToken = "cove_good"

// apiStub answers GET /v1/whoami for goodToken (401 otherwise) and
// records every other request it gets.
type apiStub struct {
	mu   sync.Mutex
	seen []*http.Request // guarded by mu
}

func (a *apiStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/whoami" {
		if r.Header.Get("Authorization") != "Bearer "+goodToken {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeUnauthorized, Message: "invalid bearer token: unknown token"}})
			return
		}
		_ = json.NewEncoder(w).Encode(api.WhoAmI{Kind: "user", User: &api.User{Name: "alice"}, Scopes: []string{}})
		return
	}
	a.mu.Lock()
	a.seen = append(a.seen, r)
	a.mu.Unlock()
	w.WriteHeader(http.StatusTeapot)
}

func (a *apiStub) last(t *testing.T) *http.Request {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		t.Fatal("the API got no request")
	}
	r := a.seen[len(a.seen)-1]
	a.seen = nil
	return r
}

func (a *apiStub) none(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) != 0 {
		t.Fatalf("the API got %s %s, want nothing passed on", a.seen[0].Method, a.seen[0].URL)
	}
}

var built = fstest.MapFS{
	"index.html": {Data: []byte("<!doctype html><title>cove</title>")},
	"app.js":     {Data: []byte("console.log(1)")},
	"app.css":    {Data: []byte("body{}")},
	"xterm.css":  {Data: []byte(".xterm{}")},
}

type fixture struct {
	h     *dashboard.Handler
	api   *apiStub
	clock time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{api: &apiStub{}, clock: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	h, err := dashboard.New(dashboard.Config{API: f.api, Key: []byte(strings.Repeat("k", 32)), Assets: built,
		MaxAge: time.Hour, Now: func() time.Time { return f.clock }})
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	return f
}

const host = "cove.test:7070"
const origin = "http://" + host

func (f *fixture) do(r *http.Request) *httptest.ResponseRecorder {
	r.Host = host
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

// signIn posts token and returns the answer, its cookie (nil if none) and
// its CSRF token.
func (f *fixture) signIn(t *testing.T, token string, hdr map[string]string) (*httptest.ResponseRecorder, *http.Cookie, string) {
	t.Helper()
	r := httptest.NewRequest("POST", "/dash/signin", strings.NewReader(url.Values{"token": {token}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", origin)
	for k, v := range hdr {
		if v == "" {
			r.Header.Del(k)
		} else {
			r.Header.Set(k, v)
		}
	}
	w := f.do(r)
	var c *http.Cookie
	for _, ck := range w.Result().Cookies() {
		if ck.Name == dashboard.CookieName {
			c = ck
		}
	}
	var body struct {
		CSRF string `json:"csrf"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return w, c, body.CSRF
}

func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int, msg string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if msg != "" && !strings.Contains(w.Body.String(), msg) {
		t.Fatalf("body %s, want it to say %q", w.Body, msg)
	}
}

func TestPageHeaders(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/", "/dash/assets/app.js", "/dash/assets/xterm.css", "/dash/me", "/dash/assets/nope.js"} {
		w := f.do(httptest.NewRequest("GET", p, nil))
		csp := w.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: Content-Security-Policy %q, want scripts and everything else from this origin only", p, csp)
		}
		if strings.Contains(csp, "unsafe-eval") || strings.Contains(strings.SplitN(strings.SplitN(csp, "script-src", 2)[1], ";", 2)[0], "unsafe-inline") {
			t.Errorf("%s: Content-Security-Policy %q allows inline or eval'd scripts", p, csp)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
			if got := w.Header().Get(k); got != v {
				t.Errorf("%s: %s %q, want %q", p, k, got, v)
			}
		}
	}
	if w := f.do(httptest.NewRequest("GET", "/", nil)); w.Code != 200 || !strings.Contains(w.Body.String(), "<title>cove</title>") {
		t.Fatalf("GET /: %d %s", w.Code, w.Body)
	}
	if w := f.do(httptest.NewRequest("GET", "/dash/assets/app.js", nil)); w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), "javascript") {
		t.Fatalf("GET app.js: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	wantStatus(t, f.do(httptest.NewRequest("GET", "/dash/assets/../index.html", nil)), 404, "")
	// Everything else is the API's, as it was.
	f.do(httptest.NewRequest("GET", "/metrics", nil))
	if r := f.api.last(t); r.URL.Path != "/metrics" {
		t.Fatalf("the API got %s", r.URL.Path)
	}
}

func TestNotBuiltSaysMakeBuild(t *testing.T) {
	h, err := dashboard.New(dashboard.Config{API: &apiStub{}, Key: []byte(strings.Repeat("k", 32)),
		Assets: fstest.MapFS{"NOT-BUILT.txt": {Data: []byte("x")}}})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	wantStatus(t, w, http.StatusServiceUnavailable, "make build")
}

func TestSignInCookie(t *testing.T) {
	f := newFixture(t)
	w, c, csrf := f.signIn(t, goodToken, nil)
	wantStatus(t, w, 200, `"name":"alice"`)
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Fatalf("cookie %+v, want HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP", c)
	}
	if strings.Contains(c.Value, goodToken) || csrf == "" {
		t.Fatalf("cookie %q shows the token, or no CSRF token (%q)", c.Value, csrf)
	}

	// Over TLS the cookie is Secure.
	r := httptest.NewRequest("POST", "/dash/signin", strings.NewReader("token="+goodToken))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "https://"+host)
	r.TLS = &tls.ConnectionState{}
	w = f.do(r)
	wantStatus(t, w, 200, "")
	if cs := w.Result().Cookies(); len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("over TLS: cookies %+v, want one Secure", cs)
	}
}

func TestSignInRefusals(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name   string
		token  string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"unknown token", "cove_bad", nil, 401, "unknown token"},
		{"empty token", " ", nil, 400, "token is empty"},
		{"no Origin", goodToken, map[string]string{"Origin": ""}, 403, "another origin"},
		{"other origin", goodToken, map[string]string{"Origin": "http://evil.test"}, 403, "another origin"},
	} {
		w, c, _ := f.signIn(t, tc.token, tc.hdr)
		if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.msg) || c != nil {
			t.Errorf("%s: %d %s cookie %v, want %d saying %q and no cookie", tc.name, w.Code, w.Body, c, tc.status, tc.msg)
		}
	}
}

func TestCookieBecomesBearer(t *testing.T) {
	f := newFixture(t)
	_, c, csrf := f.signIn(t, goodToken, nil)

	r := httptest.NewRequest("GET", "/v1/sessions", nil)
	r.AddCookie(c)
	wantStatus(t, f.do(r), http.StatusTeapot, "")
	got := f.api.last(t)
	if got.Header.Get("Authorization") != "Bearer "+goodToken || got.Header.Get("Cookie") != "" {
		t.Fatalf("the API got Authorization %q Cookie %q, want the cookie's token alone", got.Header.Get("Authorization"), got.Header.Get("Cookie"))
	}

	// A request with its own Authorization goes as it is, cookie or not.
	r = httptest.NewRequest("POST", "/v1/sessions", nil)
	r.AddCookie(c)
	r.Header.Set("Authorization", "Bearer other")
	f.do(r)
	if got := f.api.last(t); got.Header.Get("Authorization") != "Bearer other" {
		t.Fatalf("the API got Authorization %q, want the request's own", got.Header.Get("Authorization"))
	}

	// Without a cookie the API answers (its 401).
	f.do(httptest.NewRequest("GET", "/v1/sessions", nil))
	if got := f.api.last(t); got.Header.Get("Authorization") != "" {
		t.Fatalf("the API got Authorization %q from nowhere", got.Header.Get("Authorization"))
	}

	// A change needs the CSRF token.
	for _, tc := range []struct{ name, csrf, msg string }{
		{"no CSRF token", "", "missing X-Cove-CSRF"},
		{"wrong CSRF token", csrf + "x", "wrong X-Cove-CSRF"},
	} {
		r = httptest.NewRequest("POST", "/v1/sessions/s1/park", nil)
		r.AddCookie(c)
		if tc.csrf != "" {
			r.Header.Set(dashboard.CSRFHeader, tc.csrf)
		}
		wantStatus(t, f.do(r), 403, tc.msg)
		f.api.none(t)
	}
	r = httptest.NewRequest("POST", "/v1/sessions/s1/park", nil)
	r.AddCookie(c)
	r.Header.Set(dashboard.CSRFHeader, csrf)
	r.Header.Set("Origin", origin)
	wantStatus(t, f.do(r), http.StatusTeapot, "")
	if got := f.api.last(t); got.Header.Get(dashboard.CSRFHeader) != "" {
		t.Fatal("the CSRF token reached the API")
	}

	// Another origin's request is refused even with the token.
	r = httptest.NewRequest("POST", "/v1/sessions/s1/park", nil)
	r.AddCookie(c)
	r.Header.Set(dashboard.CSRFHeader, csrf)
	r.Header.Set("Origin", "http://evil.test")
	wantStatus(t, f.do(r), 403, "evil.test")
	f.api.none(t)
}

func TestWebSocketOrigin(t *testing.T) {
	f := newFixture(t)
	_, c, _ := f.signIn(t, goodToken, nil)
	ws := func(origin string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/v1/sessions/s1/exec/ws", nil)
		r.AddCookie(c)
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Connection", "Upgrade")
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		return f.do(r)
	}
	wantStatus(t, ws("http://evil.test"), 403, "not this server's")
	f.api.none(t)
	wantStatus(t, ws("http://"+host+".evil.test"), 403, "not this server's")
	f.api.none(t)
	wantStatus(t, ws(""), 403, "must carry an Origin")
	f.api.none(t)
	wantStatus(t, ws(origin), http.StatusTeapot, "")
	if got := f.api.last(t); got.Header.Get("Authorization") != "Bearer "+goodToken {
		t.Fatalf("the API got Authorization %q", got.Header.Get("Authorization"))
	}
}

func TestSignOutAndExpiry(t *testing.T) {
	f := newFixture(t)
	_, c, csrf := f.signIn(t, goodToken, nil)
	me := func(c *http.Cookie) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/dash/me", nil)
		if c != nil {
			r.AddCookie(c)
		}
		return f.do(r)
	}
	wantStatus(t, me(c), 200, csrf)
	wantStatus(t, me(nil), 401, "not signed in")

	// A sign-out without the CSRF token is refused and signs nothing out.
	r := httptest.NewRequest("POST", "/dash/signout", nil)
	r.AddCookie(c)
	wantStatus(t, f.do(r), 403, "")
	wantStatus(t, me(c), 200, "")

	r = httptest.NewRequest("POST", "/dash/signout", nil)
	r.AddCookie(c)
	r.Header.Set(dashboard.CSRFHeader, csrf)
	w := f.do(r)
	wantStatus(t, w, http.StatusNoContent, "")
	if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 {
		t.Fatalf("sign-out cookies %+v, want the cookie cleared", cs)
	}
	// The old cookie, replayed, signs in no more.
	wantStatus(t, me(c), 401, "signed out")
	r = httptest.NewRequest("GET", "/v1/sessions", nil)
	r.AddCookie(c)
	wantStatus(t, f.do(r), 401, "signed out")
	f.api.none(t)

	// A sign-in past its age is refused, and so is a cookie changed by hand.
	_, c, _ = f.signIn(t, goodToken, nil)
	wantStatus(t, me(&http.Cookie{Name: c.Name, Value: c.Value[:len(c.Value)-2] + "AA"}), 401, "expired")
	f.clock = f.clock.Add(time.Hour)
	wantStatus(t, me(c), 401, "expired")
}
