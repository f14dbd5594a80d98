package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
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
		newTemplateHistoryCmd(c),
		newTemplateRebuildCmd(c),
		newTemplatePoolCmd(c),
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

With --repo, the server fetches the repository's --branch (default main)
with its own git credentials, none of which enter the guest, and checks it
out at --repo-dir (default /workspace) before the setup commands; the image
needs git (debian has it). A GitHub push to that branch (the webhook
'github', see 'cove hook') rebuilds the template from its current version:
only the new commits are fetched, the setup commands run again on top of
the last build, the start command is restarted, and the new version
replaces the old one and refills the pool. Sessions of an older version
keep running on it; its files go when the last of them does. See 'cove
template history' and 'cove template rebuild'.

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
			if req.Repo == "" && (req.Branch != "" || req.RepoDir != "") {
				return usagef(cmd, "--branch and --repo-dir need --repo")
			}
			cl, err := c.client(cmd.Context())
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
	f.StringVar(&req.Repo, "repo", "", "git repository to check out and follow (URL or absolute path on the server)")
	f.StringVar(&req.Branch, "branch", "", "branch of --repo to build and follow (default main)")
	f.StringVar(&req.RepoDir, "repo-dir", "", "where the checkout lives in the guest (default /workspace)")
	f.StringVar(&req.Agent, "agent", "", "name of the agent the template is made for (its clones name their own)")
	f.StringVar(&req.FromCheckpoint, "from-checkpoint", "", "make the template from a session's checkpoint, ID:NAME (its machine and env; no --image, --memory, --cpus, --setup, --start or --repo)")
	f.StringArrayVar(&req.Allow, "allow", nil, "egress its sessions may use, on top of their own (as session create --allow; repeatable)")
	return cmd
}

// templateLine is one template on one line:
// "NAME STATE image=IMAGE snapshot=SIZE pool=N".
// A template built from a repo adds " version=N commit=SHORT".
func templateLine(t api.Template) string {
	line := fmt.Sprintf("%s %s image=%s snapshot=%s pool=%d", t.Name, t.State, t.Image, snapshotSize(t.Snapshot), t.Pool)
	if t.Repo != "" {
		line += fmt.Sprintf(" version=%d commit=%s", t.Version, shortCommit(t.Commit))
	}
	return line
}

// shortCommit is a commit's first 12 hex digits, or "-" for none.
func shortCommit(c string) string {
	if c == "" {
		return "-"
	}
	return c[:min(len(c), 12)]
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
			cl, err := c.client(cmd.Context())
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
	fmt.Fprintln(tw, "NAME\tSTATE\tVERSION\tIMAGE\tPOOL\tREADY\tSNAPSHOT\tAGE")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", t.Name, t.State, versionCell(t), t.Image, t.Pool, t.PoolReady,
			snapshotSize(t.Snapshot), humanAge(now.Sub(t.CreatedAt)))
	}
	return tw.Flush()
}

// versionCell is a template's version for a table: "3", or "3+" while the
// next one builds.
func versionCell(t api.Template) string {
	v := fmt.Sprint(max(t.Version, 1))
	if t.Rebuilding {
		v += "+"
	}
	return v
}

func newTemplateHistoryCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history NAME",
		Short: "List a template's versions",
		Long: `List every build of a template, oldest first: VERSION (* marks the one new
sessions are cloned from), STATE (building, ready, failed or removed once
nothing used it), the COMMIT it was built from, the BASE version it started
from (- for a fresh boot), how many SESSIONS run on it, how long the BUILD
took, WHY it was built (create, push DELIVERY-ID, rebuild, restart) and its
AGE. A failed build's error follows its row.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			vs, err := cl.TemplateVersions(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				if vs == nil {
					vs = []api.TemplateVersion{}
				}
				return printJSON(c, vs)
			}
			return writeVersionTable(c.stdout, vs, c.now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the versions as a JSON array")
	return cmd
}

// writeVersionTable writes a template's versions, oldest first.
func writeVersionTable(w io.Writer, vs []api.TemplateVersion, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tCOMMIT\tBASE\tSESSIONS\tBUILD\tSTORED\tWHY\tAGE")
	var errs []string
	for _, v := range vs {
		num := fmt.Sprint(v.Version)
		if v.Current {
			num += "*"
		}
		base, build := "-", "-"
		if v.Base > 0 {
			base = fmt.Sprint(v.Base)
		}
		if v.BuildMillis > 0 {
			build = (time.Duration(v.BuildMillis) * time.Millisecond).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", num, v.State, shortCommit(v.Commit), base, v.Sessions,
			build, yesNo(v.Stored), v.Reason, humanAge(now.Sub(v.CreatedAt)))
		if v.Error != "" {
			errs = append(errs, fmt.Sprintf("version %d: %s", v.Version, v.Error))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range errs {
		if _, err := fmt.Fprintln(w, e); err != nil {
			return err
		}
	}
	return nil
}

func newTemplateRebuildCmd(c *cli) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "rebuild NAME",
		Short: "Build a template's next version now",
		Long: `Queue a build of the template's next version from its current one, as a
push to its branch would (the repository is fetched first, if it has one;
the build runs even if the branch has not moved). It returns at once unless
--wait is given: then it waits up to that long for the build and prints the
version it made, exiting 1 if the build failed.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			name := args[0]
			before, err := cl.TemplateVersions(cmd.Context(), name)
			if err != nil {
				return err
			}
			if _, err := cl.RebuildTemplate(cmd.Context(), name); err != nil {
				return err
			}
			if wait <= 0 {
				fmt.Fprintf(c.stdout, "rebuild of %s queued\n", name)
				return nil
			}
			fmt.Fprintf(c.stderr, "rebuilding template %s…\n", name)
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			for {
				vs, err := cl.TemplateVersions(ctx, name)
				if err != nil {
					return err
				}
				if len(vs) > len(before) {
					v := vs[len(vs)-1]
					switch v.State {
					case api.VersionReady:
						fmt.Fprintf(c.stdout, "%s version=%d commit=%s build=%dms\n", name, v.Version, shortCommit(v.Commit), v.BuildMillis)
						return nil
					case api.VersionFailed:
						return fmt.Errorf("template %s version %d failed: %s", name, v.Version, v.Error)
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("template %s: the rebuild did not finish within %s", name, wait)
				case <-time.After(250 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the build to finish (e.g. 10m)")
	return cmd
}

func newTemplatePoolCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "pool NAME SIZE",
		Short: "Set how many ready clones a template's warm pool keeps",
		Long: `Set the size of a template's warm pool (0..64): that many clones are kept
restored and ready, so that a create from the template takes one at once.
The pool fills or shrinks at once; 0 stops it.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := strconv.Atoi(args[1])
			if err != nil {
				return usagef(cmd, "pool size %q: want a number 0..64", args[1])
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			t, err := cl.SetTemplatePool(cmd.Context(), args[0], size)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s pool=%d ready=%d\n", t.Name, t.Pool, t.PoolReady)
			return nil
		},
	}
}

func newTemplateInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print a template as JSON",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
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
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.each(args, "template rm", func(name string) (string, error) {
				return name, cl.DeleteTemplate(cmd.Context(), name)
			})
		},
	}
}
