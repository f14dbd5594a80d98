package apiserver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

// AuditLog is the audit log the /v1/audit routes read; *audit.Log is one.
// Reading it is not itself logged (a log that cannot be written can still
// be read, to see why).
type AuditLog interface {
	Size(ctx context.Context) (uint64, error)
	Scan(ctx context.Context, from uint64, f audit.Filter, fn func(audit.Record) error) error
	InclusionProof(ctx context.Context, index uint64) (audit.Proof, error)
	Checkpoint(ctx context.Context) (audit.Checkpoint, error)
	VerifierKey() string
	Witnesses(ctx context.Context) ([]audit.WitnessStatus, error)
	AddWitness(ctx context.Context, w audit.Witness) (audit.WitnessStatus, error)
	RemoveWitness(ctx context.Context, url string) (bool, error)
}

// Page sizes of GET /v1/audit/entries.
const (
	defaultAuditPage = 100
	maxAuditPage     = 1000
)

// exportPoll is how often a followed export looks for new entries.
const exportPoll = 250 * time.Millisecond

var (
	errNoAuditLog = api.Errorf(api.CodeUnavailable, "this server keeps no audit log")
	errPageFull   = errors.New("page full")
)

func auditRecord(r audit.Record) api.AuditRecord {
	return api.AuditRecord{Index: r.Index, LeafHash: hex.EncodeToString(r.LeafHash), Entry: r.Data}
}

// auditEntries serves GET /v1/audit/entries.
func (s *Server) auditEntries(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	q := r.URL.Query()
	from, err := uintParam(q.Get("from"), "from")
	if err != nil {
		return err
	}
	n := defaultAuditPage
	if v := q.Get("n"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxAuditPage {
			return api.Errorf(api.CodeInvalid, "n %q: want 1 to %d", v, maxAuditPage)
		}
	}
	f := audit.Filter{Session: q.Get("session"), Actor: q.Get("actor")}
	if v := q.Get("since"); v != "" {
		if f.Since, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return api.Errorf(api.CodeInvalid, "since %q: want an RFC 3339 time", v)
		}
	}
	ctx := r.Context()
	size, err := s.auditLog.Size(ctx)
	if err != nil {
		return err
	}
	page := api.AuditPage{Entries: []api.AuditRecord{}, Next: max(size, from)}
	err = s.auditLog.Scan(ctx, from, f, func(rec audit.Record) error {
		page.Entries = append(page.Entries, auditRecord(rec))
		if len(page.Entries) == n {
			page.Next = rec.Index + 1
			return errPageFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, errPageFull) {
		return err
	}
	return writeJSON(w, http.StatusOK, page)
}

// auditProof serves GET /v1/audit/proof/{index}.
func (s *Server) auditProof(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	idx, err := uintParam(r.PathValue("index"), "index")
	if err != nil {
		return err
	}
	size, err := s.auditLog.Size(r.Context())
	if err != nil {
		return err
	}
	if idx >= size {
		return api.Errorf(api.CodeNotFound, "audit entry %d: the log has %d entries", idx, size)
	}
	p, err := s.auditLog.InclusionProof(r.Context(), idx)
	if errors.Is(err, audit.ErrNotCommitted) {
		return api.Errorf(api.CodeUnavailable, "audit entry %d is not yet covered by a checkpoint; ask again within a second", idx)
	}
	if err != nil {
		return err
	}
	out := api.AuditProof{Index: p.Index, LeafHash: hex.EncodeToString(p.LeafHash), Hashes: make([]string, 0, len(p.Hashes)),
		Checkpoint: auditCheckpoint(p.Checkpoint)}
	for _, h := range p.Hashes {
		out.Hashes = append(out.Hashes, hex.EncodeToString(h))
	}
	return writeJSON(w, http.StatusOK, out)
}

func auditCheckpoint(cp audit.Checkpoint) api.AuditCheckpoint {
	return api.AuditCheckpoint{Origin: cp.Origin, Size: cp.Size, Root: hex.EncodeToString(cp.Root), Note: string(cp.Note)}
}

// auditCheckpointGet serves GET /v1/audit/checkpoint.
func (s *Server) auditCheckpointGet(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	cp, err := s.auditLog.Checkpoint(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, auditCheckpoint(cp))
}

// auditKey serves GET /v1/audit/key.
func (s *Server) auditKey(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	return writeJSON(w, http.StatusOK, api.AuditKey{Key: s.auditLog.VerifierKey()})
}

// auditExport serves GET /v1/audit/export: every entry from ?from= on as
// NDJSON, and with ?follow=1 the new ones as they are logged, until the
// client goes away.
func (s *Server) auditExport(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	q := r.URL.Query()
	from, err := uintParam(q.Get("from"), "from")
	if err != nil {
		return err
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	ctx := r.Context()
	liftDeadlines(w)
	out := startNDJSON(w)
	defer out.close()
	tick := time.NewTicker(exportPoll)
	defer tick.Stop()
	for {
		err := s.auditLog.Scan(ctx, from, audit.Filter{}, func(rec audit.Record) error {
			from = rec.Index + 1
			return out.send(auditRecord(rec))
		})
		if err != nil {
			return reported(fmt.Errorf("audit export: %w", err))
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// uintParam parses an index; "" is 0.
func uintParam(v, name string) (uint64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, api.Errorf(api.CodeInvalid, "%s %q: want an entry index", name, v)
	}
	return n, nil
}

func auditWitness(w audit.WitnessStatus) api.AuditWitness {
	return api.AuditWitness{URL: w.URL, Key: w.Key, Name: w.Name, Cosigned: w.Cosigned}
}

// auditWitnesses serves GET /v1/audit/witnesses.
func (s *Server) auditWitnesses(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	ws, err := s.auditLog.Witnesses(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.AuditWitness, 0, len(ws))
	for _, x := range ws {
		out = append(out, auditWitness(x))
	}
	return writeJSON(w, http.StatusOK, out)
}

// addAuditWitness serves POST /v1/audit/witnesses.
func (s *Server) addAuditWitness(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	var in api.AuditWitness
	if err := decodeJSON(w, r, &in); err != nil {
		return err
	}
	st, err := s.auditLog.AddWitness(r.Context(), audit.Witness{URL: in.URL, Key: in.Key})
	if errors.Is(err, audit.ErrInvalidWitness) {
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	if err != nil {
		return err
	}
	s.outcome(r.Context(), Action{Verb: "audit.witness.add", Witness: in.URL}, audit.Outcome{})
	return writeJSON(w, http.StatusCreated, auditWitness(st))
}

// removeAuditWitness serves DELETE /v1/audit/witnesses?url=.
func (s *Server) removeAuditWitness(w http.ResponseWriter, r *http.Request) error {
	if s.auditLog == nil {
		return errNoAuditLog
	}
	u := r.URL.Query().Get("url")
	if u == "" {
		return api.Errorf(api.CodeInvalid, "url: the witness's URL is required")
	}
	ok, err := s.auditLog.RemoveWitness(r.Context(), u)
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.CodeNotFound, "no audit witness at %s", u)
	}
	s.outcome(r.Context(), Action{Verb: "audit.witness.remove", Witness: u}, audit.Outcome{})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
