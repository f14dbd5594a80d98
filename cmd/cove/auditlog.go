package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

// auditPageSize is how many entries 'cove audit log' asks for at a time.
const auditPageSize = 1000

func newAuditLogCmd(c *cli) *cobra.Command {
	var session, actor, since string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "log [--session ID] [--actor SUB] [--since T] [--json]",
		Short: "List the audit log's entries (admins)",
		Long: `log lists the entries of the server's audit log, oldest first: index,
time, actor, action, target, decision and outcome. --session keeps those
whose actor or target is the session, --actor those of a user (id, or an
OIDC subject) or agent, --since those at or after a time (RFC 3339, or a
duration back from now: 1h). --json prints each entry's index, leaf hash
and canonical JSON as a JSON array.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := api.AuditQuery{Session: session, Actor: actor, N: auditPageSize}
			if since != "" {
				t, err := parseSince(since, c.now())
				if err != nil {
					return usagef(cmd, "--since %q: %v", since, err)
				}
				q.Since = t
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			recs, err := auditEntries(cmd.Context(), cl, q)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, recs)
			}
			return writeAuditTable(c.stdout, recs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&session, "session", "", "only entries of this session (as actor or target)")
	f.StringVar(&actor, "actor", "", "only entries of this actor: a user id, an OIDC subject, an agent")
	f.StringVar(&since, "since", "", "only entries at or after this time (RFC 3339, or a duration ago: 1h)")
	f.BoolVar(&asJSON, "json", false, "print the entries as a JSON array")
	return cmd
}

// parseSince reads an RFC 3339 time, or a duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time or a duration like 1h")
	}
	return now.Add(-d), nil
}

// auditEntries reads every entry q picks, page after page.
func auditEntries(ctx context.Context, cl *api.Client, q api.AuditQuery) ([]api.AuditRecord, error) {
	recs := []api.AuditRecord{}
	for {
		page, err := cl.AuditEntries(ctx, q)
		if err != nil {
			return nil, err
		}
		recs = append(recs, page.Entries...)
		if len(page.Entries) < q.N || page.Next <= q.From {
			return recs, nil
		}
		q.From = page.Next
	}
}

// writeAuditTable writes INDEX TIME ACTOR ACTION TARGET DECISION OUTCOME.
func writeAuditTable(w io.Writer, recs []api.AuditRecord) error {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tTIME\tACTOR\tACTION\tTARGET\tDECISION\tOUTCOME")
	for _, r := range recs {
		e, err := audit.ParseEntry(r.Entry)
		if err != nil {
			return fmt.Errorf("entry %d: %w", r.Index, err)
		}
		decision := string(e.Decision)
		if decision == "" {
			decision = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Index, e.Time.UTC().Format(time.RFC3339), auditActor(e.Actor),
			e.Action, orDash(auditTarget(e.Target)), decision, orDash(auditOutcome(e)))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func auditActor(a audit.Actor) string {
	parts := []string{string(a.Kind)}
	for _, v := range []string{a.User, a.Subject, a.Session, a.Agent} {
		if v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, ":")
}

func auditTarget(t audit.Target) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("session", t.Session)
	add("template", t.Template)
	add("user", t.User)
	add("team", t.Team)
	add("image", t.Image)
	add("hook", t.Hook)
	add("path", t.Path)
	if t.Host != "" {
		add("host", t.Host+":"+strconv.Itoa(t.Port))
	}
	add("method", t.Method)
	if len(t.Argv) > 0 {
		b, _ := json.Marshal(t.Argv)
		add("argv", string(b))
	}
	add("cwd", t.Cwd)
	add("secret", t.Secret)
	add("token", t.Token)
	add("trigger", t.Trigger)
	add("audience", t.Audience)
	add("node", t.Node)
	return strings.Join(parts, " ")
}

func auditOutcome(e audit.Entry) string {
	var parts []string
	if e.Ref != nil {
		parts = append(parts, "ref="+strconv.FormatUint(*e.Ref, 10))
	}
	if o := e.Outcome; o != nil {
		if o.ExitCode != nil {
			parts = append(parts, "exit="+strconv.Itoa(*o.ExitCode))
		}
		if o.Size != nil {
			parts = append(parts, "size="+strconv.FormatInt(*o.Size, 10))
		}
		if o.SHA256 != "" {
			parts = append(parts, "sha256="+o.SHA256)
		}
		if o.DurationMS > 0 {
			parts = append(parts, (time.Duration(o.DurationMS) * time.Millisecond).String())
		}
		if o.Error != "" {
			parts = append(parts, "error="+strconv.Quote(o.Error))
		}
	}
	return strings.Join(parts, " ")
}

func newAuditProofCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "proof INDEX",
		Short: "Print the inclusion proof of an entry (admins)",
		Long: `proof prints, as JSON, the proof that entry INDEX is in the log's latest
signed checkpoint: its leaf hash, the RFC 6962 audit path and the signed
checkpoint, after checking it against the server's verifier key. An entry
logged within the last second may wait for its checkpoint.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			idx, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return usagef(cmd, "INDEX %q: want an entry index", args[0])
			}
			ctx := cmd.Context()
			cl, err := c.client(ctx)
			if err != nil {
				return err
			}
			p, err := waitProof(ctx, cl, idx)
			if err != nil {
				return err
			}
			key, err := cl.AuditKey(ctx)
			if err != nil {
				return err
			}
			if err := checkProof(p, key); err != nil {
				return err
			}
			return printJSON(c, p)
		},
	}
}

// waitProof asks for entry idx's proof, again while no checkpoint covers
// it yet (checkpoints follow appends within a second), for 5 s at most.
func waitProof(ctx context.Context, cl *api.Client, idx uint64) (api.AuditProof, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		p, err := cl.AuditProof(ctx, idx)
		if !api.IsCode(err, api.CodeUnavailable) {
			return p, err
		}
		select {
		case <-ctx.Done():
			return p, err
		case <-t.C:
		}
	}
}

// checkProof checks p's checkpoint signature with key and its audit path.
func checkProof(p api.AuditProof, key string) error {
	leaf, err := hex.DecodeString(p.LeafHash)
	if err != nil {
		return fmt.Errorf("proof: leaf hash: %w", err)
	}
	ap := audit.Proof{Index: p.Index, LeafHash: leaf, Checkpoint: audit.Checkpoint{Note: []byte(p.Checkpoint.Note)}}
	for _, h := range p.Hashes {
		b, err := hex.DecodeString(h)
		if err != nil {
			return fmt.Errorf("proof: hash: %w", err)
		}
		ap.Hashes = append(ap.Hashes, b)
	}
	return ap.Verify(key, nil)
}

func newAuditExportCmd(c *cli) *cobra.Command {
	var from uint64
	var follow bool
	cmd := &cobra.Command{
		Use:   "export [--from N] [--follow]",
		Short: "Stream the audit log as NDJSON, for a SIEM (admins)",
		Long: `export writes every entry of the audit log from index --from on to stdout,
one JSON object a line: its index, leaf hash and canonical JSON entry.
With --follow it goes on with each new entry as it is logged until
interrupted.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			enc := json.NewEncoder(c.stdout)
			return cl.AuditExport(cmd.Context(), from, follow, func(r api.AuditRecord) error { return enc.Encode(r) })
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "the first entry's index")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep streaming new entries")
	return cmd
}
