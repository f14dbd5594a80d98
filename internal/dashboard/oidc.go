package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// OIDCCookieName is the short-lived cookie of a sign-in under way with an
// OpenID Connect issuer: its state, nonce and PKCE verifier, sealed.
const OIDCCookieName = "cove_dashboard_oidc"

// oidcFlowTTL is how long a sign-in at the issuer may take.
const oidcFlowTTL = 10 * time.Minute

// CallbackPath is where the issuer sends the browser back with a code:
// register ORIGIN + CallbackPath as a redirect URI of the client.
const CallbackPath = "/dash/oidc/callback"

// oidcFlow is what OIDCCookieName holds, sealed.
type oidcFlow struct {
	Issuer   string    `json:"iss"`
	State    string    `json:"state"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Expires  time.Time `json:"exp"`
}

// flowAD binds a sealed flow cookie to its use: a sign-in cookie cannot
// pass for one, nor the other way round.
var flowAD = []byte("cove dashboard oidc flow v1")

// oidcClients discovers each issuer once (its authorization and token
// endpoints), on its first sign-in.
type oidcClients struct {
	issuers []identity.OIDCIssuer
	client  *http.Client

	mu        sync.Mutex
	endpoints map[string]oauth2.Endpoint // by issuer URL; guarded by mu
	offline   map[string]bool            // issuers that list offline_access; guarded by mu
}

func (o *oidcClients) find(u string) (identity.OIDCIssuer, bool) {
	if u == "" && len(o.issuers) == 1 {
		return o.issuers[0], true
	}
	for _, is := range o.issuers {
		if is.URL == u {
			return is, true
		}
	}
	return identity.OIDCIssuer{}, false
}

func (o *oidcClients) endpoint(ctx context.Context, is identity.OIDCIssuer) (oauth2.Endpoint, error) {
	o.mu.Lock()
	e, ok := o.endpoints[is.URL]
	o.mu.Unlock()
	if ok {
		return e, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, o.client), is.URL)
	if err != nil {
		return oauth2.Endpoint{}, fmt.Errorf("discover %s: %w", is.URL, err)
	}
	e = p.Endpoint()
	e.AuthStyle = oauth2.AuthStyleInParams // a public client: no secret
	// A refresh token is asked for (scope offline_access) only of an
	// issuer that says it knows the scope: some refuse a scope they do
	// not list.
	var meta struct {
		Scopes []string `json:"scopes_supported"`
	}
	_ = p.Claims(&meta)
	o.mu.Lock()
	o.endpoints[is.URL] = e
	if o.offline == nil {
		o.offline = map[string]bool{}
	}
	o.offline[is.URL] = slices.Contains(meta.Scopes, oidc.ScopeOfflineAccess)
	o.mu.Unlock()
	return e, nil
}

func (o *oidcClients) config(e oauth2.Endpoint, is identity.OIDCIssuer, r *http.Request) *oauth2.Config {
	scopes := []string{oidc.ScopeOpenID, "profile", "email"}
	o.mu.Lock()
	if o.offline[is.URL] {
		scopes = append(scopes, oidc.ScopeOfflineAccess)
	}
	o.mu.Unlock()
	return &oauth2.Config{ClientID: is.ClientID, Endpoint: e, RedirectURL: origin(r) + CallbackPath, Scopes: scopes}
}

func origin(r *http.Request) string {
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// oidcIssuerInfo is one entry of GET /dash/oidc: an issuer the sign-in
// form offers, and where its sign-in starts.
type oidcIssuerInfo struct {
	Issuer string `json:"issuer"`
	Start  string `json:"start"`
}

// oidcList answers GET /dash/oidc: the configured issuers.
func (h *Handler) oidcList(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if !methodAllowed(w, r, "GET only", http.MethodGet) {
		return
	}
	list := []oidcIssuerInfo{}
	for _, is := range h.oidc.issuers {
		list = append(list, oidcIssuerInfo{Issuer: is.URL, Start: "/dash/oidc/start?issuer=" + url.QueryEscape(is.URL)})
	}
	writeJSONBody(w, http.StatusOK, list)
}

// oidcStart answers GET /dash/oidc/start?issuer=URL: it sets the flow
// cookie and sends the browser to the issuer's authorization endpoint
// (authorization code with PKCE, S256).
func (h *Handler) oidcStart(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if !methodAllowed(w, r, "GET only", http.MethodGet) {
		return
	}
	is, ok := h.oidc.find(r.URL.Query().Get("issuer"))
	if !ok {
		h.signInFailed(w, r, http.StatusBadRequest, fmt.Sprintf("no OpenID Connect issuer %q is configured (cove server --oidc-issuer)", r.URL.Query().Get("issuer")))
		return
	}
	e, err := h.oidc.endpoint(r.Context(), is)
	if err != nil {
		h.log.Warn("dashboard: oidc discovery", "issuer", is.URL, "err", err)
		h.signInFailed(w, r, http.StatusBadGateway, "the issuer "+is.URL+" cannot be reached: "+err.Error())
		return
	}
	f := oidcFlow{Issuer: is.URL, State: rand.Text(), Nonce: rand.Text(), Verifier: oauth2.GenerateVerifier(),
		Expires: h.now().Add(oidcFlowTTL).Truncate(time.Second)}
	value, err := h.seal.sealAs(f, flowAD)
	if err != nil {
		h.signInFailed(w, r, http.StatusInternalServerError, "sealing the sign-in's cookie failed")
		return
	}
	// Lax, not Strict: the issuer's redirect back to the callback is a
	// navigation from another site, which must carry this cookie.
	http.SetCookie(w, &http.Cookie{Name: OIDCCookieName, Value: value, Path: "/dash/oidc/", Expires: f.Expires,
		MaxAge: int(oidcFlowTTL / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	to := h.oidc.config(e, is, r).AuthCodeURL(f.State, oauth2.S256ChallengeOption(f.Verifier), oidc.Nonce(f.Nonce))
	http.Redirect(w, r, to, http.StatusFound)
}

// oidcCallback answers GET /dash/oidc/callback?code&state: the state must
// be the flow cookie's; the code is exchanged (with the PKCE verifier) for
// an ID token, which the API's gate verifies (GET /v1/whoami, the same
// verifier as for 'cove login' tokens) and whose nonce must be the
// cookie's. The sign-in cookie then seals that ID token, and lasts as long
// as it: the API sees the same principal and policy as for the CLI.
func (h *Handler) oidcCallback(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if !methodAllowed(w, r, "GET only", http.MethodGet) {
		return
	}
	hc, err := r.Cookie(OIDCCookieName)
	if err != nil {
		h.signInFailed(w, r, http.StatusBadRequest, "no sign-in is under way in this browser: sign in again")
		return
	}
	// A flow cookie works once.
	http.SetCookie(w, &http.Cookie{Name: OIDCCookieName, Value: "", Path: "/dash/oidc/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	var f oidcFlow
	if err := h.seal.openAs(hc.Value, flowAD, &f); err != nil || !h.now().Before(f.Expires) {
		h.signInFailed(w, r, http.StatusBadRequest, "the sign-in took too long: sign in again")
		return
	}
	q := r.URL.Query()
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(f.State)) != 1 {
		h.signInFailed(w, r, http.StatusBadRequest, "the issuer's answer is not for this browser's sign-in (state): sign in again")
		return
	}
	if e := q.Get("error"); e != "" {
		msg := "the issuer refused the sign-in: " + e
		if d := q.Get("error_description"); d != "" {
			msg += ": " + d
		}
		h.signInFailed(w, r, http.StatusUnauthorized, msg)
		return
	}
	is, ok := h.oidc.find(f.Issuer)
	if !ok {
		h.signInFailed(w, r, http.StatusBadRequest, "the issuer "+f.Issuer+" is no longer configured")
		return
	}
	e, err := h.oidc.endpoint(r.Context(), is)
	if err != nil {
		h.signInFailed(w, r, http.StatusBadGateway, "the issuer "+is.URL+" cannot be reached: "+err.Error())
		return
	}
	tok, err := h.oidc.config(e, is, r).Exchange(oidc.ClientContext(r.Context(), h.oidc.client), q.Get("code"), oauth2.VerifierOption(f.Verifier))
	if err != nil {
		h.log.Warn("dashboard: oidc code exchange", "issuer", is.URL, "err", err)
		h.signInFailed(w, r, http.StatusBadGateway, "the issuer did not exchange the code: "+err.Error())
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		h.signInFailed(w, r, http.StatusBadGateway, "the issuer's answer has no ID token")
		return
	}
	who, status, body := h.whoAmI(r.Context(), r, raw)
	if status != http.StatusOK {
		msg := fmt.Sprintf("the server refused the ID token (%d)", status)
		var er api.ErrorResponse
		if json.Unmarshal(body, &er) == nil && er.Error.Message != "" {
			msg = "the server refused the ID token: " + er.Error.Message
		}
		h.log.Info("dashboard: oidc sign-in refused", "status", status, "issuer", is.URL)
		h.signInFailed(w, r, status, msg)
		return
	}
	// The gate checked the signature, issuer, audience and expiry; the
	// nonce ties the token to this browser's request.
	claims, err := unverifiedClaims(raw)
	if err != nil || subtle.ConstantTimeCompare([]byte(claims.Nonce), []byte(f.Nonce)) != 1 {
		h.signInFailed(w, r, http.StatusUnauthorized, "the ID token is not for this sign-in (nonce): sign in again")
		return
	}
	until := h.now().Add(h.maxAge).Truncate(time.Second)
	c := cookie{ID: rand.Text(), Token: raw, Expires: tokenExpiry(claims, until), Issuer: is.URL}
	if tok.RefreshToken != "" {
		c.Refresh, c.Until = tok.RefreshToken, until
	}
	if err := h.setCookie(w, r, c); err != nil {
		h.signInFailed(w, r, http.StatusInternalServerError, "sealing the cookie failed")
		return
	}
	h.log.Info("dashboard: signed in", "kind", who.Kind, "user", userName(who), "issuer", is.URL)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// tokenExpiry is when a sign-in on an ID token with claims ends: the
// token's expiry, or until if that comes first.
func tokenExpiry(claims idClaims, until time.Time) time.Time {
	if t := time.Unix(claims.Expiry, 0); claims.Expiry > 0 && t.Before(until) {
		return t
	}
	return until
}

// setCookie seals c into the sign-in cookie. The browser keeps it until
// c.Expires, or c.Until when the ID token in it can be renewed.
func (h *Handler) setCookie(w http.ResponseWriter, r *http.Request, c cookie) error {
	value, err := h.seal.seal(c)
	if err != nil {
		return err
	}
	keep := c.Expires
	if c.Refresh != "" && c.Until.After(keep) {
		keep = c.Until
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: value, Path: "/", Expires: keep,
		MaxAge: int(keep.Sub(h.now()) / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	return nil
}

// errOIDCExpired says an OpenID Connect sign-in ended with its ID token,
// which its issuer gave no refresh token to renew.
var errOIDCExpired = errors.New("signed out: the identity provider's sign-in expired")

// renewed is a refresh's outcome, kept a minute for the requests that
// carried the old cookie at the same time (a refresh token is used once).
type renewed struct {
	done chan struct{}
	c    cookie
	err  error
	at   time.Time
}

// renew has the issuer renew the expired ID token of c with its refresh
// token, the API's gate verify the new one (as at sign-in), and sets the
// new cookie on w; the sign-in keeps its ID (and so its CSRF token). One
// renewal runs per sign-in: requests that come with the same expired
// cookie meanwhile get its outcome.
func (h *Handler) renew(w http.ResponseWriter, r *http.Request, c cookie) (cookie, error) {
	h.mu.Lock()
	if h.renewals == nil {
		h.renewals = map[string]*renewed{}
	}
	for id, x := range h.renewals {
		if !x.at.IsZero() && h.now().Sub(x.at) > time.Minute {
			delete(h.renewals, id)
		}
	}
	x, running := h.renewals[c.ID]
	if !running {
		x = &renewed{done: make(chan struct{})}
		h.renewals[c.ID] = x
	}
	h.mu.Unlock()
	if !running {
		x.c, x.err = h.renewToken(r, c)
		h.mu.Lock()
		x.at = h.now()
		h.mu.Unlock()
		close(x.done)
	} else {
		select {
		case <-x.done:
		case <-r.Context().Done():
			return cookie{}, r.Context().Err()
		}
	}
	if x.err != nil {
		return cookie{}, x.err
	}
	if err := h.setCookie(w, r, x.c); err != nil {
		return cookie{}, err
	}
	return x.c, nil
}

func (h *Handler) renewToken(r *http.Request, c cookie) (cookie, error) {
	fail := func(why string) (cookie, error) {
		h.log.Info("dashboard: oidc sign-in not renewed", "issuer", c.Issuer, "reason", why)
		return cookie{}, errors.New("signed out: the identity provider did not renew the sign-in (" + why + ")")
	}
	is, ok := h.oidc.find(c.Issuer)
	if !ok || c.Issuer == "" {
		return fail("the issuer " + c.Issuer + " is no longer configured")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	e, err := h.oidc.endpoint(ctx, is)
	if err != nil {
		return fail(err.Error())
	}
	ts := h.oidc.config(e, is, r).TokenSource(oidc.ClientContext(ctx, h.oidc.client), &oauth2.Token{RefreshToken: c.Refresh})
	tok, err := ts.Token()
	if err != nil {
		return fail(err.Error())
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return fail("its answer has no ID token")
	}
	if _, status, _ := h.whoAmI(ctx, r, raw); status != http.StatusOK {
		return fail(fmt.Sprintf("the server refused the new ID token (%d)", status))
	}
	claims, err := unverifiedClaims(raw)
	if err != nil {
		return fail(err.Error())
	}
	n := cookie{ID: c.ID, Token: raw, Expires: tokenExpiry(claims, c.Until), Refresh: c.Refresh, Issuer: c.Issuer, Until: c.Until}
	if tok.RefreshToken != "" {
		n.Refresh = tok.RefreshToken // rotated
	}
	h.log.Info("dashboard: oidc sign-in renewed", "issuer", c.Issuer, "until", n.Expires)
	return n, nil
}

// idClaims are the claims the callback reads from an ID token the API
// already verified.
type idClaims struct {
	Nonce  string `json:"nonce"`
	Expiry int64  `json:"exp"`
}

func unverifiedClaims(raw string) (idClaims, error) {
	var c idClaims
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return c, errors.New("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c, fmt.Errorf("JWT payload: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("JWT payload: %w", err)
	}
	return c, nil
}

// signInFailed sends the browser back to the page's sign-in form, which
// shows msg; status goes in the log only (a redirect has none of its own).
func (h *Handler) signInFailed(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h.log.Info("dashboard: oidc sign-in failed", "status", status, "reason", msg)
	http.Redirect(w, r, "/#signin-error="+url.QueryEscape(msg), http.StatusSeeOther)
}
