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
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.each(args, "rm", func(id string) (string, error) {
				return id, cl.DeleteSession(cmd.Context(), id)
			})
		},
	}
}

// each runs f for every argument, printing f's line for each success and
// an error line for each failure; every argument is tried, and the command
// fails (exit 1) if any did.
func (c *cli) each(args []string, verb string, f func(arg string) (string, error)) error {
	failed := false
	for _, a := range args {
		line, err := f(a)
		if err != nil {
			fmt.Fprintf(c.stderr, "cove: %s %s: %v\n", verb, a, err)
			failed = true
			continue
		}
		fmt.Fprintln(c.stdout, line)
	}
	if failed {
		return &exitError{code: 1}
	}
	return nil
}
