// Command cove runs AI coding agents in microVMs. "cove server" runs the
// API server; every other subcommand is a client of it (see docs/HTTP.md),
// configured by COVE_ADDR, COVE_TOKEN (or what 'cove login' kept) and
// COVE_HOME.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
)

func main() {
	c := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, now: time.Now}
	os.Exit(run(context.Background(), c, os.Args[1:]))
}

// cli is what the client commands share: the process's streams and
// environment, passed in so that tests can run commands in-process.
type cli struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	now    func() time.Time
}

// run executes one command line and returns the process's exit status.
func run(ctx context.Context, c *cli, args []string) int {
	root := newRootCmd(c)
	root.SetArgs(args)
	root.SetIn(c.stdin)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	return report(c.stderr, root.ExecuteContext(ctx))
}

func newRootCmd(c *cli) *cobra.Command {
	root := groupCmd(&cobra.Command{
		Use:   "cove",
		Short: "Run AI coding agents in microVMs",
		Long: `cove runs AI coding agents in QEMU microVMs ("sessions").

The client commands talk to the server at $COVE_ADDR (default ` + defaultAddr + `)
with the token in $COVE_TOKEN, or else the credential 'cove login' kept for
that address, or else, on the server's host, a sign-in made with the admin
token the server wrote to $COVE_HOME/admin.token (COVE_HOME defaults to
` + defaultHome + `): the admin token only bootstraps (users, teams,
tokens), so the first command mints an API token for the server's first
admin user with it and keeps it as 'cove login --token' would ('cove
logout' forgets it). The user, team and token commands use the admin
token as it is.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	})
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.AddCommand(
		newSessionCmd(c),
		newLsCmd(c, "ls"),
		newRmCmd(c, "rm"),
		newParkCmd(c, "park"),
		newWakeCmd(c, "wake"),
		newCheckpointCmd(c),
		newRollbackCmd(c),
		newForkCmd(c),
		newExecCmd(c),
		newCpCmd(c),
		newWatchCmd(c),
		newImageCmd(c),
		newTemplateCmd(c),
		newHookCmd(c),
		newUserCmd(c),
		newTeamCmd(c),
		newTokenCmd(c),
		newE2BCmd(c),
		newSecretCmd(c),
		newLoginCmd(c),
		newLogoutCmd(c),
		newPolicyCmd(c),
		newAuditCmd(c),
		newWitnessCmd(c),
		newAdminCmd(c),
		newNodeCmd(c),
		newVersionCmd(c),
		newServerCmd(),
	)
	return root
}

// groupCmd makes cmd a command that only holds subcommands: run bare, it
// prints its help; run with an unknown subcommand, it is a usage error.
func groupCmd(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	if cmd.SuggestionsMinimumDistance == 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %q?)", s[0])
		}
		return &usageError{cmd: cmd.CommandPath(), err: errors.New(msg)}
	}
	return cmd
}

// usageError is a command line that does not parse; cove exits 2.
type usageError struct {
	cmd string // the command's path, for the help hint
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageArgs wraps a positional-argument check so that its failures are
// usage errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}

// usagef returns a usage error for cmd.
func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// exitError makes cove exit with a given status: a guest command's exit
// code, or a failure with a status of its own. err, if set, is printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// report prints err as "cove: MESSAGE" on w and returns the exit status:
// 0 for nil, 2 for usage errors, the code of an exitError, else 1.
func report(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(w, "cove: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(w, "cove: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", ue.cmd)
		return 2
	}
	return 1
}
