package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// Why a bearer credential is refused. Authenticate's refusals wrap one of
// them and say more; test with errors.Is (or IsRefusal). A JWTVerifier's
// refusals wrap them too.
var (
	// ErrUnknownToken: no admin token, API token or verifier knows the
	// credential.
	ErrUnknownToken = errors.New("identity: unknown token")
	// ErrInvalidToken: a verifier knows the credential's issuer but it
	// does not hold: a wrong signature, audience or claim.
	ErrInvalidToken = errors.New("identity: invalid token")
	// ErrRevoked: the token was revoked (by hand, or with its user or
	// session).
	ErrRevoked = errors.New("identity: token revoked")
	// ErrExpired: the token is past its expiry.
	ErrExpired = errors.New("identity: token expired")
	// ErrTooLarge: the credential is longer than MaxBearerBytes; it was
	// not looked at.
	ErrTooLarge = errors.New("identity: token too large")
)

// MaxBearerBytes bounds a bearer credential. API tokens are 48 bytes and
// JWTs a few hundred to a couple of thousand, but an ID token with a large
// groups claim (Azure AD, Okta: a user in a hundred groups) runs to over
// 10 KiB, and cove's own session tokens to issuer.MaxTokenSize (8 KiB);
// anything longer than 16 KiB is refused before it is hashed, parsed or
// looked up.
const MaxBearerBytes = 16 << 10

