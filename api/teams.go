package api

import (
	"context"
	"net/http"
	"net/url"
)

// Team is a team and its members (GET /v1/teams). A team exists while it
// has members.
type Team struct {
	Name string `json:"name"`
	// Members are the names of the users in the team, sorted.
	Members []string `json:"members"`
}

// ListTeams returns every team with its members, by name. Admins only.
func (c *Client) ListTeams(ctx context.Context) ([]Team, error) {
	var out struct {
		Teams []Team `json:"teams"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/teams", nil, nil, &out)
	return out.Teams, err
}

// AddTeamMember puts the named user in team; a member already is no
// error. Admins only. An unknown user is an *Error with CodeNotFound, a
// malformed team name one with CodeInvalid.
func (c *Client) AddTeamMember(ctx context.Context, team, user string) error {
	return c.doJSON(ctx, http.MethodPut, teamMemberPath(team, user), nil, nil, nil)
}

// RemoveTeamMember takes the named user out of team. Admins only. An
// unknown user, or one not in the team, is an *Error with CodeNotFound.
func (c *Client) RemoveTeamMember(ctx context.Context, team, user string) error {
	return c.doJSON(ctx, http.MethodDelete, teamMemberPath(team, user), nil, nil, nil)
}

func teamMemberPath(team, user string) string {
	return "/v1/teams/" + url.PathEscape(team) + "/members/" + url.PathEscape(user)
}
