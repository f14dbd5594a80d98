package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newRmCmd is "cove rm" and "cove session rm".
func newRmCmd(c *cli, use string) *cobra.Command {
	return &cobra.Command{
		Use:     use + " ID...",
		Aliases: []string{"remove", "delete"},
		Short:   "Stop and remove sessions",
		Long: `Stop and remove sessions, printing each removed id. Every id is tried;
cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			failed := false
			for _, id := range args {
				if err := cl.DeleteSession(cmd.Context(), id); err != nil {
					fmt.Fprintf(c.stderr, "cove: rm %s: %v\n", id, err)
					failed = true
					continue
				}
				fmt.Fprintln(c.stdout, id)
			}
			if failed {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}
