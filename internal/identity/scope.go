package identity

import (
	"slices"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/policy"
)

// Scopes narrow an API token to some of what its user may do. A scope is
// a policy action ("session.read", "session.exec"; see policy.Actions), or
// every action of one family ("session.*", "template.*"). A token with no
// scope may do everything its user may; the policy decides either way,
// and a scope only takes away.

// scopeFamily is the family a "FAMILY.*" scope names, and whether s is one.
func scopeFamily(s string) (string, bool) {
	f, ok := strings.CutSuffix(s, ".*")
	return f, ok && f != ""
}

// actionFamily is the family of an action: "session" for "session.read".
func actionFamily(action string) string {
	f, _, _ := strings.Cut(action, ".")
	return f
}

// knownScope reports whether s is an action or a family of them.
func knownScope(s string) bool {
	for _, a := range policy.Actions() {
		if string(a) == s {
			return true
		}
		if f, ok := scopeFamily(s); ok && actionFamily(string(a)) == f {
			return true
		}
	}
	return false
}

// scopeHelp lists the scopes, for the message that refuses an unknown one.
func scopeHelp() string {
	var actions, families []string
	for _, a := range policy.Actions() {
		actions = append(actions, string(a))
		if f := actionFamily(string(a)) + ".*"; !slices.Contains(families, f) {
			families = append(families, f)
		}
	}
	return "an action (" + strings.Join(actions, ", ") + ") or a family (" + strings.Join(families, ", ") + ")"
}

// checkScopeNames refuses a scope that names no action or family.
func checkScopeNames(scopes []string) error {
	for _, s := range scopes {
		if !knownScope(s) {
			return api.Errorf(api.CodeInvalid, "scopes: %q is not a scope; a scope is %s", s, scopeHelp())
		}
	}
	return nil
}

// checkMint refuses a token that p, if its credential is scoped, may not
// mint: one without scopes (which could do all its user may), or with a
// scope that p's own scopes do not cover. An action is covered by itself
// or its family ("session.read" by "session.*"), a family only by itself.
// An unscoped p may mint any.
func (p Principal) checkMint(scopes []string) error {
	if len(p.Scopes) == 0 {
		return nil
	}
	mine := strings.Join(p.Scopes, ", ")
	if len(scopes) == 0 {
		return api.Errorf(api.CodeForbidden, "token.create refused: the token you use is scoped (%s), so the token it mints must be too: give it scopes within those", mine)
	}
	for _, s := range scopes {
		if !slices.Contains(p.Scopes, s) && !slices.Contains(p.Scopes, actionFamily(s)+".*") {
			return api.Errorf(api.CodeForbidden, "token.create refused: scope %q is beyond the scopes of the token you use (%s); a scoped token mints only tokens within its own scopes", s, mine)
		}
	}
	return nil
}

// ScopeAllows reports whether p's credential may take action (a policy
// action, such as "session.exec") as far as its scopes go: always when it
// has none, else when a scope names the action or its family. The policy
// still decides whether p may take it.
func (p Principal) ScopeAllows(action string) bool {
	if len(p.Scopes) == 0 {
		return true
	}
	for _, s := range p.Scopes {
		if s == action {
			return true
		}
		if f, ok := scopeFamily(s); ok && f == actionFamily(action) {
			return true
		}
	}
	return false
}
