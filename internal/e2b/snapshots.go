package e2b

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/session"
)

// Snapshots and forks.
//
// An E2B snapshot is a cove checkpoint: createSnapshot checkpoints the
// sandbox's session (the guest pauses for the copy and runs on), and its
// id is "SESSION:NAME", the same reference cove's own from_checkpoint
// takes. Template names have no ':', so a create whose templateID has one
// names a snapshot, and is a fork from that checkpoint: a new sandbox with
// the snapshot's memory, processes and disk, as E2B's Sandbox.create
// (snapshotId) is. listSnapshots lists the checkpoints of the caller's
// sandboxes; deleteSnapshot (DELETE /templates/{id}) removes one.
//
// A checkpoint is its session's, and goes with it; E2B's snapshots
// outlive their sandbox: a sandbox's removal first keeps each of its
// snapshots as a template under the same snapshot id (kept.go). A
// snapshot's name is a checkpoint name ([a-z0-9][a-z0-9._-]*), unique in
// its sandbox: a second with the same name is 409 (E2B adds a build to
// the named template).
//
// fork checkpoints the sandbox once, forks each of count sandboxes from
// that checkpoint independently (one failure does not undo the others, and
// each has its own entry in the answer), then removes the checkpoint: a
// fork rests on nothing of its parent's, and the SDK's fork leaves no
// snapshot to list.

// snapshotInfo is a snapshot as the SDK reads it (SnapshotInfo).
type snapshotInfo struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// snapshotID is the E2B id of checkpoint name of session id.
func snapshotID(id, name string) string { return id + ":" + name }

// parseSnapshotID splits a snapshot id into its session and checkpoint;
// ok is false for anything else (a template name has no ':').
func parseSnapshotID(s string) (id, name string, ok bool) {
	id, name, ok = strings.Cut(s, ":")
	return id, name, ok && id != "" && name != ""
}

func snapshotOf(id, name string) snapshotInfo {
	sid := snapshotID(id, name)
	return snapshotInfo{SnapshotID: sid, Names: []string{sid}}
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ss, _, ok := s.lookup(ctx, w, r, "session.checkpoint")
	if !ok {
		return
	}
	if state(ss) == "paused" {
		writeControlError(w, http.StatusConflict, "sandbox %q is paused: connect to it (which resumes it) before a snapshot", ss.ID)
		return
	}
	c, err := s.cfg.Sessions.CreateCheckpoint(ctx, ss.ID, api.CheckpointRequest{Name: req.Name})
	if err != nil {
		s.fail(w, r, "create snapshot", err)
		return
	}
	s.log.InfoContext(ctx, "e2b: snapshot created", "session", ss.ID, "checkpoint", c.Name, "pause_ms", c.PauseMillis)
	writeJSON(w, http.StatusCreated, snapshotOf(ss.ID, c.Name))
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			writeControlError(w, http.StatusBadRequest, "limit %q: want 1 to %d", v, maxListLimit)
			return
		}
		limit = n
	}
	var sessions []api.Session
	if id := q.Get("sandboxID"); id != "" {
		// A filter: an unknown sandbox (or one not the caller's) has no
		// snapshots to show.
		if ss, err := s.cfg.Sessions.Get(ctx, id); err == nil {
			sessions = []api.Session{ss}
		} else if !api.IsCode(err, api.CodeNotFound) {
			s.fail(w, r, "list snapshots", err)
			return
		}
	} else {
		var err error
		if sessions, err = s.cfg.Sessions.List(ctx); err != nil {
			s.fail(w, r, "list snapshots", err)
			return
		}
	}
	name := q.Get("name")
	type found struct {
		info snapshotInfo
		c    api.Checkpoint
	}
	var out []found
	for _, ss := range sessions {
		if ss.State == api.StateFailed {
			continue
		}
		if s.cfg.Authorize(ctx, apiserver.Action{Verb: "session.checkpoint.list", SessionID: ss.ID}) != nil {
			continue
		}
		cs, err := s.cfg.Sessions.ListCheckpoints(ctx, ss.ID)
		if api.IsCode(err, api.CodeNotFound) {
			continue // gone meanwhile
		}
		if err != nil {
			s.fail(w, r, "list snapshots", err)
			return
		}
		for _, c := range cs {
			info := snapshotOf(ss.ID, c.Name)
			if name == "" || name == c.Name || name == info.SnapshotID {
				out = append(out, found{info, c})
			}
		}
	}
	// The snapshots of removed sandboxes, kept as templates.
	kept, err := s.cfg.Sessions.ListTemplates(ctx)
	if err != nil {
		s.fail(w, r, "list snapshots", err)
		return
	}
	for _, t := range kept {
		id, cname, ok := parseKept(t.Name)
		if !ok || q.Get("sandboxID") != "" && q.Get("sandboxID") != id {
			continue
		}
		if s.cfg.Authorize(ctx, apiserver.Action{Verb: "template.get", Template: t.Name}) != nil {
			continue
		}
		if _, err := s.cfg.Sessions.Get(ctx, id); err == nil {
			continue // a sandbox of that id lives: its checkpoints are its snapshots
		}
		info := snapshotOf(id, cname)
		if name == "" || name == cname || name == info.SnapshotID {
			out = append(out, found{info, api.Checkpoint{Name: cname, CreatedAt: t.CreatedAt}})
		}
	}
	// Newest first; the id breaks ties, and is the page token.
	slices.SortFunc(out, func(a, b found) int {
		return cmp.Or(b.c.CreatedAt.Compare(a.c.CreatedAt), strings.Compare(a.info.SnapshotID, b.info.SnapshotID))
	})
	if next := q.Get("nextToken"); next != "" {
		i := slices.IndexFunc(out, func(f found) bool { return f.info.SnapshotID == next })
		if i < 0 {
			out = nil // the page's first snapshot is gone: so is the rest's order
		} else {
			out = out[i:]
		}
	}
	if len(out) > limit {
		w.Header().Set("X-Next-Token", out[limit].info.SnapshotID)
		out = out[:limit]
	}
	infos := make([]snapshotInfo, 0, len(out))
	for _, f := range out {
		infos = append(infos, f.info)
	}
	writeJSON(w, http.StatusOK, infos)
}

