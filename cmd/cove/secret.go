package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cove-dev/cove/api"
)

func newSecretCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "secret",
		Aliases: []string{"secrets"},
		Short:   "Set, list and remove the secrets sessions use on the network",
		Long: `A secret is a credential that cove's egress proxy adds, as a header, to
the requests a session makes to the secret's hosts: the guest never sees
it. A secret is yours, a team's or a template's; a session gets its
owner's, its owner's teams' and its template's, and by name yours win
over a team's, and a team's over the template's.

The server keeps a secret encrypted, with a key apart from its database,
and no command ever prints a value. By the built-in policy you manage
your own secrets and your templates'; a team's members list the team's,
and admins set and remove them.`,
	})
	cmd.AddCommand(newSecretSetCmd(c), newSecretLsCmd(c), newSecretRmCmd(c))
	return cmd
}

// secretOwnerFlags are the flags that say whose secret a command is
// about: at most one; none is your own.
type secretOwnerFlags struct{ api.SecretOwner }

func (o *secretOwnerFlags) add(cmd *cobra.Command, withUser bool) {
	cmd.Flags().StringVar(&o.Team, "team", "", "a team's secret")
	cmd.Flags().StringVar(&o.Template, "template", "", "a template's secret")
	if withUser {
		cmd.Flags().StringVar(&o.User, "user", "", "another user's secret (admins)")
	}
}

// check refuses more than one owner.
func (o *secretOwnerFlags) check(cmd *cobra.Command) error {
	n := 0
	for _, s := range []string{o.Team, o.Template, o.User} {
		if s != "" {
			n++
		}
	}
	if o.All {
		n++
	}
	if n > 1 {
		return usagef(cmd, "name at most one owner: --team, --template, --user or --all")
	}
	return nil
}

func newSecretSetCmd(c *cli) *cobra.Command {
	var (
		owner  secretOwnerFlags
		hosts  []string
		header string
	)
	cmd := &cobra.Command{
		Use:   "set NAME --host HOST... --header 'NAME: ...{{value}}...' [--team T | --template T | --user U]",
		Short: "Set a secret, its value read from stdin",
		Long: `Set (create or replace) the secret NAME, reading its value from stdin:
from a terminal, typed without echo; else all of stdin, less one trailing
newline ('printf %s "$TOKEN" | cove secret set …', or '< file'). An empty
value is refused.

--host names a host the secret goes to: an exact name (github.com) or
*.suffix for any name below suffix (*.githubusercontent.com). Repeat it.

--header says where the value goes: an HTTP header and its value with
{{value}} once where the secret is, as in
  --header 'Authorization: Bearer {{value}}'
  --header 'PRIVATE-TOKEN: {{value}}'

Without --team, --template or --user the secret is yours.`,
		Example: `  printf %s "$GITHUB_TOKEN" | cove secret set github --host github.com --host api.github.com \
      --header 'Authorization: Bearer {{value}}'`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := owner.check(cmd); err != nil {
				return err
			}
			if len(hosts) == 0 {
				return usagef(cmd, "--host is required (the hosts the secret goes to)")
			}
			if header == "" {
				return usagef(cmd, "--header is required, as in --header 'Authorization: Bearer {{value}}'")
			}
			value, err := c.readSecretValue()
			if err != nil {
				return err
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.PutSecret(cmd.Context(), args[0], api.PutSecretRequest{Value: value, Hosts: hosts, Header: header,
				Team: owner.Team, Template: owner.Template, User: owner.User})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.stdout, "%s\n", s.Name)
			return err
		},
	}
	owner.add(cmd, true)
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "a host the secret goes to: NAME or *.SUFFIX (repeat)")
	cmd.Flags().StringVar(&header, "header", "", "the header it goes in, with {{value}} once: 'Authorization: Bearer {{value}}'")
	return cmd
}

// readSecretValue reads a secret's value from stdin: without echo from a
// terminal, else all of it (up to a limit) less one trailing newline.
// An empty value is an error.
func (c *cli) readSecretValue() (string, error) {
	var v string
	if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(c.stderr, "Value (not echoed): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return "", fmt.Errorf("secret set: read the value: %w", err)
		}
		v = string(b)
	} else {
		// Well over the server's limit, so that a value too large is the
		// server's clear 400, not cut short here.
		b, err := io.ReadAll(io.LimitReader(bufio.NewReader(c.stdin), 1<<20))
		if err != nil {
			return "", fmt.Errorf("secret set: read the value from stdin: %w", err)
		}
		v = string(b)
		if s, ok := strings.CutSuffix(v, "\n"); ok {
			v = strings.TrimSuffix(s, "\r")
		}
	}
	if v == "" {
		return "", errors.New("secret set: empty value on stdin (pipe it in: printf %s \"$TOKEN\" | cove secret set …)")
	}
	return v, nil
}

func newSecretLsCmd(c *cli) *cobra.Command {
	var (
		owner  secretOwnerFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls [--team T | --template T | --user U | --all] [--json]",
		Aliases: []string{"list"},
		Short:   "List secrets: names, owners, hosts and headers, never values",
		Long: `List your secrets, a team's (--team), a template's (--template), another
user's (--user, admins) or every owner's (--all, admins). No value is ever
shown.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := owner.check(cmd); err != nil {
				return err
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			list, err := cl.ListSecrets(cmd.Context(), owner.SecretOwner)
			if err != nil {
				return err
			}
			if asJSON {
				if list == nil {
					list = []api.Secret{}
				}
				return printJSON(c, list)
			}
			return writeSecretTable(c.stdout, list, c.now())
		},
	}
	owner.add(cmd, true)
	cmd.Flags().BoolVar(&owner.All, "all", false, "every owner's secrets (admins)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the secrets as a JSON array")
	return cmd
}

// writeSecretTable writes secrets as NAME OWNER HOSTS HEADER UPDATED, in
// the server's order (by owner, then name).
func writeSecretTable(w io.Writer, list []api.Secret, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tOWNER\tHOSTS\tHEADER\tUPDATED")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\n", s.Name, s.OwnerKind, s.Owner, strings.Join(s.Hosts, ","),
			s.Header, humanAge(now.Sub(s.UpdatedAt)))
	}
	return tw.Flush()
}

func newSecretRmCmd(c *cli) *cobra.Command {
	var owner secretOwnerFlags
	cmd := &cobra.Command{
		Use:     "rm NAME... [--team T | --template T | --user U]",
		Aliases: []string{"remove"},
		Short:   "Remove secrets",
		Long: `Remove the named secrets (yours, or a team's, a template's or another
user's), printing each name; sessions' next requests go without them.
Every name is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := owner.check(cmd); err != nil {
				return err
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.each(args, "secret rm", func(name string) (string, error) {
				return name, cl.DeleteSecret(cmd.Context(), name, owner.SecretOwner)
			})
		},
	}
	owner.add(cmd, true)
	return cmd
}
