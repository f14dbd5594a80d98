package apiserver

import (
	"net/http"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// serveSignIn answers GET /auth/oidc: how to sign in (Config.SignIn), for
// 'cove login' before it has a token.
func (s *Server) serveSignIn(w http.ResponseWriter, r *http.Request) error {
	out := api.SignIn{OIDC: s.signIn}
	if out.OIDC == nil {
		out.OIDC = []api.OIDCIssuer{}
	}
	return writeJSON(w, http.StatusOK, out)
}

// whoAmI answers GET /v1/whoami: whom the request's token acts for.
func (s *Server) whoAmI(w http.ResponseWriter, r *http.Request) error {
	p, ok := identity.FromContext(r.Context())
	if !ok {
		return forbidden("forbidden: the request has no principal")
	}
	out := api.WhoAmI{Kind: string(p.Kind), Session: p.Session, Scopes: p.Scopes}
	if out.Scopes == nil {
		out.Scopes = []string{}
	}
	if p.User.ID != "" {
		u := identity.UserOut(p.User, p.Teams)
		out.User = &u
	}
	return writeJSON(w, http.StatusOK, out)
}

// scopeError refuses a verb that the principal's token is scoped out of
// (identity.Principal.ScopeAllows); nil for a verb no policy action
// decides (publicVerbs, or unknown: the policy refuses those).
func scopeError(p identity.Principal, verb string) error {
	rule, ok := verbRules[verb]
	if !ok || p.ScopeAllows(string(rule.action)) {
		return nil
	}
	return forbidden("%s refused: this token's scopes (%s) do not include %s", verb, strings.Join(p.Scopes, ", "), rule.action)
}
