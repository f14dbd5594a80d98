package dashboard_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// oidcAPI is an API whose whoami verifies bearer tokens with the API's
// own OpenID Connect verifier (identity.OIDC over a real SQLite store),
// and which records the bearer token of every other request.
type oidcAPI struct {
	v *identity.OIDC

	mu      sync.Mutex
	bearers []string // guarded by mu
}

func (a *oidcAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	p, err := a.v.Verify(r.Context(), raw)
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeUnauthorized, Message: err.Error()}})
		return
	}
	if r.URL.Path == "/v1/whoami" {
		_ = json.NewEncoder(w).Encode(api.WhoAmI{Kind: "user", User: &api.User{Name: p.User.Name}, Scopes: []string{}})
		return
	}
	a.mu.Lock()
	a.bearers = append(a.bearers, p.User.Name)
	a.mu.Unlock()
	w.WriteHeader(http.StatusTeapot)
}

type oidcFixture struct {
	prov *oidctest.Provider
	api  *oidcAPI
	srv  *httptest.Server
}

func newOIDCFixture(t *testing.T) *oidcFixture {
	t.Helper()
	return newOIDCFixtureAt(t, time.Now)
}

func newOIDCFixtureAt(t *testing.T, now func() time.Time) *oidcFixture {
	t.Helper()
	prov, err := oidctest.New(oidctest.Config{ClientID: "cove-dash",
		RedirectURIs: []string{"http://127.0.0.1" + dashboard.CallbackPath}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prov.Close)
	prov.AddUser(oidctest.User{Subject: "sub-alice", PreferredUsername: "alice", Email: "alice@example.com"})
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	is := identity.OIDCIssuer{URL: prov.URL, ClientID: prov.ClientID}
	v, err := identity.NewOIDC(identity.OIDCConfig{Issuers: []identity.OIDCIssuer{is}, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	f := &oidcFixture{prov: prov, api: &oidcAPI{v: v}}
	h, err := dashboard.New(dashboard.Config{API: f.api, Key: []byte(strings.Repeat("k", 32)), Assets: built,
		OIDC: []identity.OIDCIssuer{is}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

// browser is an HTTP client with a cookie jar that follows redirects and
// remembers the last URL it was sent to (with its fragment).
type browser struct {
	c    *http.Client
	last *url.URL
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{}
	b.c = &http.Client{Jar: jar, CheckRedirect: func(r *http.Request, via []*http.Request) error {
		b.last = r.URL
		return nil
	}}
	return b
}

func (b *browser) get(t *testing.T, u string) *http.Response {
	t.Helper()
	b.last = nil
	resp, err := b.c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// signinError is the message a redirect to the sign-in form carries.
func (b *browser) signinError() string {
	if b.last == nil {
		return ""
	}
	q, _ := url.ParseQuery(b.last.Fragment)
	return q.Get("signin-error")
}

func (b *browser) me(t *testing.T, f *oidcFixture) (int, string) {
	t.Helper()
	resp, err := b.c.Get(f.srv.URL + "/dash/me")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var who struct {
		api.WhoAmI
		CSRF string `json:"csrf"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&who)
	if who.User == nil {
		return resp.StatusCode, ""
	}
	return resp.StatusCode, who.User.Name
}

// TestOIDCSignIn signs in through a real OpenID Connect provider over
// HTTP (authorization code with PKCE), and checks that the cookie then
// acts, at the API, as the user the provider signed in.
func TestOIDCSignIn(t *testing.T) {
	f := newOIDCFixture(t)
	resp, err := http.Get(f.srv.URL + "/dash/oidc")
	if err != nil {
		t.Fatal(err)
	}
	var list []struct{ Issuer, Start string }
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list) != 1 || list[0].Issuer != f.prov.URL || !strings.HasPrefix(list[0].Start, "/dash/oidc/start?issuer=") {
		t.Fatalf("GET /dash/oidc = %+v, want the one issuer %s", list, f.prov.URL)
	}

	f.prov.SetLoginUser("sub-alice")
	b := newBrowser(t)
	resp = b.get(t, f.srv.URL+list[0].Start)
	if resp.StatusCode != http.StatusOK || b.last == nil || b.last.Path != "/" || b.last.Fragment != "" {
		t.Fatalf("sign-in ended at %v (%d), want the page / with no error", b.last, resp.StatusCode)
	}
	if code, name := b.me(t, f); code != http.StatusOK || name != "alice" {
		t.Fatalf("/dash/me after the OIDC sign-in: %d %q, want 200 alice", code, name)
	}
	// The cookie is the ID token at the API: the same verifier, the
	// same user.
	resp = b.get(t, f.srv.URL+"/v1/sessions")
	if resp.StatusCode != http.StatusTeapot {
		t.Fatalf("GET /v1/sessions with the cookie: %d, want the API's answer", resp.StatusCode)
	}
	f.api.mu.Lock()
	got := f.api.bearers
	f.api.mu.Unlock()
	if len(got) != 1 || got[0] != "alice" {
		t.Fatalf("the API saw the users %q, want [alice]", got)
	}
	var flow *http.Cookie
	u, _ := url.Parse(f.srv.URL + "/dash/oidc/")
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == dashboard.OIDCCookieName {
			flow = c
		}
	}
	if flow != nil {
		t.Errorf("the flow cookie outlived its callback")
	}
}

// TestOIDCSignInRefusals: a provider that refuses, a callback of another
// browser's sign-in, and a replayed callback each go back to the sign-in
// form with a reason, and sign nobody in.
func TestOIDCSignInRefusals(t *testing.T) {
	f := newOIDCFixture(t)

	// The provider refuses (no user logs in).
	b := newBrowser(t)
	b.get(t, f.srv.URL+"/dash/oidc/start")
	if msg := b.signinError(); !strings.Contains(msg, "access_denied") {
		t.Fatalf("a refused sign-in ended at %v, want the form saying access_denied", b.last)
	}
	if code, _ := b.me(t, f); code != http.StatusUnauthorized {
		t.Fatalf("/dash/me after a refused sign-in: %d, want 401", code)
	}

	// An unknown issuer.
	b.get(t, f.srv.URL+"/dash/oidc/start?issuer="+url.QueryEscape("https://elsewhere.example"))
	if msg := b.signinError(); !strings.Contains(msg, "no OpenID Connect issuer") {
		t.Fatalf("an unknown issuer ended at %v, want the form saying so", b.last)
	}

	// A callback with no sign-in under way in this browser (another
	// browser's code, or login CSRF).
	b.get(t, f.srv.URL+dashboard.CallbackPath+"?code=x&state=y")
	if msg := b.signinError(); !strings.Contains(msg, "no sign-in is under way") {
		t.Fatalf("a stray callback ended at %v, want the form saying so", b.last)
	}

	// A callback whose state is not this browser's: record the real
	// callback, then replay it with another state.
	f.prov.SetLoginUser("sub-alice")
	var callback *url.URL
	b2 := newBrowser(t)
	b2.c.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if r.URL.Path == dashboard.CallbackPath {
			callback = r.URL
			return http.ErrUseLastResponse
		}
		return nil
	}
	b2.get(t, f.srv.URL+"/dash/oidc/start")
	if callback == nil {
		t.Fatal("the provider never sent the browser to the callback")
	}
	q := callback.Query()
	q.Set("state", "forged")
	bad := *callback
	bad.RawQuery = q.Encode()
	b3 := newBrowser(t)
	b3.c.Jar = b2.c.Jar
	b3.get(t, bad.String())
	if msg := b3.signinError(); !strings.Contains(msg, "state") {
		t.Fatalf("a forged state ended at %v, want the form saying so", b3.last)
	}
	// The flow cookie is spent: the genuine callback no longer signs in.
	b3.get(t, callback.String())
	if msg := b3.signinError(); !strings.Contains(msg, "no sign-in is under way") {
		t.Fatalf("a replayed callback ended at %v, want the form saying so", b3.last)
	}
	if code, _ := b3.me(t, f); code != http.StatusUnauthorized {
		t.Fatalf("/dash/me after refused callbacks: %d, want 401", code)
	}
}

// TestOIDCRenew: an OIDC sign-in whose ID token expired (the dashboard's
// clock moved past it) is renewed with the refresh token the issuer gave:
// the request goes on to the API as the same user, with a new cookie, and
// requests that come at once with the expired cookie share one renewal
// (the issuer spends a refresh token once). When the issuer cannot renew
// it, or the sign-in's 12 hours are over, the answer is 401 "signed out:
// …: sign in again", and the cookie is cleared.
func TestOIDCRenew(t *testing.T) {
	var skew atomic.Int64
	f := newOIDCFixtureAt(t, func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
	f.prov.SetLoginUser("sub-alice")
	b := newBrowser(t)
	b.get(t, f.srv.URL+"/dash/oidc/start")
	if code, name := b.me(t, f); code != http.StatusOK || name != "alice" {
		t.Fatalf("/dash/me after the OIDC sign-in: %d %q, want 200 alice", code, name)
	}
	u, _ := url.Parse(f.srv.URL + "/")
	value := func() string {
		for _, c := range b.c.Jar.Cookies(u) {
			if c.Name == dashboard.CookieName {
				return c.Value
			}
		}
		return ""
	}
	before := value()

	skew.Store(int64(2 * time.Hour)) // past the ID token's hour
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Go(func() {
			resp, err := b.c.Get(f.srv.URL + "/v1/sessions")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusTeapot {
			t.Fatalf("request %d with the expired ID token: %d, want the API's answer (renewed)", i, c)
		}
	}
	if after := value(); after == "" || after == before {
		t.Fatalf("the cookie after the renewal is the same (%v)", after == before)
	}
	if code, name := b.me(t, f); code != http.StatusOK || name != "alice" {
		t.Fatalf("/dash/me after the renewal: %d %q, want 200 alice", code, name)
	}

	// The issuer down: the next expiry cannot be renewed.
	f.prov.SetDown(true)
	skew.Store(int64(4 * time.Hour))
	resp, err := b.c.Get(f.srv.URL + "/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	var er api.ErrorResponse
	_ = json.NewDecoder(resp.Body).Decode(&er)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(er.Error.Message, "signed out: the identity provider did not renew the sign-in") ||
		!strings.HasSuffix(er.Error.Message, ": sign in again") || value() != "" {
		t.Fatalf("a renewal the issuer refuses: %d %q (cookie kept: %v), want 401 signed out … sign in again", resp.StatusCode, er.Error.Message, value() != "")
	}

	// Signed in again, and past the sign-in's 12 hours: no renewal.
	f.prov.SetDown(false)
	skew.Store(0)
	b.get(t, f.srv.URL+"/dash/oidc/start")
	if code, _ := b.me(t, f); code != http.StatusOK {
		t.Fatalf("signed in again: %d", code)
	}
	skew.Store(int64(13 * time.Hour))
	resp, err = b.c.Get(f.srv.URL + "/dash/me")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&er)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || er.Error.Message != "signed out: the identity provider's sign-in expired: sign in again" {
		t.Fatalf("past the sign-in's end: %d %q", resp.StatusCode, er.Error.Message)
	}
}
