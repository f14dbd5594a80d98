package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newParkCmd is "cove park" and "cove session park".
func newParkCmd(c *cli, use string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " ID...",
		Short: "Save sessions to disk and stop their VMs",
		Long: `Park sessions: save each one's whole VM (memory and devices) to disk and end
its process, so that it holds disk only until woken. Prints "ID STATE" for
each; a session already parked is left as it is. Every id is tried; cove
exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSession(c, cmd, "park", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
				return cl.ParkSession(ctx, id)
			})
		},
	}
}

// newWakeCmd is "cove wake" and "cove session wake".
func newWakeCmd(c *cli, use string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " ID...",
		Short: "Restore parked sessions",
		Long: `Wake parked sessions: restore each VM from its snapshot and wait for its
agent. Prints "ID STATE" for each; a running session is left as it is.
Every id is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSession(c, cmd, "wake", args, func(ctx context.Context, cl *api.Client, id string) (api.Session, error) {
				return cl.WakeSession(ctx, id)
			})
		},
	}
}

// eachSession calls fn for every id in turn, printing "ID STATE" for each
// success and "cove: VERB ID: ERR" for each failure; it fails with exit
// status 1 if any did.
func eachSession(c *cli, cmd *cobra.Command, verb string, ids []string,
	fn func(ctx context.Context, cl *api.Client, id string) (api.Session, error)) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	return c.each(ids, verb, func(id string) (string, error) {
		s, err := fn(cmd.Context(), cl, id)
		return s.ID + " " + s.State, err
	})
}
