package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/internal/policy"
)

func newPolicyCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "policy",
		Short: "Check authorization policies",
		Long: `cove decides every API action with a Cedar policy: the built-in default
(engineers see and control only their own sessions and templates, admins
everything) or a file the operator edits. A file that does not check is
refused when the server loads it, and the policy in force stays.`,
	})
	cmd.AddCommand(newPolicyCheckCmd(c))
	return cmd
}

func newPolicyCheckCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Check policy files before they are loaded",
		Long: `Parse each Cedar policy FILE ("-" for stdin) and validate it against
cove's schema (its entities, attributes and actions), as the server does
when it loads one. Print "FILE: ok", or each problem as FILE:LINE:COL: and
what is wrong, and exit 1 if any file does not check. No server is needed.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			var eng policy.Engine
			failed := 0
			for _, name := range args {
				if err := checkPolicyFile(c, &eng, name); err != nil {
					failed++
					var pe *policy.Error
					if errors.As(err, &pe) {
						pe.File = name
						fmt.Fprintln(c.stderr, pe)
					} else {
						fmt.Fprintf(c.stderr, "cove: %v\n", err)
					}
					continue
				}
				fmt.Fprintf(c.stdout, "%s: ok\n", name)
			}
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}

// checkPolicyFile reads the policy file name ("-": stdin) and checks it.
func checkPolicyFile(c *cli, eng *policy.Engine, name string) error {
	var r io.Reader = c.stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("policy check: %w", err)
		}
		defer f.Close()
		r = f
	}
	// One byte over the limit is enough for Check to refuse the file.
	src, err := io.ReadAll(io.LimitReader(r, policy.MaxPolicyBytes+1))
	if err != nil {
		return fmt.Errorf("policy check: read %s: %w", name, err)
	}
	return eng.Check(src)
}
