package api

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// Kinds of user.
const (
	UserEngineer = "engineer"
	UserService  = "service" // CI, bots
	UserAdmin    = "admin"
)

// User is one principal that signs in (GET /v1/users).
type User struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Kind is UserEngineer, UserService or UserAdmin.
	Kind  string   `json:"kind"`
	Teams []string `json:"teams"`
	// Issuer and Subject are an OIDC user's identity; a local user has
	// neither.
	Issuer    string    `json:"issuer,omitempty"`
	Subject   string    `json:"subject,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUserRequest is the body of POST /v1/users.
type CreateUserRequest struct {
	Name string `json:"name"`
	// Kind is UserEngineer (the default), UserService or UserAdmin.
	Kind  string   `json:"kind,omitempty"`
	Teams []string `json:"teams,omitempty"`
}

// Token states.
const (
	TokenActive  = "active"
	TokenExpired = "expired"
	TokenRevoked = "revoked"
)

// Token is an API token as listed: never its secret.
type Token struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// User is the name of the token's user; empty once the user is gone
	// (its tokens are revoked then, and UserID still says whose they were).
	User   string   `json:"user"`
	UserID string   `json:"user_id"`
	Scopes []string `json:"scopes"`
	// State is TokenActive, TokenExpired or TokenRevoked.
	State      string     `json:"state"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// CreateTokenRequest is the body of POST /v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	// User names the token's user; empty means the caller, which must
	// then be a user (the admin token is none).
	User string `json:"user,omitempty"`
	// ExpiresIn is how long the token works (a Go duration such as
	// "720h"); empty: until it is revoked.
	ExpiresIn string   `json:"expires_in,omitempty"`
	Scopes    []string `json:"scopes,omitempty"`
}

// CreatedToken is the answer of POST /v1/tokens: the token and, this once,
// its secret. The server keeps only a hash of it.
type CreatedToken struct {
	Token
	Secret string `json:"secret"`
}

// LogValue keeps the secret out of logs.
func (t CreatedToken) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", t.ID), slog.String("name", t.Name), slog.String("user", t.User))
}

// AddUser creates a user. A name in use is an *Error with CodeConflict.
func (c *Client) AddUser(ctx context.Context, req CreateUserRequest) (User, error) {
	var u User
	err := c.doJSON(ctx, http.MethodPost, "/v1/users", nil, req, &u)
	return u, err
}

// ListUsers returns every user, by name.
func (c *Client) ListUsers(ctx context.Context) ([]User, error) {
	var out struct {
		Users []User `json:"users"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/users", nil, nil, &out)
	return out.Users, err
}

// RemoveUser removes the named user and revokes its tokens.
func (c *Client) RemoveUser(ctx context.Context, name string) error {
	return c.doJSON(ctx, http.MethodDelete, "/v1/users/"+url.PathEscape(name), nil, nil, nil)
}

// CreateToken mints an API token; the answer holds its secret, which no
// later call shows again.
func (c *Client) CreateToken(ctx context.Context, req CreateTokenRequest) (CreatedToken, error) {
	var t CreatedToken
	err := c.doJSON(ctx, http.MethodPost, "/v1/tokens", nil, req, &t)
	return t, err
}

// ListTokens returns the tokens of the named user ("" for every user's),
// oldest first, without their secrets.
func (c *Client) ListTokens(ctx context.Context, user string) ([]Token, error) {
	var q url.Values
	if user != "" {
		q = url.Values{"user": {user}}
	}
	var out struct {
		Tokens []Token `json:"tokens"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/tokens", q, nil, &out)
	return out.Tokens, err
}

// RevokeToken revokes a token at once and returns it, revoked. Revoking a
// revoked token returns it as it is.
func (c *Client) RevokeToken(ctx context.Context, id string) (Token, error) {
	var t Token
	err := c.doJSON(ctx, http.MethodPost, "/v1/tokens/"+url.PathEscape(id)+"/revoke", nil, nil, &t)
	return t, err
}

// SignIn says how to sign in to a server (GET /auth/oidc, served without
// a token): the OpenID Connect issuers whose ID tokens it accepts, each
// with the client 'cove login' signs in as. None: API tokens only.
type SignIn struct {
	OIDC []OIDCIssuer `json:"oidc"`
}

// OIDCIssuer is an issuer whose ID tokens a server accepts.
type OIDCIssuer struct {
	// Issuer is the issuer's URL (its discovery document is below it).
	Issuer string `json:"issuer"`
	// ClientID is the audience its ID tokens must carry.
	ClientID string `json:"client_id"`
}

// WhoAmI is whom a request's token acts for (GET /v1/whoami).
type WhoAmI struct {
	// Kind is "admin-token", "user" or "agent" (a session's own token).
	Kind string `json:"kind"`
	// User is the user, or the one an agent acts for; none for the admin
	// token.
	User *User `json:"user,omitempty"`
	// Session is an agent's session.
	Session string `json:"session,omitempty"`
	// Scopes narrow an API token; none: all its user may do.
	Scopes []string `json:"scopes"`
}

// SignIn returns how to sign in to the server. It needs no token.
func (c *Client) SignIn(ctx context.Context) (SignIn, error) {
	var s SignIn
	err := c.doJSON(ctx, http.MethodGet, "/auth/oidc", nil, nil, &s)
	return s, err
}

// WhoAmI returns whom the client's token acts for.
func (c *Client) WhoAmI(ctx context.Context) (WhoAmI, error) {
	var w WhoAmI
	err := c.doJSON(ctx, http.MethodGet, "/v1/whoami", nil, nil, &w)
	return w, err
}
