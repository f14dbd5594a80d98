package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newUserCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "user",
		Aliases: []string{"users"},
		Short:   "Add, list and remove users",
		Long: `Users are who acts on cove: engineers, service accounts (CI, bots) and
admins. A local user signs in with API tokens that an admin mints for it
('cove token create --user NAME'). Only admins manage users.`,
	})
	cmd.AddCommand(newUserAddCmd(c), newUserLsCmd(c), newUserRmCmd(c))
	return cmd
}

func newUserAddCmd(c *cli) *cobra.Command {
	var (
		kind  string
		teams []string
	)
	cmd := &cobra.Command{
		Use:   "add NAME [--kind engineer|service|admin] [--team TEAM]...",
		Short: "Add a local user",
		Long: `Add a local user and print its name. NAME is lower case: letters, digits
and . _ @ -. A user is an engineer unless --kind says otherwise. A NAME that
was an OIDC user's until 'cove user rm' re-adds that user: its sign-in
works again, as the new user.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch kind {
			case api.UserEngineer, api.UserService, api.UserAdmin:
			default:
				return usagef(cmd, "--kind %q is not one of engineer, service, admin", kind)
			}
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			u, err := cl.AddUser(cmd.Context(), api.CreateUserRequest{Name: args[0], Kind: kind, Teams: teams})
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, u.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", api.UserEngineer, "engineer, service (CI, bots) or admin")
	f.StringArrayVar(&teams, "team", nil, "a team the user is in (repeat for more)")
	return cmd
}

func newUserLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List users",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			users, err := cl.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if users == nil {
					users = []api.User{}
				}
				return printJSON(c, users)
			}
			return writeUserTable(c.stdout, users, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the users as a JSON array")
	return cmd
}

// writeUserTable writes users as NAME KIND TEAMS AGE, in the server's
// order (by name).
func writeUserTable(w io.Writer, users []api.User, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tTEAMS\tAGE")
	for _, u := range users {
		teams := strings.Join(u.Teams, ",")
		if teams == "" {
			teams = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, u.Kind, teams, humanAge(now.Sub(u.CreatedAt)))
	}
	return tw.Flush()
}

func newUserRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove users and revoke their tokens",
		Long: `Remove users, printing each removed name. Their API tokens are revoked at
once (they stay in 'cove token ls', revoked). An OIDC user stays out: its
sign-in is refused until an admin runs 'cove user add NAME' again. Every
name is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			return c.each(args, "user rm", func(name string) (string, error) {
				return name, cl.RemoveUser(cmd.Context(), name)
			})
		},
	}
}
