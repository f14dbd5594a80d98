package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newCheckpointCmd is "cove checkpoint".
func newCheckpointCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "checkpoint",
		Short: "Save a running session's whole machine, list and remove checkpoints",
		Long: `A checkpoint is a session's whole machine (memory, processes, disk) saved
while it runs on: 'cove rollback' puts the session back to it, 'cove fork'
makes new sessions from it. Checkpoints share unchanged disk data with
each other, with the session and with its template or image. They live on
the server's host.`,
	})
	cmd.AddCommand(newCheckpointCreateCmd(c), newCheckpointLsCmd(c), newCheckpointInspectCmd(c), newCheckpointRmCmd(c))
	return cmd
}

func newCheckpointCreateCmd(c *cli) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "create ID [--name NAME]",
		Short: "Checkpoint a running session; it runs on",
		Long: `Save a running session's whole machine as a checkpoint; the session is
paused for the time it takes (printed) and runs on. Prints "NAME SIZE
PAUSE". A parked session is refused: wake it first.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			ck, err := cl.CreateCheckpoint(cmd.Context(), args[0], api.CheckpointRequest{Name: name})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.stdout, "%s %s %dms\n", ck.Name, humanBytes(ck.Bytes), ck.PauseMillis)
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the checkpoint's name (default ckpt-N)")
	return cmd
}

func newCheckpointLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls ID",
		Short: "List a session's checkpoints",
		Long:  `List a session's checkpoints, oldest first: NAME CREATED SIZE PAUSE.`,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			list, err := cl.ListCheckpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, list)
			}
			return writeCheckpointTable(c.stdout, list, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checkpoints as a JSON array")
	return cmd
}

// writeCheckpointTable writes checkpoints as NAME CREATED SIZE PAUSE:
// CREATED is their age, SIZE the disk their own files take.
func writeCheckpointTable(w io.Writer, list []api.Checkpoint, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCREATED\tSIZE\tPAUSE")
	for _, ck := range list {
		fmt.Fprintf(tw, "%s\t%s ago\t%s\t%dms\n", ck.Name, humanAge(now.Sub(ck.CreatedAt)), humanBytes(ck.Bytes), ck.PauseMillis)
	}
	return tw.Flush()
}

func newCheckpointInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect ID NAME",
		Short: "Print a checkpoint as JSON (its size and the pause it took)",
		Args:  usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			ck, err := cl.GetCheckpoint(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return printJSON(c, ck)
		},
	}
}

func newCheckpointRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID NAME...",
		Short: "Remove checkpoints of a session",
		Long: `Remove checkpoints of a session. Every name is tried; cove exits 1 if any
failed. A checkpoint's disk layer goes too unless the session or another
checkpoint rests on it. Forks made from a checkpoint keep working (they
have copies).`,
		Args: usageArgs(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			id := args[0]
			return c.each(args[1:], "remove checkpoint", func(name string) (string, error) {
				return id + " " + name + " removed", cl.DeleteCheckpoint(cmd.Context(), id, name)
			})
		},
	}
}

// newRollbackCmd is "cove rollback".
func newRollbackCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback ID NAME",
		Short: "Put a session back to one of its checkpoints",
		Long: `Put a session back to its checkpoint NAME: memory, processes and disk as
they were then. Writes and processes since are gone; commands attached to
it end with "rolled back to checkpoint NAME". The session keeps its id,
owner, network policy and checkpoints. Prints "ID STATE".`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Rollback(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.stdout, "%s %s\n", s.ID, s.State)
			return err
		},
	}
}

// newForkCmd is "cove fork".
func newForkCmd(c *cli) *cobra.Command {
	var req api.ForkRequest
	cmd := &cobra.Command{
		Use:   "fork ID [-n N] [--from NAME]",
		Short: "Make new sessions from a session's running state or checkpoint",
		Long: `Make N new sessions (1 to 16) from a session: from its checkpoint NAME
(--from), or from a checkpoint taken of it now. Each fork has its own id,
identity tokens and random state, the session's owner, and its own files:
removing the parent leaves it working. Prints the forks' ids, one a line.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.N < 1 || req.N > 16 {
				return usagef(cmd, "-n must be 1 to 16")
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			forks, err := cl.Fork(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			for _, s := range forks {
				if _, err := fmt.Fprintln(c.stdout, s.ID); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&req.N, "n", "n", 1, "how many forks")
	cmd.Flags().StringVar(&req.From, "from", "", "the checkpoint to fork from (default: one taken now)")
	return cmd
}
