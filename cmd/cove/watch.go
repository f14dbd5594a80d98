package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newWatchCmd is "cove watch".
func newWatchCmd(c *cli) *cobra.Command {
	var recursive, asJSON bool
	cmd := &cobra.Command{
		Use:   "watch ID PATH [-r] [--json]",
		Short: "Print the changes under a directory in a session's guest",
		Long: `Watch directory PATH in session ID's guest and print each change as it happens,
"TYPE NAME" a line: TYPE is create, write, remove, rename (moved away; the new
name is a create) or chmod, NAME the entry's path relative to PATH. -r watches
the subdirectories too, those made later included. A line "overflow N" says
N events were dropped because the watch fell behind. --json prints each event
as a JSON object, one a line.

The watch runs until interrupted, or until the session parks or stops or
PATH goes away; a parked session is woken first.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return cl.Watch(cmd.Context(), args[0], args[1], recursive, func(ev api.WatchEvent) error {
				if asJSON {
					b, err := json.Marshal(ev)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(c.stdout, "%s\n", b)
					return err
				}
				if ev.Type == "overflow" {
					_, err := fmt.Fprintf(c.stdout, "overflow %d\n", ev.Dropped)
					return err
				}
				_, err := fmt.Fprintf(c.stdout, "%s %s\n", ev.Type, ev.Name)
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "watch the subdirectories too")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as a JSON object")
	return cmd
}
