// Package oidctest runs a real OpenID Connect provider on loopback, for
// tests and benchmarks of sign-in: zitadel/oidc's OP (pkg/op), serving
// discovery, its JWKS, the token endpoint (authorization code with PKCE,
// device code and refresh token grants), the authorization endpoint and
// RFC 8628 device authorization, over a small in-memory store of users and
// grants kept here. A test plays the user's part: it reads the user code
// of each device authorization (DeviceRequests) and approves it for a user
// (Approve); in the authorization code flow the provider's login step
// signs in the user SetLoginUser names without a page to fill in (or
// refuses with access_denied when none is named). IDToken and Forge sign ID tokens directly, for
// the claims no flow would give (expired, wrongly signed, wrong audience).
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// DefaultClientID is the client id of a Provider whose Config names none.
const DefaultClientID = "cove-cli"

// User is a user of the provider.
type User struct {
	Subject           string
	PreferredUsername string
	Email             string
	// Groups go in its ID tokens' groups claim; nil: no claim.
	Groups []string
}

// Config configures New. The zero Config is a provider with the device
// flow, client DefaultClientID and ID tokens that live an hour.
type Config struct {
	ClientID string
	// NoDeviceFlow makes a provider that offers no device authorization:
	// its discovery document lists no device_code grant.
	NoDeviceFlow bool
	// IDTokenLifetime is how long its ID tokens live; 0: an hour.
	IDTokenLifetime time.Duration
	// RedirectURIs are the client's redirect URIs of the authorization
	// code flow. A loopback one (http://127.0.0.1/PATH) matches that
	// path on any port (RFC 8252, 7.3).
	RedirectURIs []string
}

// loginPath is the provider's login step of the authorization code flow.
const loginPath = "/login"

// Provider is a running OpenID Connect provider. Its methods are safe for
// concurrent use.
type Provider struct {
	// URL is the issuer, http://127.0.0.1:PORT.
	URL string
	// ClientID is the one client, public (no secret), allowed the device
	// code and refresh token grants.
	ClientID string

	srv      *httptest.Server
	st       *storage
	keysDown atomic.Bool
	down     atomic.Bool
	// loginUser is the subject the login step signs in; "" refuses.
	loginUser atomic.Pointer[string]
}

// New starts a provider on a loopback port. Close it when done.
func New(c Config) (*Provider, error) {
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.IDTokenLifetime <= 0 {
		c.IDTokenLifetime = time.Hour
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("oidctest: key: %w", err)
	}
	st := newStorage(key, client{id: c.ClientID, idTokenLifetime: c.IDTokenLifetime, redirectURIs: slices.Clone(c.RedirectURIs)})
	srv := httptest.NewUnstartedServer(nil)
	issuer := "http://" + srv.Listener.Addr().String()
	cfg := &op.Config{
		GrantTypeRefreshToken: true,
		DeviceAuthorization: op.DeviceAuthorizationConfig{
			Lifetime:     5 * time.Minute,
			PollInterval: time.Second,
			UserFormPath: "/device",
			UserCode:     op.UserCodeBase20,
		},
	}
	rand.Read(cfg.CryptoKey[:])
	var opStorage op.Storage = st
	if c.NoDeviceFlow {
		opStorage = struct{ op.Storage }{st} // hides the device storage methods
	}
	prov, err := op.NewProvider(cfg, opStorage, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("oidctest: provider: %w", err)
	}
	p := &Provider{URL: issuer, ClientID: c.ClientID, st: st, srv: srv}
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() || r.URL.Path == prov.KeysEndpoint().Relative() && p.keysDown.Load() {
			http.Error(w, "down (oidctest)", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == loginPath {
			p.login(w, r, prov)
			return
		}
		prov.ServeHTTP(w, r)
	})
	srv.Start()
	return p, nil
}

