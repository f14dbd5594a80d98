package main

import "github.com/spf13/cobra"

// newNodeCmd is 'cove node': run bare, this host's node agent.
func newNodeCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run this host's node agent (a VM host of the servers)",
		Long:  nodeAgentLong,
	}
	addNodeAgent(cmd)
	return cmd
}
