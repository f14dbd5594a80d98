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
const codeForbidden = "forbidden"

// forbidden is a 403 answer.
func forbidden(format string, args ...any) error {
	return &statusError{status: http.StatusForbidden, code: codeForbidden, msg: fmt.Sprintf(format, args...)}
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

// adminsOnly is the rule while no policy (Config.Authorize) decides: the
// admin token and admin users may do everything, anyone else nothing.
func adminsOnly(p identity.Principal) error {
	if p.IsAdmin() {
		return nil
	}
	return forbidden("forbidden: %s is not an admin, and only admins may use this server until a policy is configured", who(p))
}

// requireAdmin refuses a request whose principal is no admin. The user
// and token routes are an admin's, whatever a policy says, for now.
func requireAdmin(ctx context.Context) error {
	p, ok := identity.FromContext(ctx)
	if !ok {
		return forbidden("forbidden: the request has no principal")
	}
	if !p.IsAdmin() {
		return forbidden("forbidden: %s is not an admin; users and tokens are an admin's to manage", who(p))
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
