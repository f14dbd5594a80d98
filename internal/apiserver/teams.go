package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// teamList is the answer of GET /v1/teams.
type teamList struct {
	Teams []api.Team `json:"teams"`
}

// The team routes are an admin's whatever a policy says, as the user
// routes are (see requireAdmin): a team may be what a policy grants
// sessions to, so joining one is a grant.

func (s *Server) listTeams(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	list, err := s.identities.ListTeams(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.Team{}
	}
	return writeJSON(w, http.StatusOK, teamList{list})
}

// addTeamMember puts {user} in {team}; a member already is no error.
func (s *Server) addTeamMember(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	if err := s.identities.AddTeamMember(r.Context(), r.PathValue("team"), r.PathValue("user")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// removeTeamMember takes {user} out of {team}: 404 if it is not in it.
func (s *Server) removeTeamMember(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r.Context()); err != nil {
		return err
	}
	if s.identities == nil {
		return errNoIdentities
	}
	if err := s.identities.RemoveTeamMember(r.Context(), r.PathValue("team"), r.PathValue("user")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
