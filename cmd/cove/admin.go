package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newAdminCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "admin",
		Short: "Server upkeep (admins)",
	})
	cmd.AddCommand(newAdminGCCmd(c))
	return cmd
}

func newAdminGCCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Collect the object store's garbage now",
		Long: `Run one garbage collection of the server's object store now, as its
schedule does (cove server --gc-interval): manifests and chunks that no
session, template version or image record names, nor anything those rest
on, are deleted once older than --gc-grace. Uploads under way are safe.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			res, err := cl.CollectGarbage(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, res)
			}
			_, err = fmt.Fprintf(c.stdout, "deleted %d manifests and %d chunks (%s); kept %d manifests, %d chunks, %d chunks younger than the grace\n",
				res.ManifestsDeleted, res.ChunksDeleted, humanBytes(res.BytesDeleted), res.ManifestsKept, res.ChunksKept, res.ChunksYoung)
			if err == nil && len(res.Broken) > 0 {
				_, err = fmt.Fprintf(c.stdout, "missing or corrupt in the object store (they can restore nothing; collected without them): %s\n", strings.Join(res.Broken, ", "))
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what the GC did as JSON")
	return cmd
}
