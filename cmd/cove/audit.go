package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/internal/audit"
)

// auditDir is the audit log's directory under COVE_HOME; its signing key is
// audit.DefaultKeyPath of it ($COVE_HOME/audit.key).
const auditDir = "audit"

// exitTampered is cove audit verify's status for a log that fails a check
// (1 is a failure to check at all, 2 a usage error).
const exitTampered = 3

func newAuditCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "audit",
		Short: "Read and check the tamper-evident audit log",
	})
	cmd.AddCommand(newAuditVerifyCmd(c), newAuditKeyCmd(c), newAuditLogCmd(c), newAuditProofCmd(c), newAuditExportCmd(c), newAuditWitnessCmd(c))
	return cmd
}

func newAuditVerifyCmd(c *cli) *cobra.Command {
	var dir, key, state string
	var witnesses []string
	cmd := &cobra.Command{
		Use:   "verify --dir DIR --key KEY [--state FILE] [--witness KEY…]",
		Short: "Verify a copy of the audit log, offline",
		Long: `verify checks a copy of an audit log directory with no server: the
checkpoint's signature by KEY (a note verifier key, as 'cove audit key'
prints it, or a file holding one), every entry against the hash tiles, and
the tree recomputed from the entries against the checkpoint. It prints each
altered, removed, inserted or reordered entry by index.

With --state, it also refuses a checkpoint older than the last one it
verified there (a rollback) or a log that no longer extends it (a fork),
and records the checkpoint there when all checks pass.

Each --witness KEY (a witness's cosignature verifier key, or a file holding
it) must have co-signed the checkpoint: a witness co-signs only checkpoints
consistent with all it co-signed before, so a forked log fails here.

Exit status: 0 verified; 3 the log fails a check; 1 it could not be
checked; 2 usage.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || key == "" {
				return usagef(cmd, "--dir and --key are required")
			}
			vkey, err := readVerifierKey(key)
			if err != nil {
				return err
			}
			wkeys := make([]string, 0, len(witnesses))
			for _, w := range witnesses {
				k, err := readVerifierKey(w)
				if err != nil {
					return err
				}
				wkeys = append(wkeys, k)
			}
			rep, err := audit.Verify(cmd.Context(), dir, vkey, state, wkeys...)
			for _, p := range rep.Problems {
				fmt.Fprintln(c.stdout, p)
			}
			if errors.Is(err, audit.ErrTampered) {
				return &exitError{code: exitTampered, err: fmt.Errorf("audit log %s fails verification: %d problems", dir, len(rep.Problems))}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "verified %d entries of %s, root %x", rep.Size, rep.Origin, rep.Root)
			if rep.PreviousSize > 0 {
				fmt.Fprintf(c.stdout, ", extending the %d verified before", rep.PreviousSize)
			}
			if len(rep.Witnesses) > 0 {
				fmt.Fprintf(c.stdout, ", co-signed by %s", strings.Join(rep.Witnesses, ", "))
			}
			fmt.Fprintln(c.stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "the copy of the audit log directory")
	f.StringVar(&key, "key", "", "the log's verifier key, or a file holding it")
	f.StringVar(&state, "state", "", "file keeping the last verified checkpoint")
	f.StringArrayVar(&witnesses, "witness", nil, "a witness's verifier key, or a file holding it, whose cosignature is required (repeatable)")
	return cmd
}

// readVerifierKey returns key, or the contents of the file named key.
func readVerifierKey(key string) (string, error) {
	if strings.Count(key, "+") >= 2 {
		return key, nil
	}
	b, err := os.ReadFile(key)
	if err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func newAuditKeyCmd(c *cli) *cobra.Command {
	var home string
	cmd := &cobra.Command{
		Use:   "key [--home DIR]",
		Short: "Print the audit log's verifier key",
		Long: `key prints the note verifier key of the audit log's checkpoints: what
'cove audit verify --key' takes. With --home it reads it offline from the
signing key in that data directory (read access to the key is needed, so
on the server's host); without, it asks the server (GET /v1/audit/key,
admins).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if home == "" {
				cl, err := c.client(cmd.Context())
				if err != nil {
					return err
				}
				vkey, err := cl.AuditKey(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintln(c.stdout, vkey)
				return nil
			}
			vkey, err := audit.VerifierKeyFromFile(audit.DefaultKeyPath(filepath.Join(home, auditDir)))
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, vkey)
			return nil
		},
	}
	cmd.Flags().StringVar(&home, "home", "", "read the key offline from this data directory (the server's COVE_HOME)")
	return cmd
}
