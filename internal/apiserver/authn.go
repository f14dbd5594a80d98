package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// codeForbidden is the code of 403 answers: an authenticated principal
// that may not do what it asked.
const codeForbidden = api.CodeForbidden

// forbidden is a 403 answer.
func forbidden(format string, args ...any) error {
	return api.Errorf(api.CodeForbidden, format, args...)
}

// decidedByHandler are the verbs whose policy decision needs the body:
// the gate checks only the token's scopes, and their handlers always call
// decide, on every path, before they act (see Action).
var decidedByHandler = map[string]bool{
	"session.create": true, // the template a clone comes from
	"session.exec":   true, // the command line, over HTTP and the WebSocket
	"token.create":   true, // the user the token is for
	"secret.put":     true, // the owner (user, team, template) the secret is for
}

// decide asks Config.Authorize about what the handler learned from the
// request's body (see Action): nil without Authorize, where only admins
// passed the gate. An allowed decidedByHandler verb is then announced in
// the audit log (announce), and refused with 503 if it cannot be.
func (s *Server) decide(ctx context.Context, a Action) error {
	if s.authorize != nil {
		if err := authorizeError(a.Verb, s.authorize(ctx, a)); err != nil {
			return err
		}
	}
	if decidedByHandler[a.Verb] {
		return s.announce(ctx, a)
	}
	return nil
}

// authorizeError is an error of Authorize as the client is told it: an
// *api.Error as it is (a denial's message is the policy's reason alone),
// anything else (a store that failed) wrapped with the verb, for the log.
func authorizeError(verb string, err error) error {
	if err == nil || api.CodeOf(err) != api.CodeInternal {
		return err
	}
	return fmt.Errorf("authorize %s: %w", verb, err)
}

// visible reports whether a list may show the item that a (its read)
// names: whether Authorize allows a. A denial hides it, and so does an
// item gone since it was listed; any other error is returned.
func (s *Server) visible(ctx context.Context, a Action) (bool, error) {
	err := s.decide(ctx, a)
	switch {
	case err == nil:
		return true, nil
	case api.IsCode(err, api.CodeForbidden), api.IsCode(err, api.CodeNotFound):
		return false, nil
	}
	return false, err
}

// authenticateWith asks a about a bearer credential that is not the admin
// token. A refusal is a 401 that says why (unknown, invalid, revoked,
// expired, too large); any other error is the server's.
func authenticateWith(ctx context.Context, w http.ResponseWriter, a Authenticator, bearer string) (identity.Principal, error) {
	p, err := a.Authenticate(ctx, bearer)
	switch {
	case err == nil:
		return p, nil
	case identity.IsRefusal(err):
		w.Header().Set("WWW-Authenticate", `Bearer realm="cove", error="invalid_token"`)
		return identity.Principal{}, api.Errorf(api.CodeUnauthorized, "invalid bearer token: %s", strings.TrimPrefix(err.Error(), "identity: "))
	}
	return identity.Principal{}, fmt.Errorf("authenticate: %w", err)
}

// bootstrapVerbs are all the admin token may do: make the first users,
// put them in teams, and mint, list and revoke their tokens (whoami says
// whom a token acts for). It is no user; everything else (sessions,
// templates, images, hooks) is a user's. The routes served without a
// token are not in it: the admin token is not asked for there.
var bootstrapVerbs = map[string]bool{
	"user.create":        true,
	"user.list":          true,
	"user.delete":        true,
	"team.list":          true,
	"team.member.add":    true,
	"team.member.remove": true,
	"token.create":       true,
	"token.list":         true,
	"token.revoke":       true,
	"whoami.get":         true,
}

// bootstrapOnly refuses the admin token any verb outside bootstrapVerbs.
// The gate checks it before, and whatever, Config.Authorize says, so that
// no policy (a permissive one, "permit(principal, action, resource);")
// widens what the admin token may do.
func bootstrapOnly(p identity.Principal, verb string) error {
	if p.Kind != identity.KindAdminToken || bootstrapVerbs[verb] {
		return nil
	}
	return forbidden("forbidden: the admin token only bootstraps (users, teams, tokens), not %s; act as a user: 'cove login', or a token from 'cove token create --user NAME'", verb)
}

// adminsOnly is the rule while no policy (Config.Authorize) decides: the
// admin token and admin users may do everything, anyone else nothing.
func adminsOnly(p identity.Principal) error {
	if p.IsAdmin() {
		return nil
	}
	return forbidden("forbidden: %s is not an admin, and only admins may use this server until a policy is configured", who(p))
}

// requireAdmin refuses a request whose principal is no admin. The user
// routes are an admin's whatever a policy says: a policy that let others
// through (user.admin) would let them make themselves admins.
func requireAdmin(ctx context.Context) error {
	p, ok := identity.FromContext(ctx)
	if !ok {
		return forbidden("forbidden: the request has no principal")
	}
	if !p.IsAdmin() {
		return forbidden("forbidden: %s is not an admin; users are an admin's to manage", who(p))
	}
	return nil
}

// who names a principal in messages.
func who(p identity.Principal) string {
	switch {
	case p.Kind == identity.KindAdminToken:
		return "the admin token"
	case p.Kind == identity.KindAgent:
		return fmt.Sprintf("the agent of session %s", p.Session)
	case p.User.Name != "":
		return fmt.Sprintf("user %q", p.User.Name)
	}
	return string(p.Kind)
}

// owner is what the request's principal creates is recorded as (see
// identity.Principal.Owner); "" when the request has none, which the
// gate lets through only for routes that need no token.
func owner(ctx context.Context) string {
	p, _ := identity.FromContext(ctx)
	return p.Owner()
}
