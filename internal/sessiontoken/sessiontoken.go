// Package sessiontoken ties cove's issuer (internal/issuer) to its
// sessions: Minter mints a session's identity token from the session's
// record (its owner as sub, its agent and id as act, its token
// generation), and Verifier accepts such a token on cove's own API while
// its session runs, unrevoked, at the generation the token carries. A
// park or the session's removal kills every token minted before; a
// revoke (the kill switch) kills them and every later one, for the
// session's life (see internal/session/token.go).
package sessiontoken

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/store"
)

// Minter mints sessions' identity tokens with Issuer; it is the session
// manager's session.TokenMinter.
type Minter struct {
	Issuer *issuer.Issuer
}

// MintSessionToken signs a token for session rec: sub its Owner, act its
// ID and Agent, cove_gen its TokenGen, aud audience, living ttl (0:
// issuer.DefaultTTL, at most issuer.MaxTTL). A revoked session
// (TokensRevokedAt set) gets none.
func (m Minter) MintSessionToken(rec store.Session, audience string, ttl time.Duration) (string, error) {
	if rec.Owner == "" {
		return "", fmt.Errorf("sessiontoken: session %s has no owner to act for", rec.ID)
	}
	if !rec.TokensRevokedAt.IsZero() {
		return "", fmt.Errorf("sessiontoken: session %s's identity was revoked", rec.ID)
	}
	return m.Issuer.Mint(issuer.Claims{Subject: rec.Owner, Session: rec.ID, Agent: rec.Agent, Generation: rec.TokenGen}, audience, ttl)
}

// Records is what Verifier reads: the session a token names and its
// owner. store.Store has all of it; unknown ids wrap store.ErrNotFound.
type Records interface {
	GetSession(ctx context.Context, id string) (store.Session, error)
	GetUser(ctx context.Context, id string) (store.User, error)
	TeamsOf(ctx context.Context, userID string) ([]string, error)
}

var _ Records = store.Store(nil)

// Verifier is the identity.JWTVerifier of cove's own session tokens,
// presented to cove's API.
type Verifier struct {
	Issuer *issuer.Issuer
	// Audience is the aud a token must have to be good on cove's API
	// (cove server uses its issuer URL); tokens minted for other
	// audiences are for other systems and are refused.
	Audience string
	Records  Records
}

var _ identity.JWTVerifier = (*Verifier)(nil)

// Verify accepts a session token of v.Issuer for v.Audience and returns
// the session's agent: Principal{Kind: KindAgent, User: the session's
// owner, Teams: the owner's, Session: its id}. A token whose iss is not
// v.Issuer's is ErrUnknownToken (another verifier's to judge); one that
// is v.Issuer's but wrongly signed, audienced or shaped is
// ErrInvalidToken, past its exp ErrExpired; one whose session is gone,
// revoked (TokensRevokedAt set, whatever the token's generation), not
// running, or at another token generation (parked since), or whose owner
// is gone, is ErrRevoked. Errors of the store are
// returned wrapped, and are no refusal.
func (v *Verifier) Verify(ctx context.Context, raw string) (identity.Principal, error) {
	iss, err := unverifiedIssuer(raw)
	if err != nil || iss != v.Issuer.URL() {
		return identity.Principal{}, fmt.Errorf("%w: not a session token of issuer %s", identity.ErrUnknownToken, v.Issuer.URL())
	}
	c, err := v.Issuer.Verify(raw, v.Audience)
	switch {
	case errors.Is(err, issuer.ErrExpired):
		return identity.Principal{}, fmt.Errorf("%w: session token: %v", identity.ErrExpired, trim(err))
	case errors.Is(err, issuer.ErrInvalidToken):
		return identity.Principal{}, fmt.Errorf("%w: session token: %v", identity.ErrInvalidToken, trim(err))
	case err != nil:
		return identity.Principal{}, fmt.Errorf("sessiontoken: verify: %w", err)
	}
	rec, err := v.Records.GetSession(ctx, c.Session)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return identity.Principal{}, fmt.Errorf("%w: session token of session %s, which is gone", identity.ErrRevoked, c.Session)
	case err != nil:
		return identity.Principal{}, fmt.Errorf("sessiontoken: verify: %w", err)
	case !rec.TokensRevokedAt.IsZero():
		return identity.Principal{}, fmt.Errorf("%w: session token of session %s, whose identity was revoked at %s (cove session revoke)",
			identity.ErrRevoked, c.Session, rec.TokensRevokedAt.Format(time.RFC3339))
	case rec.TokenGen != c.Generation:
		return identity.Principal{}, fmt.Errorf("%w: session token of generation %d; session %s was parked or revoked since (now at %d)",
			identity.ErrRevoked, c.Generation, c.Session, rec.TokenGen)
	case rec.State != api.StateRunning:
		return identity.Principal{}, fmt.Errorf("%w: session token of session %s, which is %s; its tokens hold only while it runs",
			identity.ErrRevoked, c.Session, rec.State)
	case rec.Owner != c.Subject:
		return identity.Principal{}, fmt.Errorf("%w: session token says it acts for %q, but session %s is %q's",
			identity.ErrInvalidToken, c.Subject, c.Session, rec.Owner)
	}
	p := identity.Principal{Kind: identity.KindAgent, Session: rec.ID}
	if rec.Owner == store.OwnerAdmin { // the admin token's: no stored user
		p.User = store.User{ID: store.OwnerAdmin, Name: store.OwnerAdmin}
		return p, nil
	}
	if p.User, err = v.Records.GetUser(ctx, rec.Owner); errors.Is(err, store.ErrNotFound) {
		return identity.Principal{}, fmt.Errorf("%w: session token of session %s, whose owner %s is gone", identity.ErrRevoked, c.Session, rec.Owner)
	} else if err != nil {
		return identity.Principal{}, fmt.Errorf("sessiontoken: verify: %w", err)
	}
	if p.Teams, err = v.Records.TeamsOf(ctx, rec.Owner); err != nil {
		return identity.Principal{}, fmt.Errorf("sessiontoken: verify: %w", err)
	}
	return p, nil
}

// trim drops the issuer package's prefixes from a refusal's message.
func trim(err error) string {
	s := strings.TrimPrefix(err.Error(), "issuer: ")
	return strings.TrimPrefix(s, issuer.ErrInvalidToken.Error()+": ")
}

// unverifiedIssuer reads the iss claim of a compact JWS without checking
// anything: only to tell whose token it is.
func unverifiedIssuer(raw string) (string, error) {
	if parts := strings.SplitN(raw, ".", 3); len(parts) == 3 && len(parts[1]) > issuer.MaxTokenSize {
		return "", errors.New("payload too large for a session token")
	}
	return identity.UnverifiedIssuer(raw)
}
