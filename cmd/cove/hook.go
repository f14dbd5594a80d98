package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func newHookCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:     "hook",
		Aliases: []string{"hooks"},
		Short:   "Add, list and remove webhooks",
		Long: `A webhook is a named secret: senders POST deliveries to
$COVE_ADDR/v1/hooks/NAME signed with it (X-Hub-Signature-256), and parked
sessions wake on the events that match their 'cove park --until'
expressions. The hook named "github" takes GitHub's deliveries; give GitHub
the URL $COVE_ADDR/v1/hooks/github and the same secret.`,
	})
	cmd.AddCommand(newHookAddCmd(c), newHookLsCmd(c), newHookRmCmd(c))
	return cmd
}

func newHookAddCmd(c *cli) *cobra.Command {
	var secretFile string
	cmd := &cobra.Command{
		Use:   "add NAME --secret-file FILE",
		Short: "Add a webhook, or replace its secret",
		Long: `Store the secret that the hook's senders sign with, read from FILE ("-" for
stdin) with one trailing newline removed, and print the hook's name. The
secret never appears on the command line.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if secretFile == "" {
				return usagef(cmd, "--secret-file is required")
			}
			secret, err := readSecret(c, secretFile)
			if err != nil {
				return err
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := cl.PutHookSecret(cmd.Context(), args[0], secret); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&secretFile, "secret-file", "", `file holding the secret ("-": stdin)`)
	return cmd
}

// readSecret reads a secret from name ("-": stdin), without one trailing
// newline; an empty secret is an error.
func readSecret(c *cli, name string) (string, error) {
	var (
		b   []byte
		err error
	)
	if name == "-" {
		b, err = io.ReadAll(io.LimitReader(c.stdin, 64<<10))
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return "", fmt.Errorf("read secret: %w", err)
	}
	b, ok := bytes.CutSuffix(b, []byte("\n"))
	if ok {
		b, _ = bytes.CutSuffix(b, []byte("\r"))
	}
	if len(b) == 0 {
		return "", fmt.Errorf("read secret: %s is empty", name)
	}
	return string(b), nil
}

func newHookLsCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List webhooks by name",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			names, err := cl.ListHooks(cmd.Context())
			if err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintln(c.stdout, n)
			}
			return nil
		},
	}
}

func newHookRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove webhooks",
		Long: `Remove webhooks' secrets, printing each removed name; their deliveries are
refused from then on. Every name is tried; cove exits 1 if any failed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.each(args, "hook rm", func(name string) (string, error) {
				return name, cl.DeleteHook(cmd.Context(), name)
			})
		},
	}
}