// SetLoginUser names the user (by subject) the login step of the
// authorization code flow signs in, as if they had typed their password;
// "" makes it refuse (the client gets error=access_denied).
func (p *Provider) SetLoginUser(subject string) { p.loginUser.Store(&subject) }

// login is the login step: the provider sends the browser here with the
// authorization request's id, and from here back to its callback, which
// redirects to the client with a code.
func (p *Provider) login(w http.ResponseWriter, r *http.Request, prov *op.Provider) {
	id := r.URL.Query().Get("id")
	subject := ""
	if s := p.loginUser.Load(); s != nil {
		subject = *s
	}
	if subject == "" {
		a, err := prov.Storage().AuthRequestByID(r.Context(), id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		op.AuthRequestError(w, r, a, oidc.ErrAccessDenied().WithDescription("oidctest: no login user"), prov)
		return
	}
	if _, err := p.st.login(id, subject); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, op.AuthCallbackURL(prov)(op.ContextWithIssuer(r.Context(), p.URL), id), http.StatusFound)
}

// Close stops the provider.
func (p *Provider) Close() { p.srv.Close() }

// AddUser adds or replaces a user.
func (p *Provider) AddUser(u User) {
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	p.st.users[u.Subject] = u
}

// DeviceRequest is a device authorization the provider handed out: what
// the user would type at the verification page.
type DeviceRequest struct {
	UserCode string
	Scopes   []string
}

// DeviceRequests delivers each device authorization as it is made (the
// last 16 not yet received are kept).
func (p *Provider) DeviceRequests() <-chan DeviceRequest { return p.st.requests }

// Approve completes the device authorization with userCode as the user
// with the given subject, as the user would at the verification page.
func (p *Provider) Approve(userCode, subject string) error {
	return p.st.decide(userCode, subject, true)
}

// Deny refuses the device authorization with userCode.
func (p *Provider) Deny(userCode string) error { return p.st.decide(userCode, "", false) }

// SetKeysDown makes the JWKS endpoint answer 503 (down) or serve the keys.
func (p *Provider) SetKeysDown(down bool) { p.keysDown.Store(down) }

// SetDown makes every endpoint, discovery included, answer 503 (down), or
// serve again.
func (p *Provider) SetDown(down bool) { p.down.Store(down) }

// Claims are the claims of an ID token that IDToken or Forge signs.
type Claims struct {
	Subject string
	// Issuer defaults to the provider's URL, and Audience to its client.
	Issuer   string
	Audience []string
	// Expiry defaults to an hour after IssuedAt, which defaults to now.
	IssuedAt, Expiry  time.Time
	PreferredUsername string
	Email             string
	Groups            []string
}

// IDToken signs c with the provider's key: a token its JWKS verifies.
func (p *Provider) IDToken(c Claims) (string, error) {
	return p.sign(p.st.key, c)
}

// Forge signs c with a new key under the provider's key id: a token its
// JWKS does not verify.
func (p *Provider) Forge(c Claims) (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	return p.sign(k, c)
}

func (p *Provider) sign(k *rsa.PrivateKey, c Claims) (string, error) {
	if c.Subject == "" {
		return "", errors.New("oidctest: claims without a subject")
	}
	if c.Issuer == "" {
		c.Issuer = p.URL
	}
	if c.Audience == nil {
		c.Audience = []string{p.ClientID}
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.Expiry.IsZero() {
		c.Expiry = c.IssuedAt.Add(time.Hour)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k, KeyID: keyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	std := jwt.Claims{Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience,
		IssuedAt: jwt.NewNumericDate(c.IssuedAt), Expiry: jwt.NewNumericDate(c.Expiry)}
	extra := map[string]any{}
	if c.PreferredUsername != "" {
		extra["preferred_username"] = c.PreferredUsername
	}
	if c.Email != "" {
		extra["email"] = c.Email
	}
	if c.Groups != nil {
		extra["groups"] = c.Groups
	}
	return jwt.Signed(signer).Claims(std).Claims(extra).Serialize()
}
