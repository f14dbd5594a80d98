package apiserver

import (
	"github.com/cove-dev/cove/internal/audit"
	"net/http"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// tokenList is the answer of GET /v1/tokens.
type tokenList struct {
	Tokens []api.Token `json:"tokens"`
}

// The token routes are decided by the policy (token.create, token.list,
// token.revoke on the user whose tokens they are): by default a user
// manages its own tokens and an admin everyone's. Without a policy, only
// admins pass the gate.

// createToken mints a token. The policy decides here, once the body says
// whose token it is (the gate leaves token.create to it): the user the
// request names, or the caller itself, whose own it then is (the admin
// token, being no user, cannot have one). A scoped caller mints only
// within its scopes (Identities.MintToken).
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateTokenRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := s.decide(r.Context(), Action{Verb: "token.create", User: req.User}); err != nil {
		return err
	}
	p, _ := identity.FromContext(r.Context())
	if req.User == "" {
		if p.Kind != identity.KindUser {
			return api.Errorf(api.CodeInvalid, "user: missing; %s is no user, so name the token's user", who(p))
		}
		req.User = p.User.Name
	}
	if s.identities == nil {
		return errNoIdentities
	}
	t, err := s.identities.MintToken(r.Context(), p, req)
	if err != nil {
		return err
	}
	// The token's id and name, never its secret.
	s.outcome(r.Context(), Action{Verb: "token.create", User: t.User, Token: t.ID}, audit.Outcome{})
	w.Header().Set("Cache-Control", "no-store") // the answer holds the secret
	return writeJSON(w, http.StatusCreated, t)
}

// listTokens lists tokens, of one user with ?user=NAME; without it, an
// admin's list is of every user's tokens, anyone else's of its own.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	if s.identities == nil {
		return errNoIdentities
	}
	user := r.URL.Query().Get("user")
	if p, _ := identity.FromContext(r.Context()); user == "" && !p.IsAdmin() {
		if p.Kind != identity.KindUser {
			return api.Errorf(api.CodeInvalid, "user: missing; %s is no user, so name the user whose tokens to list", who(p))
		}
		user = p.User.Name
	}
	list, err := s.identities.ListTokens(r.Context(), user)
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.Token{}
	}
	return writeJSON(w, http.StatusOK, tokenList{list})
}

// revokeToken revokes a token at once; it stays listed, revoked.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	if s.identities == nil {
		return errNoIdentities
	}
	t, err := s.identities.RevokeToken(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, t)
}
