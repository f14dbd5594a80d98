package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newSessionCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "session",
		Aliases: []string{"sessions"},
		Short:   "Create, list, inspect, park, wake and remove sessions",
	})
	cmd.AddCommand(
		newSessionCreateCmd(c),
		newSessionInspectCmd(c),
		newLsCmd(c, "ls"),
		newRmCmd(c, "rm"),
		newParkCmd(c, "park"),
		newWakeCmd(c, "wake"),
		newSessionRevokeCmd(c),
		newSessionEventsCmd(c),
	)
	return cmd
}

func newSessionRevokeCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID...",
		Short: "Invalidate sessions' identity tokens at once (the kill switch)",
		Long: `Invalidate every identity token each session was given ('cove-agent token'
in the guest), at once and for good: cove's API refuses them, and the session
gets no token again ('cove-agent token' says its identity was revoked). The
VM keeps running. Systems outside cove check only a token's signature and
exp: there a token already handed out holds until its exp (5m by default,
1h at most). Prints "ID STATE" for each; every id is tried; cove exits 1 if
any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSession(c, cmd, "revoke", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
				return cl.RevokeSession(ctx, id)
			})
		},
	}
}

func newSessionEventsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events ID",
		Short: "List the events due to a session and their deliveries",
		Long: `List the incoming events (webhook deliveries, timeouts) that matched what the
session parked until, oldest first, with the state of each one's delivery:
pending, delivered (written into the guest), or failed with the reason.
--json prints them as a JSON array, each with its body as the guest got it.
The session's owner and admins may read them, and so may the session's own
identity token ('cove-agent token').`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			evs, err := cl.AllSessionEvents(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				if evs == nil {
					evs = []api.SessionEvent{}
				}
				return printJSON(c, evs)
			}
			return writeEventTable(c.stdout, evs, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the events as a JSON array, with their bodies")
	return cmd
}

// writeEventTable writes a session's events as SEQ EVENT ID STATE AGE
// ERROR: EVENT is source:name, ID the sender's delivery id, AGE how long
// ago the event arrived, ERROR why a failed delivery failed, or "-".
func writeEventTable(w io.Writer, evs []api.SessionEvent, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tEVENT\tID\tSTATE\tAGE\tERROR")
	for _, e := range evs {
		fmt.Fprintf(tw, "%d\t%s:%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Source, e.Name, dash(e.ID), e.State,
			humanAge(now.Sub(e.Received)), dash(strings.Join(strings.Fields(e.Error), " ")))
	}
	return tw.Flush()
}

func newSessionCreateCmd(c *cli) *cobra.Command {
	var (
		req         api.CreateSessionRequest
		env         []string
		selector    []string
		bootTimeout time.Duration
		idleTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Boot a session and print its id",
		Long: `Boot a session and print its id alone on stdout once its agent answers.
Unset flags take the server's defaults (image "tiny", 512 MiB, 1 CPU).

With --template the session is a clone of that template's saved machine
(restored, not booted); its image, memory and CPUs are the template's.
--idle-timeout parks the session after that long without API activity
(0s: never; unset: the server's default).

The session is yours (its owner is the user of your token), and --agent
names the agent it runs; 'cove ls' shows both. A clone is its creator's,
with its own agent, whoever owns the template.

The create carries a random Idempotency-Key: when its answer is lost (the
connection cut, or a 503), it is sent once more with the same key, which
answers the session the first made, if it made one, never a second.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if req.Env, err = parseEnv(env); err != nil {
				return usagef(cmd, "%v", err)
			}
			if req.NodeSelector, err = parseLabels("--node-selector", selector); err != nil {
				return usagef(cmd, "%v", err)
			}
			if bootTimeout < 0 {
				return usagef(cmd, "--boot-timeout must not be negative")
			}
			if bootTimeout > 0 {
				req.BootTimeout = bootTimeout.String()
			}
			if req.Template != "" && (req.Image != "" || req.MemoryMiB != 0 || req.CPUs != 0) {
				return usagef(cmd, "--template cannot be combined with --image, --memory or --cpus (the template sets them)")
			}
			if cmd.Flags().Changed("idle-timeout") {
				if idleTimeout < 0 {
					return usagef(cmd, "--idle-timeout must not be negative (0s: never)")
				}
				req.IdleTimeout = idleTimeout.String()
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := createOnce(cmd.Context(), cl, req, c.stderr)
			if err != nil {
				return err
			}
			if s.State == api.StateFailed {
				return fmt.Errorf("session %s failed: %s", s.ID, s.Error)
			}
			fmt.Fprintln(c.stdout, s.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image to boot")
	f.IntVar(&req.MemoryMiB, "memory", 0, "guest memory in MiB")
	f.IntVar(&req.CPUs, "cpus", 0, "guest CPUs")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE for every command (repeatable)")
	f.DurationVar(&bootTimeout, "boot-timeout", 0, "how long to wait for the guest to boot (e.g. 60s)")
	f.StringVar(&req.Template, "template", "", "clone this template instead of booting an image")
	f.DurationVar(&idleTimeout, "idle-timeout", 0, "park the session after this long without API activity (0s: never; default: the server's)")
	f.BoolVar(&req.NoAutoWake, "no-auto-wake", false, "make exec and file calls on the parked session fail instead of waking it")
	f.StringVar(&req.Agent, "agent", "", "name of the agent the session runs, e.g. review-bot (lowercase letters, digits, '.', '_', '-')")
	f.StringArrayVar(&selector, "node-selector", nil, "place the session only on a node with this label: KEY=VALUE (repeatable, or comma-separated; see 'cove node ls')")
	f.StringArrayVar(&req.Allow, "allow", nil, "egress the session may use, through the host's proxy: '[METHOD,…] HOST[:PORT,…][/PATH]', e.g. github.com, '*.pypi.org', 'GET api.github.com/repos/' (repeatable; default: none)")
	return cmd
}

func newSessionInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect ID",
		Short: "Print a session as JSON",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.GetSession(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(c, s)
		},
	}
}

// printJSON writes v as indented JSON on stdout.
func printJSON(c *cli, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

// createOnce creates a session with a random idempotency key, and sends
// the create once more, with the same key, when its answer was lost (a
// transport error) or the server was unavailable (503): the retry answers
// the session the first call made, if it made one, never a second.
func createOnce(ctx context.Context, cl *api.Client, req api.CreateSessionRequest, stderr io.Writer) (api.Session, error) {
	key := api.NewIdempotencyKey()
	s, err := cl.CreateSessionKeyed(ctx, key, req)
	var apiErr *api.Error
	if err == nil || ctx.Err() != nil || (errors.As(err, &apiErr) && apiErr.Code != api.CodeUnavailable) {
		return s, err
	}
	fmt.Fprintf(stderr, "cove: create: %v; retrying once with the same idempotency key\n", err)
	return cl.CreateSessionKeyed(ctx, key, req)
}
