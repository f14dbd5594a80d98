package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newTokenCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "token",
		Aliases: []string{"tokens"},
		Short:   "Create, list and revoke API tokens",
		Long: `An API token acts for its user: give it to a client as COVE_TOKEN. The
server keeps only its hash: it is shown once, by 'cove token create', and
never listed. Only admins manage tokens.`,
	})
	cmd.AddCommand(newTokenCreateCmd(c), newTokenLsCmd(c), newTokenRevokeCmd(c))
	return cmd
}

func newTokenCreateCmd(c *cli) *cobra.Command {
	var (
		req     api.CreateTokenRequest
		expires string
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME [--user USER] [--expires DURATION] [--scope SCOPE]...",
		Short: "Create an API token and print it, once",
		Long: `Create an API token for USER (default: yourself; the admin token is no
user, so it must name one). The token is the last line of the output, and
is shown this once: store it now.

--expires takes a duration such as 90d, 720h or 30m; without it the token
works until it is revoked.

--scope narrows the token to an action (session.read) or a family of them
(session.*). A scoped token mints only scoped tokens, each scope within
its own, that expire with it at the latest.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Name == "" {
				return usagef(cmd, "--name is required")
			}
			if cmd.Flags().Changed("expires") {
				d, err := parseExpiry(expires)
				if err != nil {
					return usagef(cmd, "--expires: %v", err)
				}
				req.ExpiresIn = d.String()
			}
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			t, err := cl.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			until := "until revoked"
			if t.ExpiresAt != nil {
				until = "until " + t.ExpiresAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(c.stdout, "Token %s (%s) for user %s, valid %s; shown only this once:\n", t.ID, t.Name, t.User, until)
			fmt.Fprintln(c.stdout, t.Secret)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "what the token is for (required)")
	f.StringVar(&req.User, "user", "", "the user the token acts for (default: yourself)")
	f.StringVar(&expires, "expires", "", "how long the token works: 90d, 720h, 30m (default: until revoked)")
	f.StringArrayVar(&req.Scopes, "scope", nil, "narrow the token to a scope (repeat for more)")
	return cmd
}

// parseExpiry reads a positive duration: a Go duration, or whole days
// ("90d").
func parseExpiry(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 3650 {
			return 0, fmt.Errorf("%q is not a number of days from 1 to 3650", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (like 90d, 720h or 30m)", s)
	}
	return d, nil
}

func newTokenLsCmd(c *cli) *cobra.Command {
	var (
		user   string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls [--user USER]",
		Aliases: []string{"list"},
		Short:   "List API tokens (never their values)",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			toks, err := cl.ListTokens(cmd.Context(), user)
			if err != nil {
				return err
			}
			if asJSON {
				if toks == nil {
					toks = []api.Token{}
				}
				return printJSON(c, toks)
			}
			return writeTokenTable(c.stdout, toks, c.now())
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "only this user's tokens")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the tokens as a JSON array")
	return cmd
}

// writeTokenTable writes tokens as ID NAME USER STATE SCOPES AGE EXPIRES
// LAST-USED, in the server's order (oldest first).
func writeTokenTable(w io.Writer, toks []api.Token, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tUSER\tSTATE\tSCOPES\tAGE\tEXPIRES\tLAST-USED")
	for _, t := range toks {
		user, scopes, expires, used := t.User, strings.Join(t.Scopes, ","), "never", "never"
		if user == "" {
			user = "(removed)"
		}
		if scopes == "" {
			scopes = "-"
		}
		if t.ExpiresAt != nil {
			if d := t.ExpiresAt.Sub(now); d > 0 {
				expires = "in " + humanAge(d)
			} else {
				expires = humanAge(-d) + " ago"
			}
		}
		if t.LastUsedAt != nil {
			used = humanAge(now.Sub(*t.LastUsedAt)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, user, t.State, scopes,
			humanAge(now.Sub(t.CreatedAt)), expires, used)
	}
	return tw.Flush()
}

func newTokenRevokeCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID...",
		Short: "Revoke API tokens at once",
		Long: `Revoke tokens by id (see 'cove token ls'), printing each revoked id; they
are refused from the next request on. Every id is tried; cove exits 1 if
any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.identityClient()
			if err != nil {
				return err
			}
			return c.each(args, "token revoke", func(id string) (string, error) {
				_, err := cl.RevokeToken(cmd.Context(), id)
				return id, err
			})
		},
	}
}
