package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newLsCmd is "cove ls" and its alias "cove session ls".
func newLsCmd(c *cli, use string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     use,
		Aliases: []string{"list", "ps"},
		Short:   "List sessions",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			ss, err := cl.ListSessions(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if ss == nil {
					ss = []api.Session{}
				}
				return printJSON(c, ss)
			}
			return writeSessionTable(c.stdout, ss, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the sessions as a JSON array")
	return cmd
}

// writeSessionTable writes sessions oldest first as ID STATE IMAGE OWNER
// AGENT AGE SNAPSHOT: OWNER is the owner's user id ("admin" for the admin
// token's), AGENT the agent's name or "-", SNAPSHOT the parked snapshot's
// size on disk, or "-".
func writeSessionTable(w io.Writer, ss []api.Session, now time.Time) error {
	ss = slices.Clone(ss)
	slices.SortStableFunc(ss, func(a, b api.Session) int { return a.CreatedAt.Compare(b.CreatedAt) })
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tIMAGE\tOWNER\tAGENT\tAGE\tSNAPSHOT")
	for _, s := range ss {
		snap := "-"
		if s.State == api.StateParked && s.Snapshot != nil {
			snap = humanBytes(s.Snapshot.DiskBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.State, s.Image, dash(s.Owner), dash(s.Agent),
			humanAge(now.Sub(s.CreatedAt)), snap)
	}
	return tw.Flush()
}

// dash is s for a table cell, "-" when it is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanAge renders d in its largest whole unit: 5s, 3m, 2h, 4d.
func humanAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}
