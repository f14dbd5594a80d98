// Package identity says who is behind a request: it keeps cove's users and
// their API tokens (Directory) and turns a request's bearer credential into
// a Principal (Authenticator) — the bootstrap admin token, an API token, or
// a JWT that a pluggable JWTVerifier (OIDC, cove's own session tokens)
// accepts. What a principal may do is the policy's to decide, not this
// package's.
package identity

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// Kind says what sort of credential a Principal showed.
type Kind string

// Kinds of principal.
const (
	// KindAdminToken is the holder of the server's admin token: it is
	// no user; it only bootstraps: it adds users, puts them in teams and
	// mints, lists and revokes their tokens, and the API server refuses
	// it everything else (sessions, templates, images, hooks).
	KindAdminToken Kind = "admin-token"
	// KindUser is a user, by an API token or an OIDC ID token.
	KindUser Kind = "user"
	// KindAgent is a session's agent, by a session token: it acts for the
	// session's owner (User) and for that session only.
	KindAgent Kind = "agent"
)

// Principal is who a request acts for.
type Principal struct {
	Kind Kind
	// User is the user (KindUser), or the one the agent acts for
	// (KindAgent); zero for KindAdminToken.
	User store.User
	// Teams are the user's teams, sorted.
	Teams []string
	// Session is the agent's session (KindAgent).
	Session string
	// Scopes narrow what the credential may do (an API token's scopes);
	// none: all that its user may.
	Scopes []string
	// ExpiresAt is when an API token expires; zero: never, or not an API
	// token. A scoped token mints none that outlives it (MintToken).
	ExpiresAt time.Time
}

// IsAdmin reports whether p has an admin's powers: the admin token, or a
// user of kind admin (by an API token or sign-in; never an agent).
func (p Principal) IsAdmin() bool {
	return p.Kind == KindAdminToken || p.Kind == KindUser && p.User.Kind == store.UserAdmin
}

// Owner is what is recorded as the owner of the sessions and templates p
// creates: the user's id (KindUser), the id of the user an agent acts for
// (KindAgent), or store.OwnerAdmin for the admin token, which is no user
// (it creates no sessions or templates now; those that earlier versions
// let it create keep that owner).
func (p Principal) Owner() string {
	if p.Kind == KindAdminToken {
		return store.OwnerAdmin
	}
	return p.User.ID
}

// HasScope reports whether p's credential carries scope.
func (p Principal) HasScope(scope string) bool { return slices.Contains(p.Scopes, scope) }

// LogValue names the principal without any credential.
func (p Principal) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("kind", string(p.Kind))}
	if p.User.ID != "" {
		attrs = append(attrs, slog.String("user", p.User.Name), slog.String("user_id", p.User.ID))
	}
	if p.Session != "" {
		attrs = append(attrs, slog.String("session", p.Session))
	}
	return slog.GroupValue(attrs...)
}

type principalKey struct{}

// NewContext returns ctx carrying p, the principal of the request that ctx
// belongs to.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal NewContext put in ctx, and whether
// there is one.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
