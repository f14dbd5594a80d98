// Package dashboard serves cove's web dashboard at / on the API's address:
// the page and its assets (built from npm packages by 'make build' and
// embedded in the binary), sign-in with an API token or with an OpenID
// Connect issuer (authorization code with PKCE), and the translation of
// its cookie into the API's bearer token.
//
// The dashboard has no API of its own. Its script calls the JSON API under
// /v1 (and the exec WebSocket) with the sign-in cookie; Handler puts the
// token sealed in that cookie into the request's Authorization header and
// hands the request to the API's handler, whose gate then authenticates,
// authorizes (policy), audits and logs it exactly as a CLI request with
// that token. What a browser may see or do is thus what its token may.
//
// Invariants:
//   - A request that carries an Authorization header is passed on as it is:
//     the cookie never widens or changes what a bearer token does.
//   - A cookie request that changes something (any method but GET and
//     HEAD) carries the CSRF token (header X-Cove-CSRF), an HMAC of the
//     cookie's id that only a page of this origin could read (GET
//     /dash/me); a cookie request with an Origin header names this origin;
//     a cookie WebSocket upgrade must have one.
//   - Every answer of the dashboard's own routes carries a
//     Content-Security-Policy that allows scripts from this origin only
//     (no inline script) and connections to this origin only.
package dashboard

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// CookieName is the sign-in cookie.
const CookieName = "cove_dashboard"

// CSRFHeader carries the CSRF token on the cookie requests that change
// something.
const CSRFHeader = "X-Cove-CSRF"

// DefaultMaxAge is how long a sign-in lasts when Config.MaxAge is 0.
const DefaultMaxAge = 12 * time.Hour

// maxTokenBytes bounds the token a sign-in form may post.
const maxTokenBytes = 8 << 10

// CSP is the Content-Security-Policy of every page and asset. Scripts
// and connections: this origin only ('self' covers ws: to it), never
// inline. Styles allow inline ones: xterm.js's DOM renderer writes the
// terminal's theme and cell sizes into <style> elements it creates.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
	"img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; " +
	"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

// Config wires a Handler.
type Config struct {
	// API is the handler of cove's API; every request that is not the
	// dashboard's own goes to it.
	API http.Handler
	// Key seals the sign-in cookie and derives the CSRF tokens; at least
	// 32 bytes. Keep it across restarts to keep sign-ins
	// ($COVE_HOME/dashboard.key in cove server).
	Key []byte
	// MaxAge is how long a sign-in lasts; 0: DefaultMaxAge.
	MaxAge time.Duration
	// Assets holds index.html and the built assets; nil: those embedded
	// in the binary (Embedded).
	Assets fs.FS
	// Log receives sign-ins, sign-outs and refusals; nil discards.
	Log *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// OIDC are the OpenID Connect issuers the sign-in form offers
	// (authorization code with PKCE); the API must accept their ID tokens
	// (cove server's --oidc-issuer configures both).
	OIDC []identity.OIDCIssuer
	// HTTPClient reaches the issuers (discovery, token endpoint); nil: one
	// with a 10 s timeout.
	HTTPClient *http.Client
}

// Handler serves the dashboard and passes everything else to the API.
// Make one with New.
type Handler struct {
	api     http.Handler
	seal    *sealer
	csrfKey []byte
	maxAge  time.Duration
	assets  fs.FS
	log     *slog.Logger
	now     func() time.Time
	oidc    *oidcClients

	mu sync.Mutex
	// signedOut holds the ids of cookies signed out before they expire,
	// with their expiry: they are refused until then. guarded by mu
	signedOut map[string]time.Time
	// renewals are the OIDC sign-ins being renewed or just renewed, by
	// cookie id (oidc.go); guarded by mu.
	renewals map[string]*renewed
}

