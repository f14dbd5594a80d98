package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newTeamCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "team",
		Aliases: []string{"teams"},
		Short:   "List teams, and put users in and out of them",
		Long: `A team is a name that users are in. A policy (the server's --policy) can
grant a team's members access to each other's sessions and templates;
the built-in policy grants teams nothing and shows how, commented out.
A team exists while it has members. An OIDC user's teams are its ID token's groups, set again at
each sign-in whose token has them. Only admins manage teams; a change
counts from the member's next request.`,
	})
	cmd.AddCommand(newTeamLsCmd(c), newTeamAddCmd(c), newTeamRmCmd(c))
	return cmd
}

func newTeamLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List teams and their members",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			teams, err := cl.ListTeams(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if teams == nil {
					teams = []api.Team{}
				}
				return printJSON(c, teams)
			}
			return writeTeamTable(c.stdout, teams)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the teams as a JSON array")
	return cmd
}

// writeTeamTable writes teams as TEAM MEMBERS, in the server's order (by
// name).
func writeTeamTable(w io.Writer, teams []api.Team) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "TEAM\tMEMBERS")
	for _, t := range teams {
		fmt.Fprintf(tw, "%s\t%s\n", t.Name, strings.Join(t.Members, ","))
	}
	return tw.Flush()
}

func newTeamAddCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "add TEAM USER...",
		Short: "Put users in a team",
		Long: `Put users in TEAM, printing each user's name; a user in it already is no
error. TEAM is lower case: letters, digits and . _ -. Every user is
tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			team := args[0]
			return c.each(args[1:], "team add "+team, func(user string) (string, error) {
				return user, cl.AddTeamMember(cmd.Context(), team, user)
			})
		},
	}
}

func newTeamRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm TEAM USER...",
		Aliases: []string{"remove"},
		Short:   "Take users out of a team",
		Long: `Take users out of TEAM, printing each user's name. What a policy grants
the team is refused to them from their next request. A user not in the
team is an error. Every user is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			team := args[0]
			return c.each(args[1:], "team rm "+team, func(user string) (string, error) {
				return user, cl.RemoveTeamMember(cmd.Context(), team, user)
			})
		},
	}
}
