package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newSessionCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "session",
		Aliases: []string{"sessions"},
		Short:   "Create, list, inspect and remove sessions",
	})
	cmd.AddCommand(
		newSessionCreateCmd(c),
		newSessionInspectCmd(c),
		newLsCmd(c, "ls"),
		newRmCmd(c, "rm"),
	)
	return cmd
}

func newSessionCreateCmd(c *cli) *cobra.Command {
	var (
		req         api.CreateSessionRequest
		env         []string
		bootTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Boot a session and print its id",
		Long: `Boot a session and print its id alone on stdout once its agent answers.
Unset flags take the server's defaults (image "tiny", 512 MiB, 1 CPU).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if req.Env, err = parseEnv(env); err != nil {
				return usagef(cmd, "%v", err)
			}
			if bootTimeout < 0 {
				return usagef(cmd, "--boot-timeout must not be negative")
			}
			if bootTimeout > 0 {
				req.BootTimeout = bootTimeout.String()
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			s, err := cl.CreateSession(cmd.Context(), req)
			if err != nil {
				return err
			}
			if s.State == api.StateFailed {
				return fmt.Errorf("session %s failed: %s", s.ID, s.Error)
			}
			fmt.Fprintln(c.stdout, s.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image to boot")
	f.IntVar(&req.MemoryMiB, "memory", 0, "guest memory in MiB")
	f.IntVar(&req.CPUs, "cpus", 0, "guest CPUs")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE for every command (repeatable)")
	f.DurationVar(&bootTimeout, "boot-timeout", 0, "how long to wait for the guest to boot (e.g. 60s)")
	return cmd
}

func newSessionInspectCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect ID",
		Short: "Print a session as JSON",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			s, err := cl.GetSession(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(c, s)
		},
	}
}

// printJSON writes v as indented JSON on stdout.
func printJSON(c *cli, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}