// New makes a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.API == nil {
		return nil, errors.New("dashboard: no API handler")
	}
	if len(cfg.Key) < 32 {
		return nil, fmt.Errorf("dashboard: key has %d bytes, want at least 32", len(cfg.Key))
	}
	seal, err := newSealer(derive(cfg.Key, "cove dashboard cookie"))
	if err != nil {
		return nil, err
	}
	h := &Handler{api: cfg.API, seal: seal, csrfKey: derive(cfg.Key, "cove dashboard csrf"),
		maxAge: cfg.MaxAge, assets: cfg.Assets, log: cfg.Log, now: cfg.Now, signedOut: map[string]time.Time{}}
	if h.maxAge <= 0 {
		h.maxAge = DefaultMaxAge
	}
	if h.assets == nil {
		h.assets = Embedded()
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.oidc = &oidcClients{issuers: cfg.OIDC, client: cfg.HTTPClient, endpoints: map[string]oauth2.Endpoint{}}
	if h.oidc.client == nil {
		h.oidc.client = &http.Client{Timeout: 10 * time.Second}
	}
	return h, nil
}

func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// ServeHTTP serves the dashboard's routes and passes the rest to the API,
// a cookie request of /v1 with the cookie's token as its bearer token.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/" || p == "/index.html":
		h.page(w, r)
	case strings.HasPrefix(p, "/dash/assets/"):
		h.asset(w, r, strings.TrimPrefix(p, "/dash/assets/"))
	case p == "/dash/signin":
		h.signIn(w, r)
	case p == "/dash/signout":
		h.signOut(w, r)
	case p == "/dash/me":
		h.me(w, r)
	case p == "/dash/audit/verify":
		h.auditVerify(w, r)
	case p == "/dash/oidc":
		h.oidcList(w, r)
	case p == "/dash/oidc/start":
		h.oidcStart(w, r)
	case p == CallbackPath:
		h.oidcCallback(w, r)
	case (p == "/v1" || strings.HasPrefix(p, "/v1/")) && r.Header.Get("Authorization") == "":
		h.viaCookie(w, r)
	default:
		h.api.ServeHTTP(w, r)
	}
}

// securityHeaders are sent with every answer of the dashboard's routes.
func securityHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}

func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if !methodAllowed(w, r, "the dashboard's page is GET only", http.MethodGet, http.MethodHead) {
		return
	}
	b, err := fs.ReadFile(h.assets, "index.html")
	if err != nil || !Built(h.assets) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, NotBuilt+"\n")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(b))
}

func (h *Handler) asset(w http.ResponseWriter, r *http.Request, name string) {
	securityHeaders(w)
	if !methodAllowed(w, r, "assets are GET only", http.MethodGet, http.MethodHead) {
		return
	}
	if name == "index.html" || !fs.ValidPath(name) || strings.Contains(name, "/") {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no asset "+name)
		return
	}
	b, err := fs.ReadFile(h.assets, name)
	if err != nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no asset "+name)
		return
	}
	// The page names assets without a version: revalidate each load.
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

// whoami is what /dash/me and a sign-in answer.
type whoami struct {
	api.WhoAmI
	// CSRF is the token cookie requests that change something send in
	// X-Cove-CSRF.
	CSRF string `json:"csrf"`
	// Expires is when the sign-in ends.
	Expires time.Time `json:"expires"`
}

