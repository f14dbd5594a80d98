package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// userList is the answer of GET /v1/users.
type userList struct {
	Users []api.User `json:"users"`
}

var errNoIdentities = api.Errorf(api.CodeUnavailable, "this server keeps no users or tokens")

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	var req api.CreateUserRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	u, err := s.identities.AddUser(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, u)
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	list, err := s.identities.ListUsers(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.User{}
	}
	return writeJSON(w, http.StatusOK, userList{list})
}

// deleteUser removes a user and revokes its tokens.
func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	if err := s.identities.RemoveUser(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
