package main

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/browsertest"
	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/oidctest"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
)

// TestDashboardOIDCSignIn: in Debian's headless chromium, the sign-in
// form offers the configured issuer; its link goes to the issuer (a real
// OpenID provider on loopback, whose login step signs in alice) and back,
// and the page is then signed in as alice, whom the API made at this
// first sign-in. No VM: the API's sessions are the store's records.
func TestDashboardOIDCSignIn(t *testing.T) {
	bin := browsertest.Chromium(t)
	if !dashboard.Built(dashboard.Embedded()) {
		testenv.Skipf(t, "%s", dashboard.NotBuilt)
	}
	p, err := oidctest.New(oidctest.Config{RedirectURIs: []string{"http://127.0.0.1" + dashboard.CallbackPath}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.AddUser(oidctest.User{Subject: "sub-alice", PreferredUsername: "alice", Email: "alice@example.com"})
	p.SetLoginUser("sub-alice")

	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pol := filepath.Join(t.TempDir(), "policy.cedar")
	if err := os.WriteFile(pol, policy.Default(), 0o600); err != nil {
		t.Fatal(err)
	}
	eng := policy.New()
	if err := eng.Load(t.Context(), pol); err != nil {
		t.Fatal(err)
	}
	issuers, err := parseOIDCIssuers([]string{p.URL + "=" + p.ClientID})
	if err != nil {
		t.Fatal(err)
	}
	oidc, err := newServerOIDC(t.Context(), issuers, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	apiH := apiserver.New(apiserver.Config{
		Sessions:      storeSessions{st: st},
		Token:         testToken,
		Identities:    &identity.Directory{Store: st},
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st, JWT: oidc.verifiers}),
		Authorize:     (&apiserver.PolicyGate{Policy: eng, Records: st}).Authorize,
		SignIn:        oidc.signIn,
	}).Handler()
	h, err := newDashboard(t.TempDir(), apiH, issuers, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	ctx := browsertest.Tab(t, bin, "")
	wait := func(what, expr string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
				t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	wait("the issuer's link", `!document.getElementById('signin-oidc').hidden && document.querySelector('#signin-oidc-list a').textContent.includes(`+jsString(p.URL)+`)`)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#signin-oidc-list a`))); err != nil {
		t.Fatalf("follow the issuer's link: %v", err)
	}
	wait("signed in as alice", `!document.getElementById('view-list').hidden && document.getElementById('who').textContent === 'Signed in as alice'`)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(filepath.Join(t.ArtifactDir(), "oidc-signedin.png"), png, 0o644)
	}
	if err != nil {
		t.Errorf("screenshot: %v", err)
	}
	// The page's API calls act as alice: the list is hers (empty), not
	// refused.
	status, err := chromedp.Run(ctx, chromedp.Evaluate[int](`fetch('/v1/sessions').then(r => r.status)`, chromedp.EvalAwaitPromise))
	if err != nil || status != 200 {
		t.Fatalf("GET /v1/sessions with the OIDC cookie: %d %v, want 200", status, err)
	}
	if u, err := st.GetUserByName(t.Context(), "alice"); err != nil || u.Subject != "sub-alice" {
		t.Fatalf("alice in the store: %+v %v, want the issuer's subject", u, err)
	}
	// A refusal at the issuer comes back to the form, saying why.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("signout"))); err != nil {
		t.Fatal(err)
	}
	wait("signed out", `!document.getElementById('view-signin').hidden`)
	p.SetLoginUser("")
	wait("the issuer's link again", `!document.getElementById('signin-oidc').hidden`)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#signin-oidc-list a`))); err != nil {
		t.Fatal(err)
	}
	wait("the refusal", `!document.getElementById('view-signin').hidden && document.getElementById('signin-error').textContent.includes('access_denied')`)
	if strings.Contains(mustEval[string](t, ctx, `location.href`), "signin-error") {
		t.Error("the error stays in the address bar")
	}
}

func jsString(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
}

func mustEval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}