// signIn takes POST /dash/signin, a form with the field token: the API
// tells whom the token is for (GET /v1/whoami, through its gate), and the
// answer sets the cookie. A refused token is the API's 401, said as is.
func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if !methodAllowed(w, r, "sign in with POST", http.MethodPost) {
		return
	}
	// A sign-in sets a cookie: only a page of this origin may ask for it
	// (no signing a victim's browser into an attacker's account).
	if o := r.Header.Get("Origin"); o == "" || !sameOrigin(r, o) {
		h.refuse(w, r, http.StatusForbidden, api.CodeForbidden, "sign-in: the request comes from another origin")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenBytes)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, "sign-in: a form with the field token, at most 8 KiB")
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if token == "" {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, "sign-in: the token is empty: paste a cove API token ('cove token create')")
		return
	}
	who, status, body := h.whoAmI(r.Context(), r, token)
	if status != http.StatusOK {
		h.log.Info("dashboard: sign-in refused", "status", status)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	c := cookie{ID: rand.Text(), Token: token, Expires: h.now().Add(h.maxAge).Truncate(time.Second)}
	value, err := h.seal.seal(c)
	if err != nil {
		h.log.Error("dashboard: seal cookie", "err", err)
		writeError(w, http.StatusInternalServerError, api.CodeInternal, "sign-in: sealing the cookie failed")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: value, Path: "/", Expires: c.Expires,
		MaxAge: int(h.maxAge / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	h.log.Info("dashboard: signed in", "kind", who.Kind, "user", userName(who))
	writeJSONBody(w, http.StatusOK, whoami{WhoAmI: who, CSRF: h.csrf(c.ID), Expires: c.Expires})
}

func userName(w api.WhoAmI) string {
	if w.User == nil {
		return ""
	}
	return w.User.Name
}

// whoAmI asks the API whom token is for. It returns the API's status and,
// unless 200, its body.
func (h *Handler) whoAmI(ctx context.Context, r *http.Request, token string) (api.WhoAmI, int, []byte) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/v1/whoami", nil)
	if err != nil {
		b, _ := json.Marshal(api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeInternal, Message: "sign-in: whoami: " + err.Error()}})
		return api.WhoAmI{}, http.StatusInternalServerError, b
	}
	req.RemoteAddr, req.Host, req.TLS = r.RemoteAddr, r.Host, r.TLS
	req.Header.Set("Authorization", "Bearer "+token)
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	h.api.ServeHTTP(rec, req)
	var who api.WhoAmI
	if rec.code == http.StatusOK {
		if err := json.Unmarshal(rec.body.Bytes(), &who); err != nil {
			b, _ := json.Marshal(api.ErrorResponse{Error: api.ErrorBody{Code: api.CodeInternal, Message: "sign-in: whoami: " + err.Error()}})
			return who, http.StatusInternalServerError, b
		}
	}
	return who, rec.code, rec.body.Bytes()
}

// recorder keeps the answer of a request the dashboard makes to the API
// itself (whoami).
type recorder struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	return r.body.Write(p)
}