// IsRefusal reports whether err, from Authenticate, refuses the credential
// (it wraps one of the Err… above), rather than saying that it could not
// be checked (the store failed, say).
func IsRefusal(err error) bool {
	for _, r := range []error{ErrUnknownToken, ErrInvalidToken, ErrRevoked, ErrExpired, ErrTooLarge} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// touchEvery is how stale a token's LastUsedAt may get: a token in use is
// written at most once per this, not on every request.
const touchEvery = time.Minute

// JWTVerifier checks a bearer credential shaped as a JWT (three
// dot-separated base64url parts) and says whom it names. OIDC issuers'
// ID tokens and cove's own session tokens each have one.
//
// A verifier that does not recognise the token (another issuer's, say)
// returns an error wrapping ErrUnknownToken, and the Authenticator asks
// the next one. Any other error is final: a refusal wraps ErrInvalidToken,
// ErrExpired or ErrRevoked (a wrong signature or audience; past its
// expiry; its session revoked), and an error that wraps none of them
// says the verifier could not decide (its issuer's keys unreachable).
type JWTVerifier interface {
	Verify(ctx context.Context, raw string) (Principal, error)
}

// Store is what identity needs of the state store: its users, teams and
// tokens (store.Store has all of it).
type Store interface {
	PutUser(ctx context.Context, u store.User) error
	GetUser(ctx context.Context, id string) (store.User, error)
	GetUserByName(ctx context.Context, name string) (store.User, error)
	GetUserBySubject(ctx context.Context, issuer, subject string) (store.User, error)
	ListUsers(ctx context.Context) ([]store.User, error)
	DeleteUser(ctx context.Context, id string, at time.Time) error
	GetRemovedUser(ctx context.Context, issuer, subject string) (store.RemovedUser, error)
	GetRemovedUserByName(ctx context.Context, name string) (store.RemovedUser, error)
	AddTeamMember(ctx context.Context, userID, team string) error
	RemoveTeamMember(ctx context.Context, userID, team string) error
	TeamsOf(ctx context.Context, userID string) ([]string, error)
	PutToken(ctx context.Context, t store.Token) error
	GetToken(ctx context.Context, id string) (store.Token, error)
	GetTokenByHash(ctx context.Context, hash [32]byte) (store.Token, error)
	ListTokens(ctx context.Context, userID string) ([]store.Token, error)
	RevokeToken(ctx context.Context, id string, at time.Time) error
	TouchToken(ctx context.Context, id string, at time.Time) error
}

var _ Store = store.Store(nil)

// AuthConfig configures an Authenticator. Every field is optional; a zero
// AuthConfig refuses every credential.
type AuthConfig struct {
	// AdminToken is the server's bootstrap token; empty: none is accepted.
	AdminToken string
	// Store holds users and API tokens; nil: API tokens are unknown.
	Store Store
	// JWT verifiers are asked in order about JWT-shaped credentials.
	JWT []JWTVerifier
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Log receives what authentication cannot report to the caller (a
	// failed LastUsedAt write); nil discards.
	Log *slog.Logger
}

// LogValue keeps the admin token out of logs.
func (c AuthConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.Bool("admin_token_set", c.AdminToken != ""),
		slog.Bool("store", c.Store != nil), slog.Int("jwt_verifiers", len(c.JWT)))
}

// Authenticator turns a request's bearer credential into a Principal. Make
// one with NewAuthenticator; it is safe for concurrent use.
type Authenticator struct {
	adminSum [sha256.Size]byte
	adminSet bool
	store    Store
	jwt      []JWTVerifier
	now      func() time.Time
	log      *slog.Logger
}

// NewAuthenticator makes an Authenticator.
func NewAuthenticator(c AuthConfig) *Authenticator {
	a := &Authenticator{
		adminSum: sha256.Sum256([]byte(c.AdminToken)),
		adminSet: c.AdminToken != "",
		store:    c.Store,
		jwt:      append([]JWTVerifier(nil), c.JWT...),
		now:      c.Now,
		log:      c.Log,
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a
}

// Authenticate says whom bearer (the credential of an "Authorization:
// Bearer" header, without the scheme) names:
//
//   - longer than MaxBearerBytes: ErrTooLarge, before anything else;
//   - the admin token (compared in constant time): KindAdminToken;
//   - shaped as a JWT: what the first JWTVerifier that recognises it
//     says, or ErrUnknownToken if none does;
//   - an API token: KindUser, its user with its teams and the token's
//     scopes; ErrRevoked if it, or its user, was revoked or removed;
//     ErrExpired once its ExpiresAt has come; ErrUnknownToken if no
//     token has its hash. Its LastUsedAt is written at most once a
//     minute; a failure to write it is logged, not returned.
//
// Anything else is ErrUnknownToken. Errors of the store (one that is
// unavailable, say) are returned wrapped, and are no refusal (IsRefusal).
func (a *Authenticator) Authenticate(ctx context.Context, bearer string) (Principal, error) {
	if n := len(bearer); n > MaxBearerBytes {
		return Principal{}, fmt.Errorf("%w: %d bytes; the limit is %d", ErrTooLarge, n, MaxBearerBytes)
	}
	sum := sha256.Sum256([]byte(bearer))
	if subtle.ConstantTimeCompare(sum[:], a.adminSum[:]) == 1 && a.adminSet {
		return Principal{Kind: KindAdminToken}, nil
	}
	switch {
	case looksLikeJWT(bearer):
		return a.verifyJWT(ctx, bearer)
	case isAPIToken(bearer) && a.store != nil:
		return a.apiToken(ctx, bearer)
	}
	return Principal{}, fmt.Errorf("%w: neither an API token (%s…), a JWT nor the admin token", ErrUnknownToken, TokenPrefix)
}

// verifyJWT asks the verifiers in turn.
func (a *Authenticator) verifyJWT(ctx context.Context, raw string) (Principal, error) {
	for _, v := range a.jwt {
		p, err := v.Verify(ctx, raw)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, ErrUnknownToken) {
			return Principal{}, err
		}
	}
	if len(a.jwt) == 0 {
		return Principal{}, fmt.Errorf("%w: a JWT, and this server accepts none", ErrUnknownToken)
	}
	iss, err := UnverifiedIssuer(raw)
	if err != nil {
		return Principal{}, err
	}
	return Principal{}, fmt.Errorf("%w: a JWT of issuer %q, which is not configured", ErrUnknownToken, iss)
}

// apiToken authenticates an API token's secret.
func (a *Authenticator) apiToken(ctx context.Context, secret string) (Principal, error) {
	tok, err := a.store.GetTokenByHash(ctx, HashToken(secret))
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, fmt.Errorf("%w: no such API token", ErrUnknownToken)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("identity: authenticate: %w", err)
	}
	now := a.now()
	switch {
	case !tok.RevokedAt.IsZero():
		return Principal{}, fmt.Errorf("%w: token %s (%q) was revoked at %s", ErrRevoked, tok.ID, tok.Name, tok.RevokedAt.Format(time.RFC3339))
	case !tok.ExpiresAt.IsZero() && !now.Before(tok.ExpiresAt):
		return Principal{}, fmt.Errorf("%w: token %s (%q) expired at %s", ErrExpired, tok.ID, tok.Name, tok.ExpiresAt.Format(time.RFC3339))
	}
	u, err := a.store.GetUser(ctx, tok.UserID)
	if errors.Is(err, store.ErrNotFound) {
		// DeleteUser revokes its tokens; this is a belt to those braces.
		return Principal{}, fmt.Errorf("%w: token %s (%q): its user is gone", ErrRevoked, tok.ID, tok.Name)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("identity: authenticate: %w", err)
	}
	teams, err := a.store.TeamsOf(ctx, u.ID)
	if err != nil {
		return Principal{}, fmt.Errorf("identity: authenticate: %w", err)
	}
	if tok.LastUsedAt.IsZero() || now.Sub(tok.LastUsedAt) >= touchEvery {
		if err := a.store.TouchToken(ctx, tok.ID, now); err != nil {
			a.log.Warn("identity: record a token's use", "token", tok.ID, "err", err)
		}
	}
	return Principal{Kind: KindUser, User: u, Teams: teams, Scopes: tok.Scopes, ExpiresAt: tok.ExpiresAt}, nil
}
