package identity

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Shapes of names. User and team names are lower case, so that "Alice"
// and "alice" cannot be two users.
var (
	userName  = regexp.MustCompile(`^[a-z0-9][a-z0-9._@-]{0,63}$`)
	teamName  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	tokenName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,63}$`)
	scopeName = regexp.MustCompile(`^[a-z][a-z0-9._:*-]{0,63}$`)
)

// Limits on a request.
const (
	maxTeams       = 64
	maxScopes      = 32
	maxTokenExpiry = 10 * 365 * 24 * time.Hour
)

// Directory keeps cove's users and their API tokens: what the /v1/users
// and /v1/tokens routes call. Its methods return *api.Error (possibly
// wrapped) for what the caller got wrong: CodeInvalid for a malformed
// request, each field named; CodeNotFound for an unknown user or token;
// CodeConflict for a name in use. A refused request changes nothing.
// Other errors are the store's.
type Directory struct {
	// Store holds users and tokens.
	Store Store
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

func (d *Directory) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// AddUser makes a local user: of kind engineer unless req says otherwise,
// in the teams req names. A name that was an OIDC user's until an admin
// removed it re-adds that user: the new user takes the removed one's
// issuer and subject (the last removed of that name), so that their
// sign-in works again and is this user.
func (d *Directory) AddUser(ctx context.Context, req api.CreateUserRequest) (api.User, error) {
	if !userName.MatchString(req.Name) {
		return api.User{}, api.Errorf(api.CodeInvalid, "name: %q is not a user name (%s)", req.Name, userName)
	}
	kind := req.Kind
	switch kind {
	case "":
		kind = store.UserEngineer
	case store.UserEngineer, store.UserService, store.UserAdmin:
	default:
		return api.User{}, api.Errorf(api.CodeInvalid, "kind: %q is not one of %s, %s, %s", req.Kind, store.UserEngineer, store.UserService, store.UserAdmin)
	}
	teams, err := checkTeams(req.Teams)
	if err != nil {
		return api.User{}, err
	}
	u := store.User{ID: newID("u_"), Name: req.Name, Kind: kind, CreatedAt: d.now().UTC()}
	if gone, err := d.Store.GetRemovedUserByName(ctx, req.Name); err == nil {
		u.Issuer, u.Subject = gone.Issuer, gone.Subject // PutUser lifts the removal
	} else if !errors.Is(err, store.ErrNotFound) {
		return api.User{}, fmt.Errorf("add user %s: %w", req.Name, err)
	}
	if err := d.Store.PutUser(ctx, u); err != nil {
		if errors.Is(err, store.ErrExists) {
			return api.User{}, api.Errorf(api.CodeConflict, "user %q exists", req.Name)
		}
		return api.User{}, fmt.Errorf("add user %s: %w", req.Name, err)
	}
	for _, team := range teams {
		if err := d.Store.AddTeamMember(ctx, u.ID, team); err != nil {
			// Leave no user behind with half its teams.
			if derr := d.Store.DeleteUser(context.WithoutCancel(ctx), u.ID, d.now()); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove it again: %w", derr))
			}
			return api.User{}, fmt.Errorf("add user %s to team %s: %w", req.Name, team, err)
		}
	}
	return UserOut(u, teams), nil
}

// FirstAdminName is the name of the admin user FirstAdmin makes.
const FirstAdminName = "admin"

// FirstAdmin makes sure the server has an admin user, as the admin token
// only bootstraps: while no user is of kind admin, it adds a local one
// named FirstAdminName and returns it with made true; once one is, it
// returns the first of them by name, made false (so that a restart makes
// no second). Where no user is an admin but the name is another kind of
// user's, it changes nothing and returns an error of CodeConflict that
// says how to make one; other errors are the store's.
func (d *Directory) FirstAdmin(ctx context.Context) (u api.User, made bool, err error) {
	users, err := d.ListUsers(ctx)
	if err != nil {
		return api.User{}, false, fmt.Errorf("first admin: %w", err)
	}
	for _, u := range users {
		if u.Kind == store.UserAdmin {
			return u, false, nil
		}
	}
	u, err = d.AddUser(ctx, api.CreateUserRequest{Name: FirstAdminName, Kind: store.UserAdmin})
	if api.IsCode(err, api.CodeConflict) {
		return api.User{}, false, api.Errorf(api.CodeConflict,
			"no user is an admin, and the name %q is a user's that is not; make one with the admin token: "+
				"'cove user add NAME --kind admin' (COVE_TOKEN=$(cat $COVE_HOME/admin.token))", FirstAdminName)
	}
	if err != nil {
		return api.User{}, false, fmt.Errorf("first admin: %w", err)
	}
	return u, true, nil
}

// checkTeams checks team names and returns them sorted, each once.
func checkTeams(teams []string) ([]string, error) {
	if len(teams) > maxTeams {
		return nil, api.Errorf(api.CodeInvalid, "teams: %d; the limit is %d", len(teams), maxTeams)
	}
	for _, t := range teams {
		if !teamName.MatchString(t) {
			return nil, api.Errorf(api.CodeInvalid, "teams: %q is not a team name (%s)", t, teamName)
		}
	}
	out := slices.Clone(teams)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ListUsers returns every user with its teams, by name.
func (d *Directory) ListUsers(ctx context.Context) ([]api.User, error) {
	users, err := d.Store.ListUsers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out := make([]api.User, 0, len(users))
	for _, u := range users {
		teams, err := d.Store.TeamsOf(ctx, u.ID)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, UserOut(u, teams))
	}
	return out, nil
}

// RemoveUser removes the named user and its team memberships, and revokes
// its tokens.
func (d *Directory) RemoveUser(ctx context.Context, name string) error {
	u, err := d.user(ctx, name)
	if err != nil {
		return err
	}
	if err := d.Store.DeleteUser(ctx, u.ID, d.now().UTC()); err != nil {
		if errors.Is(err, store.ErrNotFound) { // removed meanwhile
			return api.Errorf(api.CodeNotFound, "no user %q", name)
		}
		return fmt.Errorf("remove user %s: %w", name, err)
	}
	return nil
}

// user returns the named user, or a CodeNotFound error.
func (d *Directory) user(ctx context.Context, name string) (store.User, error) {
	u, err := d.Store.GetUserByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.User{}, api.Errorf(api.CodeNotFound, "no user %q", name)
	}
	if err != nil {
		return store.User{}, fmt.Errorf("find user %s: %w", name, err)
	}
	return u, nil
}

// CreateToken mints an API token for the user req names (which must be
// set: the caller's own name, when it asks for itself). The answer holds
// the secret; only its hash is kept. It applies no caller's limits, as
// for an admin; the API mints with MintToken.
func (d *Directory) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.CreatedToken, error) {
	return d.createToken(ctx, req, time.Time{})
}

// MintToken is CreateToken for caller, who asked for the token and whom
// the policy allowed to. A caller whose credential is scoped (an API
// token's Scopes) mints only a scoped token, each scope within its own
// (else CodeForbidden, saying why), that expires no later than its own
// token: an expiry past that, or none, becomes its token's ExpiresAt. So
// a scoped token cannot widen itself, nor outlive itself by minting.
func (d *Directory) MintToken(ctx context.Context, caller Principal, req api.CreateTokenRequest) (api.CreatedToken, error) {
	if err := checkScopes(req.Scopes); err != nil { // a typo is a typo, not a scope too wide
		return api.CreatedToken{}, err
	}
	if err := caller.checkMint(req.Scopes); err != nil {
		return api.CreatedToken{}, err
	}
	var notAfter time.Time
	if len(caller.Scopes) > 0 {
		notAfter = caller.ExpiresAt
	}
	return d.createToken(ctx, req, notAfter)
}

// createToken mints req's token, expiring at notAfter at the latest
// (zero: no limit).
func (d *Directory) createToken(ctx context.Context, req api.CreateTokenRequest, notAfter time.Time) (api.CreatedToken, error) {
	if !tokenName.MatchString(req.Name) {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "name: %q is not a token name (%s)", req.Name, tokenName)
	}
	if req.User == "" {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "user: missing")
	}
	if err := checkScopes(req.Scopes); err != nil {
		return api.CreatedToken{}, err
	}
	var expiresIn time.Duration
	if req.ExpiresIn != "" {
		dur, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || dur <= 0 || dur > maxTokenExpiry {
			return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "expires_in: %q is not a duration above 0s and up to %s (like \"720h\")", req.ExpiresIn, maxTokenExpiry)
		}
		expiresIn = dur
	}
	u, err := d.Store.GetUserByName(ctx, req.User)
	if errors.Is(err, store.ErrNotFound) {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "user: no user %q", req.User)
	} else if err != nil {
		return api.CreatedToken{}, fmt.Errorf("create token: find user %s: %w", req.User, err)
	}

	secret, hash := NewToken()
	now := d.now().UTC()
	tok := store.Token{ID: newID("tok_"), Name: req.Name, UserID: u.ID, Hash: hash,
		Scopes: slices.Clone(req.Scopes), CreatedAt: now}
	if expiresIn > 0 {
		tok.ExpiresAt = now.Add(expiresIn)
	}
	if !notAfter.IsZero() && (tok.ExpiresAt.IsZero() || tok.ExpiresAt.After(notAfter)) {
		tok.ExpiresAt = notAfter.UTC()
	}
	if err := d.Store.PutToken(ctx, tok); err != nil {
		if errors.Is(err, store.ErrNotFound) { // the user was removed meanwhile
			return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "user: no user %q", req.User)
		}
		return api.CreatedToken{}, fmt.Errorf("create token %s for %s: %w", req.Name, req.User, err)
	}
	return api.CreatedToken{Token: tokenOut(tok, u.Name, now), Secret: secret}, nil
}

// checkScopes checks a token's scopes: well formed, each once, each an
// action or a family of them (see ScopeAllows).
func checkScopes(scopes []string) error {
	if len(scopes) > maxScopes {
		return api.Errorf(api.CodeInvalid, "scopes: %d; the limit is %d", len(scopes), maxScopes)
	}
	for i, s := range scopes {
		if !scopeName.MatchString(s) {
			return api.Errorf(api.CodeInvalid, "scopes: %q is not a scope (%s)", s, scopeName)
		}
		if slices.Contains(scopes[:i], s) {
			return api.Errorf(api.CodeInvalid, "scopes: %q is given twice", s)
		}
	}
	return checkScopeNames(scopes)
}

// ListTokens returns the named user's tokens ("" for every user's), oldest
// first, revoked and expired ones included, without their secrets.
func (d *Directory) ListTokens(ctx context.Context, user string) ([]api.Token, error) {
	var userID string
	if user != "" {
		u, err := d.user(ctx, user)
		if err != nil {
			return nil, err
		}
		userID = u.ID
	}
	toks, err := d.Store.ListTokens(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	users, err := d.Store.ListUsers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	names := make(map[string]string, len(users))
	for _, u := range users {
		names[u.ID] = u.Name
	}
	now := d.now()
	out := make([]api.Token, 0, len(toks))
	for _, t := range toks {
		out = append(out, tokenOut(t, names[t.UserID], now))
	}
	return out, nil
}

// RevokeToken revokes the token with the given id and returns it. A token
// revoked before keeps its time.
func (d *Directory) RevokeToken(ctx context.Context, id string) (api.Token, error) {
	if err := d.Store.RevokeToken(ctx, id, d.now().UTC()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.Token{}, api.Errorf(api.CodeNotFound, "no token %q", id)
		}
		return api.Token{}, fmt.Errorf("revoke token %s: %w", id, err)
	}
	tok, err := d.Store.GetToken(ctx, id)
	if err != nil {
		return api.Token{}, fmt.Errorf("revoke token %s: %w", id, err)
	}
	var name string
	if u, err := d.Store.GetUser(ctx, tok.UserID); err == nil {
		name = u.Name
	} else if !errors.Is(err, store.ErrNotFound) {
		return api.Token{}, fmt.Errorf("revoke token %s: %w", id, err)
	}
	return tokenOut(tok, name, d.now()), nil
}

func UserOut(u store.User, teams []string) api.User {
	if teams == nil {
		teams = []string{}
	}
	return api.User{ID: u.ID, Name: u.Name, Kind: u.Kind, Teams: teams,
		Issuer: u.Issuer, Subject: u.Subject, CreatedAt: u.CreatedAt}
}

// tokenOut is t as listed, its State as of now.
func tokenOut(t store.Token, user string, now time.Time) api.Token {
	out := api.Token{ID: t.ID, Name: t.Name, User: user, UserID: t.UserID,
		Scopes: t.Scopes, State: api.TokenActive, CreatedAt: t.CreatedAt}
	if out.Scopes == nil {
		out.Scopes = []string{}
	}
	if !t.ExpiresAt.IsZero() {
		out.ExpiresAt = &t.ExpiresAt
		if !now.Before(t.ExpiresAt) {
			out.State = api.TokenExpired
		}
	}
	if !t.RevokedAt.IsZero() {
		out.RevokedAt = &t.RevokedAt
		out.State = api.TokenRevoked
	}
	if !t.LastUsedAt.IsZero() {
		out.LastUsedAt = &t.LastUsedAt
	}
	return out
}
