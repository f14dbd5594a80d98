package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newParkCmd is "cove park" and "cove session park".
func newParkCmd(c *cli, use string) *cobra.Command {
	var (
		until   []string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   use + " ID... [--until EXPR]... [--timeout D]",
		Short: "Save sessions to disk and stop their VMs",
		Long: `Park sessions: save each one's whole VM (memory and devices) to disk and end
its process, so that it holds disk only until woken. Prints "ID STATE" for
each; a session already parked is left as it is. Every id is tried; cove
exits 1 if any failed.

With --until or --timeout, park one session until an event wakes it: the
first webhook delivery matching any --until expression, or the end of
--timeout. An expression is SOURCE:EVENT [KEY=VALUE]..., for example

  cove park s1 --until 'github:check_suite.completed repo=acme/api' --timeout 6h

'cove session inspect ID' shows what a parked session waits for.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			if !f.Changed("until") && !f.Changed("timeout") {
				return eachSession(c, cmd, "park", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
					return cl.ParkSession(ctx, id)
				})
			}
			if len(args) != 1 {
				return usagef(cmd, "--until and --timeout park one session; got %d ids", len(args))
			}
			var req api.ParkRequest
			for _, e := range until {
				if strings.TrimSpace(e) == "" {
					return usagef(cmd, "--until needs an expression")
				}
			}
			req.Until = until
			if f.Changed("timeout") {
				if timeout <= 0 {
					return usagef(cmd, "--timeout must be positive")
				}
				req.Timeout = timeout.String()
			}
			return eachSession(c, cmd, "park", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
				return cl.ParkSessionUntil(ctx, id, req)
			})
		},
	}
	cmd.Flags().StringArrayVar(&until, "until", nil, "wake on the first event matching this trigger expression (repeatable)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "wake after this long if no event matched (at most 720h)")
	return cmd
}

// newWakeCmd is "cove wake" and "cove session wake".
func newWakeCmd(c *cli, use string) *cobra.Command {
	var fromLast bool
	cmd := &cobra.Command{
		Use:   use + " ID...",
		Short: "Restore parked sessions",
		Long: `Wake parked sessions: restore each VM from its snapshot and wait for its
agent. Prints "ID STATE" for each; a running session is left as it is.
Every id is tried; cove exits 1 if any failed.

With --from-last-snapshot, a lost session (its node died while it ran) or a
failed one comes back from its last stored snapshot instead: the work done
since that snapshot is gone ('cove session inspect' shows its time as
last_snapshot_at).`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSession(c, cmd, "wake", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
				if fromLast {
					return cl.WakeSessionFromLastSnapshot(ctx, id)
				}
				return cl.WakeSession(ctx, id)
			})
		},
	}
	cmd.Flags().BoolVar(&fromLast, "from-last-snapshot", false, "bring a lost or failed session, or a parked one whose latest snapshot is on a dead node only, back from its last stored snapshot (the work since is lost)")
	return cmd
}

// eachSession calls fn for every id in turn, printing "ID STATE" for each
// success and "cove: VERB ID: ERR" for each failure; it fails with exit
// status 1 if any did.
func eachSession(c *cli, cmd *cobra.Command, verb string, ids []string,
	fn func(ctx context.Context, cl *api.Client, id string) (api.Session, error)) error {
	cl, err := c.client(cmd.Context())
	if err != nil {
		return err
	}
	return c.each(ids, verb, func(id string) (string, error) {
		s, err := fn(cmd.Context(), cl, id)
		return s.ID + " " + s.State, err
	})
}
