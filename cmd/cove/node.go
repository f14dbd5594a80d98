package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// newNodeCmd is "cove node": run bare, this host's node agent (see
// nodeagent.go); its subcommands manage the nodes (admins).
func newNodeCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run this host's node agent; manage the nodes, the hosts that run the sessions' VMs (admins)",
		Long: `The nodes are the hosts that run the sessions' VMs: the embedded node of
each 'cove server' (unless --node=false), and the 'cove node' agents that
joined. 'cove node ls' shows each one's state: ready, cordoned,
draining, or dead once it stopped heartbeating for longer than the
servers' --node-grace.

` + nodeAgentLong,
	}
	cmd.AddCommand(newNodeLsCmd(c), newNodeInspectCmd(c),
		newNodeAdminCmd(c, "cordon", "Stop a node from taking new sessions (its sessions stay)"),
		newNodeAdminCmd(c, "uncordon", "Let a cordoned or draining node take new sessions again"),
		newNodeDrainCmd(c), newNodeRmCmd(c))
	addNodeAgent(cmd)
	return cmd
}

func newNodeLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the nodes",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			ns, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if ns == nil {
					ns = []api.Node{}
				}
				return printJSON(c, ns)
			}
			return writeNodeTable(c.stdout, ns, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the nodes as a JSON array")
	return cmd
}

// writeNodeTable writes the nodes as NAME ID STATE VCPUS MEMORY ACCEL
// SESSIONS HEARTBEAT: SESSIONS is running/held, HEARTBEAT how long ago
// the last one came.
func writeNodeTable(w io.Writer, ns []api.Node, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSTATE\tVCPUS\tMEMORY\tACCEL\tSESSIONS\tHEARTBEAT")
	for _, n := range ns {
		hb := "-"
		if !n.HeartbeatAt.IsZero() {
			hb = humanAge(now.Sub(n.HeartbeatAt)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d/%d\t%s\n", n.Name, n.ID, n.State, n.Capacity.VCPUs,
			humanBytes(n.Capacity.MemoryMiB<<20), dash(n.Capacity.Accel), n.Running, n.Sessions, hb)
	}
	return tw.Flush()
}

func newNodeInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NODE",
		Short: "Print a node (by id or name) as JSON",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			n, err := cl.GetNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(c, n)
		},
	}
}

// newNodeAdminCmd is "cove node cordon" or "cove node uncordon".
func newNodeAdminCmd(c *cli, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " NODE",
		Short: short,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			op := cl.CordonNode
			if verb == "uncordon" {
				op = cl.UncordonNode
			}
			n, err := op(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.stdout, "%s (%s): %s\n", n.Name, n.ID, n.State)
			return err
		},
	}
}

func newNodeDrainCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "drain NODE",
		Short: "Cordon a node and park every session running on it",
		Long: `Set the node draining: it takes no new session and keeps no warm pool,
and every session running on it is parked (its whole VM saved, and stored
in the object store before the command returns). Each then wakes on another
node on its next call, and the node ends empty ('cove node cordon' instead
keeps its sessions on it). 'cove node uncordon' ends the drain. In this
version only the embedded node's sessions are parked; a remote node is only
set draining. A session that could not be parked or stored is listed, and
the command fails; drain again to try again.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			res, err := cl.DrainNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s (%s): %s; parked %d sessions\n", res.Node.Name, res.Node.ID, res.Node.State, res.Parked)
			if len(res.Errors) > 0 {
				return fmt.Errorf("%d sessions were not parked, or not stored:\n  %s", len(res.Errors), strings.Join(res.Errors, "\n  "))
			}
			return nil
		},
	}
}

func newNodeRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NODE",
		Short: "Remove a node's record (refused while it holds sessions, unless it is dead)",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return cl.RemoveNode(cmd.Context(), args[0])
		},
	}
}

// parseLabels parses KEY=VALUE labels (--node-selector); flag names the
// flag in errors.
func parseLabels(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		for part := range strings.SplitSeq(kv, ",") {
			k, v, ok := strings.Cut(part, "=")
			if !ok || k == "" || strings.ContainsAny(k, " \t\n\x00") {
				return nil, fmt.Errorf("invalid %s %q: want KEY=VALUE", flag, part)
			}
			out[k] = v
		}
	}
	return out, nil
}
