package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// keyID is the kid of the provider's one signing key.
const keyID = "oidctest-1"

// errUnsupported answers what the provider does not do: JWT profile
// grants, introspection.
var errUnsupported = errors.New("oidctest: not supported")

// storage is the provider's state: op.Storage and
// op.DeviceAuthorizationStorage, in memory.
type storage struct {
	key      *rsa.PrivateKey
	client   client
	requests chan DeviceRequest

	mu      sync.Mutex
	users   map[string]User          // by subject; guarded by mu
	devices map[string]*deviceGrant  // by device code; guarded by mu
	refresh map[string]*refreshGrant // by refresh token; guarded by mu
	auths   map[string]*authRequest  // by id; guarded by mu
	codes   map[string]string        // authorization code → request id; guarded by mu
}

// deviceGrant is one device authorization.
type deviceGrant struct {
	userCode string
	state    op.DeviceAuthorizationState
}

func newStorage(key *rsa.PrivateKey, c client) *storage {
	return &storage{key: key, client: c, requests: make(chan DeviceRequest, 16),
		users: map[string]User{}, devices: map[string]*deviceGrant{}, refresh: map[string]*refreshGrant{},
		auths: map[string]*authRequest{}, codes: map[string]string{}}
}

// decide approves (as subject) or denies the device grant with userCode.
func (s *storage) decide(userCode, subject string, approve bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[subject]; approve && !ok {
		return fmt.Errorf("oidctest: no user %q", subject)
	}
	for _, d := range s.devices {
		if d.userCode != userCode {
			continue
		}
		if approve {
			d.state.Done, d.state.Subject, d.state.AuthTime, d.state.AMR = true, subject, time.Now(), []string{"pwd"}
		} else {
			d.state.Denied = true
		}
		return nil
	}
	return fmt.Errorf("oidctest: no device authorization with user code %q", userCode)
}

// StoreDeviceAuthorization keeps a new device grant and hands its user
// code to the test.
func (s *storage) StoreDeviceAuthorization(ctx context.Context, clientID, deviceCode, userCode string, expires time.Time, scopes []string) error {
	s.mu.Lock()
	for _, d := range s.devices {
		if d.userCode == userCode {
			s.mu.Unlock()
			return op.ErrDuplicateUserCode
		}
	}
	s.devices[deviceCode] = &deviceGrant{userCode: userCode,
		state: op.DeviceAuthorizationState{ClientID: clientID, Scopes: slices.Clone(scopes), Expires: expires}}
	s.mu.Unlock()
	select {
	case s.requests <- DeviceRequest{UserCode: userCode, Scopes: slices.Clone(scopes)}:
	default: // nobody reads them
	}
	return nil
}

func (s *storage) GetDeviceAuthorizatonState(ctx context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceCode]
	if !ok || d.state.ClientID != clientID {
		return nil, errors.New("oidctest: no such device code")
	}
	st := d.state
	return &st, nil
}

// refreshGrant is what a refresh token stands for; it is the
// op.RefreshTokenRequest of its next use.
type refreshGrant struct {
	subject, clientID string
	scopes, amr       []string
	authTime          time.Time
}

func (r *refreshGrant) GetAMR() []string             { return r.amr }
func (r *refreshGrant) GetAudience() []string        { return []string{r.clientID} }
func (r *refreshGrant) GetAuthTime() time.Time       { return r.authTime }
func (r *refreshGrant) GetClientID() string          { return r.clientID }
func (r *refreshGrant) GetScopes() []string          { return r.scopes }
func (r *refreshGrant) GetSubject() string           { return r.subject }
func (r *refreshGrant) SetCurrentScopes(sc []string) { r.scopes = sc }

func (s *storage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	return rand.Text(), time.Now().Add(time.Hour), nil
}

