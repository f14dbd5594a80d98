package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// A team exists while it has members: it is a name that users are in,
// kept as their memberships. An OIDC user's teams are its ID token's
// groups, set again at each sign-in whose token has a groups claim, so a
// membership given or ended by hand lasts until then.

// ListTeams returns every team that has members, by name, each with its
// members' names, sorted.
func (d *Directory) ListTeams(ctx context.Context) ([]api.Team, error) {
	users, err := d.Store.ListUsers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list teams: %w", err)
	}
	members := make(map[string][]string)
	for _, u := range users {
		teams, err := d.Store.TeamsOf(ctx, u.ID)
		if err != nil {
			return nil, fmt.Errorf("list teams: %w", err)
		}
		for _, t := range teams {
			members[t] = append(members[t], u.Name)
		}
	}
	out := make([]api.Team, 0, len(members))
	for name, m := range members {
		slices.Sort(m)
		out = append(out, api.Team{Name: name, Members: m})
	}
	slices.SortFunc(out, func(a, b api.Team) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// AddTeamMember puts the named user in team; a member already is no
// error. A malformed team name is CodeInvalid; an unknown user
// CodeNotFound.
func (d *Directory) AddTeamMember(ctx context.Context, team, user string) error {
	if err := checkTeamName(team); err != nil {
		return err
	}
	u, err := d.user(ctx, user)
	if err != nil {
		return err
	}
	if err := d.Store.AddTeamMember(ctx, u.ID, team); err != nil {
		if errors.Is(err, store.ErrNotFound) { // removed meanwhile
			return api.Errorf(api.CodeNotFound, "no user %q", user)
		}
		return fmt.Errorf("add %s to team %s: %w", user, team, err)
	}
	return nil
}

// RemoveTeamMember takes the named user out of team. A malformed team
// name is CodeInvalid; an unknown user, or one not in team (an unknown
// team has no members), CodeNotFound.
func (d *Directory) RemoveTeamMember(ctx context.Context, team, user string) error {
	if err := checkTeamName(team); err != nil {
		return err
	}
	u, err := d.user(ctx, user)
	if err != nil {
		return err
	}
	if err := d.Store.RemoveTeamMember(ctx, u.ID, team); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.Errorf(api.CodeNotFound, "user %q is not in team %q", user, team)
		}
		return fmt.Errorf("remove %s from team %s: %w", user, team, err)
	}
	return nil
}

// checkTeamName checks one team name, as checkTeams does a user's.
func checkTeamName(team string) error {
	if !teamName.MatchString(team) {
		return api.Errorf(api.CodeInvalid, "team: %q is not a team name (%s)", team, teamName)
	}
	return nil
}