// me answers GET /dash/me: whom the cookie signs in, and the CSRF token.
func (h *Handler) me(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Cache-Control", "no-store")
	if !methodAllowed(w, r, "GET only", http.MethodGet) {
		return
	}
	c, err := h.signedIn(w, r)
	if err != nil {
		h.expired(w, r, err)
		return
	}
	who, status, body := h.whoAmI(r.Context(), r, c.Token)
	if status != http.StatusOK {
		if status == http.StatusUnauthorized {
			h.clearCookie(w, r)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	writeJSONBody(w, http.StatusOK, whoami{WhoAmI: who, CSRF: h.csrf(c.ID), Expires: c.Expires})
}

// signOut takes POST /dash/signout: the cookie is cleared, and its id
// refused until it would have expired.
func (h *Handler) signOut(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if !methodAllowed(w, r, "sign out with POST", http.MethodPost) {
		return
	}
	c, err := h.cookie(r)
	if errors.Is(err, errRenew) {
		err = nil // signed in still: it would be renewed
	}
	if err == nil {
		if err := h.checkCSRF(r, c); err != nil {
			h.refuse(w, r, http.StatusForbidden, api.CodeForbidden, err.Error())
			return
		}
		h.mu.Lock()
		now := h.now()
		for id, exp := range h.signedOut {
			if now.After(exp) {
				delete(h.signedOut, id)
			}
		}
		h.signedOut[c.ID] = c.Expires
		if c.Until.After(c.Expires) {
			h.signedOut[c.ID] = c.Until
		}
		h.mu.Unlock()
		h.log.Info("dashboard: signed out")
	}
	h.clearCookie(w, r)
	w.WriteHeader(http.StatusNoContent)
}

// viaCookie passes a /v1 request that has no Authorization header to the
// API with the cookie's token, once its CSRF token and Origin check out.
// Without a cookie it goes as it is (the API answers 401).
func (h *Handler) viaCookie(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(CookieName); err != nil {
		h.api.ServeHTTP(w, r)
		return
	}
	c, err := h.signedIn(w, r)
	if err != nil {
		h.expired(w, r, err)
		return
	}
	origin := r.Header.Get("Origin")
	upgrade := strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
	switch {
	case origin != "" && !sameOrigin(r, origin):
		h.refuse(w, r, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf("the request comes from origin %q, not this server's", origin))
		return
	case upgrade && origin == "":
		// Browsers always send one on a WebSocket; no Origin is no browser's.
		h.refuse(w, r, http.StatusForbidden, api.CodeForbidden, "a WebSocket signed in by cookie must carry an Origin header")
		return
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		if err := h.checkCSRF(r, c); err != nil {
			h.refuse(w, r, http.StatusForbidden, api.CodeForbidden, err.Error())
			return
		}
	}
	// The API's answers to a page are data, never a document: a file
	// downloaded from a guest cannot run as this origin's page.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; sandbox; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+c.Token)
	r2.Header.Del("Cookie")
	r2.Header.Del(CSRFHeader)
	h.api.ServeHTTP(w, r2)
}

func (h *Handler) checkCSRF(r *http.Request, c cookie) error {
	got := r.Header.Get(CSRFHeader)
	if got == "" {
		return fmt.Errorf("missing %s header: a signed-in page sends the CSRF token it read from /dash/me", CSRFHeader)
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(h.csrf(c.ID))) != 1 {
		return fmt.Errorf("wrong %s token: reload the page", CSRFHeader)
	}
	return nil
}

func (h *Handler) csrf(id string) string {
	m := hmac.New(sha256.New, h.csrfKey)
	m.Write([]byte(id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// errSignedOut and errExpired say why a cookie is refused.
var (
	errNoCookie  = errors.New("not signed in")
	errSignedOut = errors.New("signed out")
	errExpired   = errors.New("the sign-in expired")
)

// errRenew is a cookie whose ID token expired and can be renewed.
var errRenew = errors.New("the sign-in's ID token expired; it is renewed")

// signedIn is the request's sign-in: its cookie, with an expired OIDC ID
// token renewed first where the issuer gave a refresh token (the new
// cookie set on w).
func (h *Handler) signedIn(w http.ResponseWriter, r *http.Request) (cookie, error) {
	c, err := h.cookie(r)
	if errors.Is(err, errRenew) {
		return h.renew(w, r, c)
	}
	return c, err
}

// cookie opens the request's sign-in cookie. An expired one that can be
// renewed comes back with errRenew.
func (h *Handler) cookie(r *http.Request) (cookie, error) {
	hc, err := r.Cookie(CookieName)
	if err != nil {
		return cookie{}, errNoCookie
	}
	c, err := h.seal.open(hc.Value)
	if err != nil {
		// Sealed with another key (a key file replaced), or forged.
		return cookie{}, errExpired
	}
	h.mu.Lock()
	_, out := h.signedOut[c.ID]
	h.mu.Unlock()
	if out {
		return cookie{}, errSignedOut
	}
	if !h.now().Before(c.Expires) {
		switch {
		case c.Refresh != "" && h.now().Before(c.Until):
			return c, errRenew
		case c.Issuer != "":
			return cookie{}, errOIDCExpired
		}
		return cookie{}, errExpired
	}
	return c, nil
}

// expired answers 401 for a cookie that no longer signs in, and clears it.
func (h *Handler) expired(w http.ResponseWriter, r *http.Request, why error) {
	securityHeaders(w)
	if !errors.Is(why, errNoCookie) {
		h.clearCookie(w, r)
	}
	writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, why.Error()+": sign in again")
}

func (h *Handler) clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	securityHeaders(w)
	h.log.Warn("dashboard: request refused", "method", r.Method, "path", r.URL.Path, "origin", r.Header.Get("Origin"), "reason", msg)
	writeError(w, status, code, msg)
}

// sameOrigin reports whether origin is the origin r was sent to.
func sameOrigin(r *http.Request, origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return u.Scheme == scheme && strings.EqualFold(u.Host, r.Host)
}

// methodAllowed says whether r's method is one of methods; if not, it
// answers 405 with why and the Allow header.
func methodAllowed(w http.ResponseWriter, r *http.Request, why string, methods ...string) bool {
	if slices.Contains(methods, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", why)
	return false
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSONBody(w, status, api.ErrorResponse{Error: api.ErrorBody{Code: code, Message: msg}})
}

func writeJSONBody(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encode answer"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
