package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// maxPool mirrors the server's limit on a template's warm pool.
const maxPool = 64

func newTemplateCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "Build, list, inspect and remove templates",
		Long: `A template is a session booted once, set up and saved to disk. Sessions
created with 'cove session create --template NAME' restore a copy-on-write
clone of it instead of booting.`,
	})
	cmd.AddCommand(
		newTemplateCreateCmd(c),
		newTemplateLsCmd(c),
		newTemplateInspectCmd(c),
		newTemplateRmCmd(c),
	)
	return cmd
}

func newTemplateCreateCmd(c *cli) *cobra.Command {
	var (
		req api.CreateTemplateRequest
		env []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME [flags]",
		Short: "Build a template and print it",
		Long: `Build a template: boot the image, run each --setup command in order with
sh -c (the first failure fails the template, with its output), leave the
--start command running in the background, and save the machine. Every
clone has the start command already running. --pool keeps that many clones
restored and ready, so that a session created from the template need not
wait for a restore.

This takes seconds to minutes. Progress goes to stderr; the template is
printed as one line on stdout once it is ready. Unset flags take the
server's defaults, as for 'cove session create'.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			var err error
			if req.Env, err = parseEnv(env); err != nil {
				return usagef(cmd, "%v", err)
			}
			for _, s := range req.Setup {
				if strings.TrimSpace(s) == "" {
					return usagef(cmd, "--setup needs a command")
				}
			}
			if req.Pool < 0 || req.Pool > maxPool {
				return usagef(cmd, "--pool %d is out of range (0..%d)", req.Pool, maxPool)
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "building template %s…\n", req.Name)
			t, err := cl.CreateTemplate(cmd.Context(), req)
			if err != nil {
				return err
			}
			if t.State == api.TemplateFailed {
				return fmt.Errorf("template %s failed: %s", t.Name, t.Error)
			}
			fmt.Fprintln(c.stdout, templateLine(t))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image to boot")
	f.IntVar(&req.MemoryMiB, "memory", 0, "guest memory in MiB")
	f.IntVar(&req.CPUs, "cpus", 0, "guest CPUs")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE for setup, start and every clone (repeatable)")
	f.StringArrayVar(&req.Setup, "setup", nil, "command to run with sh -c before saving (repeatable, run in order)")
	f.StringVar(&req.Start, "start", "", "command left running in the background in every clone")
	f.IntVar(&req.Pool, "pool", 0, fmt.Sprintf("clones to keep restored and ready (0..%d)", maxPool))
	return cmd
}

// templateLine is one template on one line:
// "NAME STATE image=IMAGE snapshot=SIZE pool=N".
func templateLine(t api.Template) string {
	return fmt.Sprintf("%s %s image=%s snapshot=%s pool=%d", t.Name, t.State, t.Image, snapshotSize(t.Snapshot), t.Pool)
}

// snapshotSize is a snapshot's size on disk, or "-" for none.
func snapshotSize(s *api.SnapshotInfo) string {
	if s == nil {
		return "-"
	}
	return humanBytes(s.DiskBytes)
}

func newTemplateLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List templates",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			ts, err := cl.ListTemplates(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if ts == nil {
					ts = []api.Template{}
				}
				return printJSON(c, ts)
			}
			return writeTemplateTable(c.stdout, ts, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the templates as a JSON array")
	return cmd
}

// writeTemplateTable writes templates by name as NAME STATE IMAGE POOL
// READY SNAPSHOT AGE: READY is how many pool clones are ready now,
// SNAPSHOT the saved machine's size on disk.
func writeTemplateTable(w io.Writer, ts []api.Template, now time.Time) error {
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b api.Template) int { return strings.Compare(a.Name, b.Name) })
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tPOOL\tREADY\tSNAPSHOT\tAGE")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", t.Name, t.State, t.Image, t.Pool, t.PoolReady,
			snapshotSize(t.Snapshot), humanAge(now.Sub(t.CreatedAt)))
	}
	return tw.Flush()
}

func newTemplateInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print a template as JSON",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			t, err := cl.GetTemplate(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(c, t)
		},
	}
}

func newTemplateRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove templates",
		Long: `Remove templates and their warm pools, printing each removed name. A
template that sessions were cloned from cannot be removed while they exist.
Every name is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			return c.each(args, "template rm", func(name string) (string, error) {
				return name, cl.DeleteTemplate(cmd.Context(), name)
			})
		},
	}
}
