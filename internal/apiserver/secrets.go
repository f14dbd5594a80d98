package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// secretList is the answer of GET /v1/secrets.
type secretList struct {
	Secrets []api.Secret `json:"secrets"`
}

// The secret routes are decided by the policy (secret.write, secret.list,
// secret.delete on the secret's owner: a User, a Team or a Template; a
// list of all on the Server): by default a user manages its own, a
// template's owner the template's, a team's members list the team's, and
// admins do all. A secret's value goes in, sealed, and never comes out:
// no answer, error or log line holds it.

var errNoSecrets = api.Errorf(api.CodeUnavailable, "secret: this server keeps no secrets")

// putSecret sets a secret. The policy decides here, once the body says
// whose the secret is (the gate leaves secret.put to it).
func (s *Server) putSecret(w http.ResponseWriter, r *http.Request) error {
	var req api.PutSecretRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	name := r.PathValue("name")
	err := s.decide(r.Context(), Action{Verb: "secret.put", Secret: name, User: req.User, Team: req.Team, Template: req.Template})
	if err != nil {
		return err
	}
	if req.User == "" && req.Team == "" && req.Template == "" {
		if req.User, err = callerName(r, "set"); err != nil {
			return err
		}
	}
	if s.secrets == nil {
		return errNoSecrets
	}
	sec, err := s.secrets.Put(r.Context(), name, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sec)
}

// listSecrets lists the secrets of the owner the query names
// (?user=NAME, ?team=T, ?template=T, or ?all=true for every owner's),
// else the caller's own.
func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) error {
	owner, err := secretOwner(r, "list")
	if err != nil {
		return err
	}
	if s.secrets == nil {
		return errNoSecrets
	}
	list, err := s.secrets.List(r.Context(), owner)
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.Secret{}
	}
	return writeJSON(w, http.StatusOK, secretList{list})
}

// deleteSecret removes the named secret of the owner the query names,
// else the caller's own.
func (s *Server) deleteSecret(w http.ResponseWriter, r *http.Request) error {
	owner, err := secretOwner(r, "remove")
	if err != nil {
		return err
	}
	if s.secrets == nil {
		return errNoSecrets
	}
	if err := s.secrets.Delete(r.Context(), r.PathValue("name"), owner); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// secretOwner is the owner r's query names, the caller's own user when it
// names none.
func secretOwner(r *http.Request, verb string) (api.SecretOwner, error) {
	q := r.URL.Query()
	o := api.SecretOwner{User: q.Get("user"), Team: q.Get("team"), Template: q.Get("template"), All: q.Get("all") == "true"}
	if o == (api.SecretOwner{}) {
		var err error
		o.User, err = callerName(r, verb)
		return o, err
	}
	return o, nil
}

// callerName is the name of the user r acts for, whose own secrets a
// request that names no owner is about.
func callerName(r *http.Request, verb string) (string, error) {
	p, _ := identity.FromContext(r.Context())
	if p.Kind != identity.KindUser {
		return "", api.Errorf(api.CodeInvalid, "owner: missing; %s is no user, so name the user, team or template whose secrets to %s", who(p), verb)
	}
	return p.User.Name, nil
}