// deleteSnapshot serves DELETE /templates/{templateID}, which the SDK's
// deleteSnapshot calls (false on 404): cove's E2B API deletes snapshots
// there, not templates.
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	ref := r.PathValue("id")
	id, name, ok := parseSnapshotID(ref)
	if !ok {
		writeControlError(w, http.StatusNotFound, "no snapshot %q: a snapshot id is SANDBOX:NAME (cove templates are deleted with 'cove template delete')", ref)
		return
	}
	if kept, ok := s.keptTemplate(ctx, id, name); ok {
		// Its sandbox is gone: the snapshot is the template keeping it.
		if !s.allowed(ctx, w, r, apiserver.Action{Verb: "template.delete", Template: kept}) {
			return
		}
		if err := s.cfg.Sessions.DeleteTemplate(ctx, kept); err != nil {
			s.fail(w, r, "delete snapshot", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !s.allowed(ctx, w, r, apiserver.Action{Verb: "session.checkpoint.delete", SessionID: id}) {
		return
	}
	if err := s.cfg.Sessions.DeleteCheckpoint(ctx, id, name); err != nil {
		s.fail(w, r, "delete snapshot", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// createFromSnapshot serves a create whose templateID is a snapshot id: a
// fork from that checkpoint, with the create's metadata and lifetime.
func (s *Server) createFromSnapshot(ctx context.Context, w http.ResponseWriter, r *http.Request, req createRequest, rec record) {
	id, name, ok := parseSnapshotID(req.TemplateID)
	if !ok {
		writeControlError(w, http.StatusNotFound, "template '%s' not found: a snapshot id is SANDBOX:NAME", req.TemplateID)
		return
	}
	if kept, ok := s.keptTemplate(ctx, id, name); ok {
		// Its sandbox is gone: a create from the template keeping it.
		s.createFrom(ctx, w, r, api.CreateSessionRequest{Template: kept, Env: req.EnvVars, IdleTimeout: "0s"}, rec)
		return
	}
	if !s.allowed(ctx, w, r, apiserver.Action{Verb: "session.fork", SessionID: id}) {
		return
	}
	// A client gone meanwhile leaves no fork without its record (and so
	// without its end time).
	ctx = context.WithoutCancel(ctx)
	forks, err := s.cfg.Sessions.Fork(ctx, id, api.ForkRequest{N: 1, From: name})
	if err != nil {
		s.fail(w, r, "create sandbox from snapshot "+req.TemplateID, err)
		return
	}
	ss := forks[0]
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		s.discard(ctx, ss.ID)
		s.fail(w, r, "create sandbox from snapshot", err)
		return
	}
	s.log.InfoContext(ctx, "e2b: sandbox created from a snapshot", "session", ss.ID, "snapshot", req.TemplateID, "end_at", rec.EndAt)
	writeJSON(w, http.StatusCreated, s.sandboxAnswer(ss.ID, rec))
}

// discard removes the session of a sandbox the API could not describe.
func (s *Server) discard(ctx context.Context, id string) {
	if err := s.cfg.Sessions.Delete(context.WithoutCancel(ctx), id); err != nil {
		s.log.ErrorContext(ctx, "e2b: remove the session of a failed create", "session", id, "err", err)
	}
}

// forkResult is one entry of the fork's answer (SandboxForkResult):
// exactly one of Sandbox and Error.
type forkResult struct {
	Sandbox *sandbox   `json:"sandbox,omitempty"`
	Error   *errorBody `json:"error,omitempty"`
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	var req struct {
		Timeout *int64 `json:"timeout"` // seconds; 15 when absent
		Count   *int   `json:"count"`   // 1 when absent
	}
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	count := 1
	if req.Count != nil {
		count = *req.Count
	}
	if count < 1 || count > session.MaxForks {
		writeControlError(w, http.StatusBadRequest, "count %d: want 1 to %d", count, session.MaxForks)
		return
	}
	timeout := DefaultTimeout
	if req.Timeout != nil {
		if *req.Timeout < 0 {
			writeControlError(w, http.StatusBadRequest, "timeout %d: want seconds ≥ 0", *req.Timeout)
			return
		}
		timeout = seconds(*req.Timeout)
	}
	parent, prec, ok := s.lookup(ctx, w, r, "session.fork")
	if !ok {
		return
	}
	if state(parent) == "paused" {
		writeControlError(w, http.StatusConflict, "sandbox %q is paused: connect to it (which resumes it) before a fork", parent.ID)
		return
	}
	// From here the fork is finished whether or not the client waits: a
	// client gone meanwhile leaves no fork without its record (and so
	// without its end time), and no checkpoint behind.
	ctx = context.WithoutCancel(ctx)
	c, err := s.cfg.Sessions.CreateCheckpoint(ctx, parent.ID, api.CheckpointRequest{Name: forkCheckpointName()})
	if err != nil {
		s.fail(w, r, "fork sandbox", err)
		return
	}
	defer func() {
		if err := s.cfg.Sessions.DeleteCheckpoint(ctx, parent.ID, c.Name); err != nil {
			s.log.WarnContext(ctx, "e2b: remove a fork's checkpoint", "session", parent.ID, "checkpoint", c.Name, "err", err)
		}
	}()
	out := make([]forkResult, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() { out[i] = s.forkOne(ctx, r, parent.ID, c.Name, prec, timeout) })
	}
	wg.Wait()
	s.log.InfoContext(ctx, "e2b: sandbox forked", "session", parent.ID, "count", count)
	writeJSON(w, http.StatusCreated, out)
}

// forkCheckpointName names the checkpoint a fork is made from, for the
// moment it lives (or in 'cove checkpoint ls', if a server died before
// removing it): fork- and 8 random hex digits, clear of the default
// ckpt-N names the snapshots take.
func forkCheckpointName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "fork-" + hex.EncodeToString(b)
}

// forkOne makes one fork of session id from its checkpoint name, with the
// parent's record (template, metadata, envVars, auto-pause) and a
// lifetime of its own.
func (s *Server) forkOne(ctx context.Context, r *http.Request, id, name string, prec record, timeout time.Duration) forkResult {
	failed := func(err error) forkResult {
		status, msg := s.statusOf(r, "fork sandbox", err)
		return forkResult{Error: &errorBody{Code: status, Message: msg}}
	}
	forks, err := s.cfg.Sessions.Fork(ctx, id, api.ForkRequest{N: 1, From: name})
	if err != nil {
		return failed(err)
	}
	ss := forks[0]
	now := s.cfg.Now().UTC()
	rec := record{TemplateID: prec.TemplateID, Metadata: prec.Metadata, EnvVars: prec.EnvVars, StartedAt: now, AutoPause: prec.AutoPause}
	if timeout > 0 {
		rec.EndAt = now.Add(timeout)
	}
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		s.discard(ctx, ss.ID)
		return failed(err)
	}
	a := s.sandboxAnswer(ss.ID, rec)
	return forkResult{Sandbox: &a}
}

// keptTemplate is the template keeping snapshot name of sandbox id, if
// the sandbox is gone and the template is there.
func (s *Server) keptTemplate(ctx context.Context, id, name string) (string, bool) {
	if _, err := s.cfg.Sessions.Get(ctx, id); !api.IsCode(err, api.CodeNotFound) {
		return "", false
	}
	t, ok := keptName(id, name)
	if !ok {
		return "", false
	}
	if _, err := s.cfg.Sessions.GetTemplate(ctx, t); err != nil {
		return "", false
	}
	return t, true
}