// CreateAccessAndRefreshTokens issues a refresh token for a device grant
// that asked for offline_access, and rotates one on its use.
func (s *storage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	g := &refreshGrant{subject: req.GetSubject(), scopes: slices.Clone(req.GetScopes())}
	if r, ok := req.(op.IDTokenRequest); ok {
		g.clientID, g.amr, g.authTime = r.GetClientID(), r.GetAMR(), r.GetAuthTime()
	}
	tok := rand.Text()
	s.mu.Lock()
	defer s.mu.Unlock()
	if current != "" {
		delete(s.refresh, current)
	}
	s.refresh[tok] = g
	return rand.Text(), tok, time.Now().Add(time.Hour), nil
}

func (s *storage) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.refresh[token]
	if !ok {
		return nil, op.ErrInvalidRefreshToken
	}
	cp := *g
	return &cp, nil
}

func (s *storage) GetRefreshTokenInfo(ctx context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.refresh[token]; ok {
		return g.subject, token, nil
	}
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) RevokeToken(ctx context.Context, token, userID, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.refresh, token)
	return nil
}

func (s *storage) TerminateSession(ctx context.Context, userID, clientID string) error { return nil }

// signingKey is the provider's key, as op signs with it.
type signingKey struct{ key *rsa.PrivateKey }

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return keyID }

// publicKey is the provider's key, as its JWKS publishes it.
type publicKey struct{ key *rsa.PublicKey }

func (k publicKey) ID() string                         { return keyID }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return k.key }

func (s *storage) SigningKey(ctx context.Context) (op.SigningKey, error) {
	return signingKey{s.key}, nil
}

func (s *storage) SignatureAlgorithms(ctx context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(ctx context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{&s.key.PublicKey}}, nil
}

func (s *storage) GetClientByClientID(ctx context.Context, clientID string) (op.Client, error) {
	if clientID != s.client.id {
		return nil, fmt.Errorf("oidctest: no client %q", clientID)
	}
	return s.client, nil
}

func (s *storage) AuthorizeClientIDSecret(ctx context.Context, clientID, secret string) error {
	return errors.New("oidctest: the client is public and has no secret")
}

// SetUserinfoFromScopes is deprecated in op; SetUserinfoFromRequest fills
// in the claims.
func (s *storage) SetUserinfoFromScopes(ctx context.Context, info *oidc.UserInfo, userID, clientID string, scopes []string) error {
	return nil
}

// SetUserinfoFromRequest puts the user's claims in its ID token: profile
// and email as their scopes ask, groups always (when the user has any).
func (s *storage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.userinfo(info, req.GetSubject(), scopes)
}

func (s *storage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, origin string) error {
	return s.userinfo(info, subject, []string{oidc.ScopeProfile, oidc.ScopeEmail})
}

func (s *storage) userinfo(info *oidc.UserInfo, subject string, scopes []string) error {
	s.mu.Lock()
	u, ok := s.users[subject]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("oidctest: no user %q", subject)
	}
	info.Subject = subject
	if slices.Contains(scopes, oidc.ScopeProfile) {
		info.PreferredUsername = u.PreferredUsername
	}
	if slices.Contains(scopes, oidc.ScopeEmail) {
		info.Email, info.EmailVerified = u.Email, true
	}
	if u.Groups != nil {
		info.AppendClaims("groups", slices.Clone(u.Groups))
	}
	return nil
}

func (s *storage) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	return errUnsupported
}

func (s *storage) GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(ctx context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	return nil, errUnsupported
}

func (s *storage) ValidateJWTProfileScopes(ctx context.Context, userID string, scopes []string) ([]string, error) {
	return nil, errUnsupported
}

// authRequest is one authorization request of the code flow, from
// /authorize through the login step to the code's exchange.
type authRequest struct {
	id       string
	req      oidc.AuthRequest
	subject  string
	authTime time.Time
	done     bool
}

