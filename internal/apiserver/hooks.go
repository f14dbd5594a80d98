package apiserver

import (
	"errors"
	"net/http"
	"regexp"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// hookName is the shape of a webhook's name.
var hookName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// maxHookSecret bounds a webhook secret in bytes.
const maxHookSecret = 1 << 10

// hookList is the answer of GET /v1/hook-secrets.
type hookList struct {
	Hooks []string `json:"hooks"`
}

// receiveGitHubHook is POST /v1/hooks/github: GitHub's deliveries.
func (s *Server) receiveGitHubHook(w http.ResponseWriter, r *http.Request) error {
	return s.serveHook(w, r, trigger.GitHubHook)
}

// receiveHook is POST /v1/hooks/{name}: a generic sender's deliveries. A
// name no hook could have is answered as an unknown hook.
func (s *Server) receiveHook(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if !hookName.MatchString(name) {
		return api.Errorf(api.CodeNotFound, "no hook %q", name)
	}
	return s.serveHook(w, r, name)
}

// serveHook hands a delivery to Config.Hooks, which checks its signature
// and answers it.
func (s *Server) serveHook(w http.ResponseWriter, r *http.Request, name string) error {
	if s.hooks == nil {
		return api.Errorf(api.CodeUnavailable, "hook.receive: this server takes no webhooks")
	}
	s.hooks.ServeHook(w, r, name)
	return nil
}

func (s *Server) listHookSecrets(w http.ResponseWriter, r *http.Request) error {
	if s.hookSecrets == nil {
		return errNoHookSecrets
	}
	names, err := s.hookSecrets.ListHooks(r.Context())
	if err != nil {
		return err
	}
	if names == nil {
		names = []string{}
	}
	return writeJSON(w, http.StatusOK, hookList{names})
}

// putHookSecret creates or replaces a hook's secret. The secret is never
// echoed, in the answer or in an error.
func (s *Server) putHookSecret(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if !hookName.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "name: %q is not a hook name (%s)", name, hookName)
	}
	var req api.HookSecretRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	switch n := len(req.Secret); {
	case n == 0:
		return api.Errorf(api.CodeInvalid, "secret: missing")
	case n > maxHookSecret:
		return api.Errorf(api.CodeInvalid, "secret: %d bytes; the limit is %d", n, maxHookSecret)
	}
	if s.hookSecrets == nil {
		return errNoHookSecrets
	}
	if err := s.hookSecrets.PutHookSecret(r.Context(), name, []byte(req.Secret)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) deleteHookSecret(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if !hookName.MatchString(name) {
		return api.Errorf(api.CodeNotFound, "no hook %q", name)
	}
	if s.hookSecrets == nil {
		return errNoHookSecrets
	}
	if err := s.hookSecrets.DeleteHook(r.Context(), name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.Errorf(api.CodeNotFound, "no hook %q", name)
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

var errNoHookSecrets = api.Errorf(api.CodeUnavailable, "hook.secret: this server keeps no webhook secrets")
