package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/witness"
)

func newAuditWitnessCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "witness",
		Short: "Hand the audit log's checkpoints to witnesses that co-sign them",
		Long: `A witness co-signs each checkpoint of the audit log only after it
checked that the log grew from the last checkpoint it co-signed without
changing anything (C2SP tlog-witness). A log forked to show two histories
cannot get both co-signed, so 'cove audit verify --witness KEY' catches it,
even when the fork was made by an operator with root on the server's host.

Any C2SP tlog-witness works; 'cove witness serve' runs a minimal one.`,
	})
	cmd.AddCommand(newAuditWitnessAddCmd(c), newAuditWitnessLsCmd(c), newAuditWitnessRmCmd(c))
	return cmd
}

func newAuditWitnessAddCmd(c *cli) *cobra.Command {
	var key string
	cmd := &cobra.Command{
		Use:   "add URL --key KEY",
		Short: "Hand each checkpoint to the witness at URL (admins)",
		Long: `add makes the server hand each new checkpoint to the witness at URL
(it posts to URL/add-checkpoint) and publish it with the witness's
cosignature. KEY is the witness's cosignature/v1 verifier key ('cove witness
key' prints it), or a file holding it. The server keeps the witness across
restarts.

A witness that does not answer within 3 s does not stop the log: the
checkpoint is published without its cosignature (the server logs a
warning), and 'cove audit verify --witness' refuses it.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usagef(cmd, "--key is required")
			}
			vkey, err := readVerifierKey(key)
			if err != nil {
				return err
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			w, err := cl.AddAuditWitness(cmd.Context(), api.AuditWitness{URL: args[0], Key: vkey})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "witness %s added at %s: the next checkpoints go to it\n", w.Name, w.URL)
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "the witness's verifier key, or a file holding it")
	return cmd
}

func newAuditWitnessLsCmd(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--json]",
		Short: "List the witnesses, and whether they co-signed the latest checkpoint",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			ws, err := cl.AuditWitnesses(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, ws)
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tURL\tCOSIGNED")
			for _, w := range ws {
				fmt.Fprintf(tw, "%s\t%s\t%t\n", w.Name, w.URL, w.Cosigned)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAuditWitnessRmCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "rm URL",
		Short: "Stop handing checkpoints to the witness at URL (admins)",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := cl.RemoveAuditWitness(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "witness at %s removed\n", args[0])
			return nil
		},
	}
}

func newWitnessCmd(c *cli) *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "witness",
		Short: "Run a transparency-log witness for cove audit logs",
		Long: `A minimal C2SP tlog-witness: it co-signs the checkpoints of the logs
it is given, each only when a consistency proof shows it extends the last
one it co-signed. Run it on another host, under another operator, than the
cove server whose log it witnesses.`,
	})
	cmd.AddCommand(newWitnessServeCmd(c), newWitnessKeyCmd(c))
	return cmd
}

func newWitnessServeCmd(c *cli) *cobra.Command {
	var dir, listen, name string
	var logs []string
	cmd := &cobra.Command{
		Use:   "serve --dir DIR --log KEY [--log KEY…] [--listen ADDR] [--name NAME]",
		Short: "Serve POST /add-checkpoint for the logs with these verifier keys",
		Long: `serve runs the witness kept in DIR (its signing key, witness.key,
made on first start with the name NAME; and the last checkpoint it co-signed
of each log, state.json). Each --log is a log's note verifier key ('cove
audit key' prints it) or a file holding it. It prints its own verifier key,
for 'cove audit witness add --key' and 'cove audit verify --witness'.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || len(logs) == 0 {
				return usagef(cmd, "--dir and at least one --log are required")
			}
			keys := make([]string, 0, len(logs))
			for _, l := range logs {
				k, err := readVerifierKey(l)
				if err != nil {
					return err
				}
				keys = append(keys, k)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			w, err := witness.New(dir, name, keys, log)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("witness: %w", err)
			}
			log.Info("witness: serving", "addr", ln.Addr().String(), "verifier_key", w.VerifierKey(), "logs", len(keys))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			hs := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
			errc := make(chan error, 1)
			go func() { errc <- hs.Serve(ln) }()
			select {
			case err := <-errc:
				return fmt.Errorf("witness: %w", err)
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("witness: stop: %w", err)
			}
			log.Info("witness: stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "the witness's directory (key and state)")
	f.StringArrayVar(&logs, "log", nil, "a log's verifier key, or a file holding it (repeatable)")
	f.StringVar(&listen, "listen", "127.0.0.1:7380", "address to listen on")
	f.StringVar(&name, "name", defaultWitnessName(), "the witness's key name, used when the key is made")
	return cmd
}

func defaultWitnessName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return "cove.witness/" + host
}

func newWitnessKeyCmd(c *cli) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "key --dir DIR",
		Short: "Print the witness's cosignature verifier key",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usagef(cmd, "--dir is required")
			}
			k, err := witness.KeyFromDir(dir)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, k)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the witness's directory")
	return cmd
}