func (a *authRequest) GetID() string          { return a.id }
func (a *authRequest) GetACR() string         { return "" }
func (a *authRequest) GetAMR() []string       { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string  { return []string{a.req.ClientID} }
func (a *authRequest) GetAuthTime() time.Time { return a.authTime }
func (a *authRequest) GetClientID() string    { return a.req.ClientID }
func (a *authRequest) GetNonce() string       { return a.req.Nonce }
func (a *authRequest) GetRedirectURI() string { return a.req.RedirectURI }
func (a *authRequest) GetScopes() []string    { return a.req.Scopes }
func (a *authRequest) GetState() string       { return a.req.State }
func (a *authRequest) GetSubject() string     { return a.subject }
func (a *authRequest) Done() bool             { return a.done }
func (a *authRequest) GetResponseMode() oidc.ResponseMode {
	return a.req.ResponseMode
}
func (a *authRequest) GetResponseType() oidc.ResponseType {
	return a.req.ResponseType
}
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.req.CodeChallenge == "" {
		return nil
	}
	m := a.req.CodeChallengeMethod
	if m == "" {
		m = oidc.CodeChallengeMethodPlain
	}
	return &oidc.CodeChallenge{Challenge: a.req.CodeChallenge, Method: m}
}

// CreateAuthRequest keeps a new authorization request until its code is
// exchanged (or it is refused).
func (s *storage) CreateAuthRequest(ctx context.Context, req *oidc.AuthRequest, userID string) (op.AuthRequest, error) {
	a := &authRequest{id: rand.Text(), req: *req}
	a.req.Scopes = slices.Clone(req.Scopes)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auths[a.id] = a
	return a, nil
}

func (s *storage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.auths[id]
	if !ok {
		return nil, errors.New("oidctest: no such authorization request")
	}
	return a, nil
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.auths[s.codes[code]]
	if !ok {
		return nil, errors.New("oidctest: no such authorization code")
	}
	return a, nil
}

func (s *storage) SaveAuthCode(ctx context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.auths[id]; !ok {
		return errors.New("oidctest: no such authorization request")
	}
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest forgets a request once its code was exchanged: a
// code works once.
func (s *storage) DeleteAuthRequest(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.auths, id)
	for c, a := range s.codes {
		if a == id {
			delete(s.codes, c)
		}
	}
	return nil
}

// login completes the authorization request id as the user subject, as
// the user would at a login page.
func (s *storage) login(id, subject string) (*authRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.auths[id]
	if !ok {
		return nil, errors.New("oidctest: no such authorization request")
	}
	if _, ok := s.users[subject]; !ok {
		return a, fmt.Errorf("oidctest: no user %q", subject)
	}
	a.subject, a.authTime, a.done = subject, time.Now(), true
	return a, nil
}

func (s *storage) Health(context.Context) error { return nil }

// client is the provider's one client: public, native, allowed the
// authorization code (with PKCE), device code and refresh token grants.
type client struct {
	id              string
	idTokenLifetime time.Duration
	redirectURIs    []string
}

func (c client) GetID() string                       { return c.id }
func (c client) RedirectURIs() []string              { return c.redirectURIs }
func (c client) PostLogoutRedirectURIs() []string    { return nil }
func (c client) ApplicationType() op.ApplicationType { return op.ApplicationTypeNative }
func (c client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodNone }
func (c client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeDeviceCode, oidc.GrantTypeRefreshToken}
}
func (c client) LoginURL(id string) string                                { return loginPath + "?id=" + url.QueryEscape(id) }
func (c client) AccessTokenType() op.AccessTokenType                      { return op.AccessTokenTypeBearer }
func (c client) IDTokenLifetime() time.Duration                           { return c.idTokenLifetime }
func (c client) DevMode() bool                                            { return true }
func (c client) IsScopeAllowed(string) bool                               { return true }
func (c client) IDTokenUserinfoClaimsAssertion() bool                     { return true }
func (c client) ClockSkew() time.Duration                                 { return 0 }
func (c client) RestrictAdditionalIdTokenScopes() func([]string) []string { return same }
func (c client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return same
}

func same(scopes []string) []string { return scopes }
