package e2b

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store"
)

// record is what a store.E2BSandbox's Record holds (JSON).
type record struct {
	TemplateID string            `json:"templateID"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	EnvVars    map[string]string `json:"envVars,omitempty"`
	StartedAt  time.Time         `json:"startedAt"`
	// EndAt is when the sandbox ends (or is parked, with AutoPause);
	// zero: never.
	EndAt     time.Time `json:"endAt"`
	AutoPause bool      `json:"autoPause,omitempty"`
	// EventWake says the sandbox was paused until an event (the
	// triggers extension): once it runs again, whoever woke it, it has
	// ResumeTimeout more before it ends (see expireOne).
	EventWake bool `json:"eventWake,omitempty"`
}

// createRequest is the body of POST /v2/sandboxes (fields the SDK may send
// that cove does not act on yet are accepted and ignored).
type createRequest struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int64            `json:"timeout"` // seconds
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
	AutoPause  bool              `json:"autoPause"`
}

// sandbox is the control plane's answer to create and connect.
type sandbox struct {
	SandboxID       string `json:"sandboxID"`
	TemplateID      string `json:"templateID"`
	ClientID        string `json:"clientID"`
	EnvdVersion     string `json:"envdVersion"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

// listed is one sandbox of GET /v2/sandboxes, and with detail's fields the
// answer of GET /sandboxes/{id}.
type listed struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	ClientID    string            `json:"clientID"`
	Metadata    map[string]string `json:"metadata"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
	VolumeMount []any             `json:"volumeMounts"`
}

type detail struct {
	listed
	EnvdAccessToken string `json:"envdAccessToken"`
	// Cove is the triggers extension's view (the SDK reads only the
	// fields it knows): what a paused sandbox waits for.
	Cove *coveDetail `json:"cove,omitempty"`
}

// coveDetail is cove's own part of GET /sandboxes/{id}.
type coveDetail struct {
	Waiting *api.Waiting `json:"waiting,omitempty"`
}

// principal authenticates the request's API key and returns its context
// with the principal in it; it has answered when ok is false.
func (s *Server) principal(w http.ResponseWriter, r *http.Request) (context.Context, bool) {
	if r.Context().Value(authedKey{}) != nil {
		return r.Context(), true // checked by routed()
	}
	key := r.Header.Get("X-API-KEY")
	if key == "" {
		writeControlError(w, http.StatusUnauthorized, "missing X-API-KEY: set E2B_API_KEY to a cove API token ('cove e2b env' prints one)")
		return nil, false
	}
	p, err := s.cfg.Authenticator.Authenticate(r.Context(), key)
	if err != nil {
		if identity.IsRefusal(err) {
			s.refused(r.Context(), audit.Actor{Kind: audit.ActorAnonymous, Issuer: "e2b-api-key"}, "auth.failed", audit.Target{}, err.Error())
			writeControlError(w, http.StatusUnauthorized, "invalid API key: %v", err)
			return nil, false
		}
		s.log.ErrorContext(r.Context(), "e2b: authenticate", "err", err)
		writeControlError(w, http.StatusServiceUnavailable, "cannot check the API key now")
		return nil, false
	}
	if p.Kind == identity.KindAdminToken {
		writeControlError(w, http.StatusForbidden, "the admin token only bootstraps: use a user's API token ('cove e2b env' mints one)")
		return nil, false
	}
	return identity.NewContext(r.Context(), p), true
}

// allowed asks Authorize about a and answers the refusal itself.
func (s *Server) allowed(ctx context.Context, w http.ResponseWriter, r *http.Request, a apiserver.Action) bool {
	err := s.cfg.Authorize(ctx, a)
	if err == nil && auditedVerbs[a.Verb] {
		p, _ := identity.FromContext(ctx)
		err = s.announce(ctx, actorOf(p), a.Verb, audit.Target{Session: a.SessionID, Template: a.Template})
	}
	if err == nil {
		return true
	}
	if c := api.CodeOf(err); c == api.CodeForbidden || c == api.CodeNotFound {
		if c == api.CodeForbidden {
			p, _ := identity.FromContext(ctx)
			s.refused(ctx, actorOf(p), a.Verb, audit.Target{Session: a.SessionID, Template: a.Template}, err.Error())
		}
		writeControlError(w, api.Status(c), "%s", err.Error())
		return false
	}
	s.fail(w, r, a.Verb, err)
	return false
}

// readRecord returns the E2B record of a session, or the one a session
// made through cove's own API has: its template (or image), no metadata,
// no end time.
func (s *Server) readRecord(ctx context.Context, ss api.Session) (record, error) {
	x, err := s.cfg.Records.GetE2BSandbox(ctx, ss.ID)
	if errors.Is(err, store.ErrNotFound) {
		return record{TemplateID: cmp.Or(ss.Template, ss.Image), StartedAt: ss.CreatedAt}, nil
	}
	if err != nil {
		return record{}, err
	}
	var rec record
	if err := json.Unmarshal(x.Record, &rec); err != nil {
		return record{}, fmt.Errorf("e2b: record of %s: %w", ss.ID, err)
	}
	return rec, nil
}

func (s *Server) writeRecord(ctx context.Context, id string, rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	// The end-time sweep looks at the sandbox at its end time (see expire).
	return s.cfg.Records.PutE2BSandbox(ctx, store.E2BSandbox{SessionID: id, Record: b, DueAt: rec.EndAt})
}

// maxBody bounds a control-plane request's JSON body.
const maxBody = 1 << 20

// bodyKey holds a create's body in its request's context, to forward.
type bodyKey struct{}

// decodeBody decodes an optional JSON body into v.
func decodeBody(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, maxBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("request body: %v", err)
	}
	return nil
}

func seconds(n int64) time.Duration { return time.Duration(n) * time.Second }

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	// A create placed on another server's node is forwarded there with
	// the body it came with (route.go).
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeControlError(w, http.StatusBadRequest, "request body: %v", err)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req createRequest
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, body))
	if req.TemplateID == "" {
		req.TemplateID = "base"
	}
	timeout := DefaultTimeout
	if req.Timeout != nil {
		if *req.Timeout < 0 {
			writeControlError(w, http.StatusBadRequest, "timeout %d: want seconds ≥ 0", *req.Timeout)
			return
		}
		timeout = seconds(*req.Timeout)
	}
	if strings.Contains(req.TemplateID, ":") {
		// A snapshot is a checkpoint on its sandbox's node: the create is
		// carried out by that node's server.
		if id, _, ok := parseSnapshotID(req.TemplateID); ok {
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			if s.route(w, r.WithContext(ctx), id, false) {
				return
			}
		}
		now := s.cfg.Now().UTC()
		rec := record{TemplateID: req.TemplateID, Metadata: req.Metadata, EnvVars: req.EnvVars, StartedAt: now, AutoPause: req.AutoPause}
		if timeout > 0 {
			rec.EndAt = now.Add(timeout)
		}
		s.createFromSnapshot(ctx, w, r, req, rec)
		return
	}
	creq := api.CreateSessionRequest{Env: req.EnvVars, IdleTimeout: "0s"}
	switch _, err := s.cfg.Sessions.GetTemplate(ctx, req.TemplateID); {
	case err == nil:
		creq.Template = req.TemplateID
	case api.IsCode(err, api.CodeNotFound) && req.TemplateID == "base":
		creq.Image = s.cfg.BaseImage
	case api.IsCode(err, api.CodeNotFound):
		writeControlError(w, http.StatusNotFound, "template '%s' not found: cove has no template of that name ('base' is built in)", req.TemplateID)
		return
	default:
		s.fail(w, r, "create sandbox", err)
		return
	}
	now := s.cfg.Now().UTC()
	rec := record{TemplateID: req.TemplateID, Metadata: req.Metadata, EnvVars: req.EnvVars, StartedAt: now, AutoPause: req.AutoPause}
	if timeout > 0 {
		rec.EndAt = now.Add(timeout)
	}
	s.createFrom(ctx, w, r, creq, rec)
}

// createFrom makes the sandbox of creq (an image or a template) with the
// record rec.
func (s *Server) createFrom(ctx context.Context, w http.ResponseWriter, r *http.Request, creq api.CreateSessionRequest, rec record) {
	if !s.allowed(ctx, w, r, apiserver.Action{Verb: "session.create", Template: creq.Template}) {
		return
	}
	p, _ := identity.FromContext(ctx)
	ss, err := s.cfg.Sessions.Create(ctx, p.Owner(), creq)
	if body, _ := r.Context().Value(bodyKey{}).([]byte); err != nil && body != nil {
		handled, here := s.createElsewhere(ctx, w, r, body, err)
		if handled {
			return
		}
		if here != nil {
			ctx = here
			ss, err = s.cfg.Sessions.Create(ctx, p.Owner(), creq)
		}
	}
	if err != nil {
		s.fail(w, r, "create sandbox", err)
		return
	}
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		// A sandbox the API cannot describe is not left behind.
		s.discard(ctx, ss.ID)
		s.fail(w, r, "create sandbox", err)
		return
	}
	s.log.InfoContext(ctx, "e2b: sandbox created", "session", ss.ID, "template", rec.TemplateID, "end_at", rec.EndAt)
	writeJSON(w, http.StatusCreated, s.sandboxAnswer(ss.ID, rec))
}

func (s *Server) sandboxAnswer(id string, rec record) sandbox {
	return sandbox{SandboxID: id, TemplateID: rec.TemplateID, ClientID: "cove", EnvdVersion: EnvdVersion, EnvdAccessToken: s.AccessToken(id)}
}

// state is the E2B state of a session: paused while parked (or being
// parked or woken), else running.
func state(ss api.Session) string {
	switch ss.State {
	case api.StateParked, api.StateParking, api.StateWaking:
		return "paused"
	}
	return "running"
}

func (s *Server) listedOf(ss api.Session, rec record) listed {
	md := rec.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listed{SandboxID: ss.ID, TemplateID: rec.TemplateID, ClientID: "cove", Metadata: md,
		StartedAt: rec.StartedAt, EndAt: rec.EndAt, State: state(ss), CPUCount: ss.CPUs, MemoryMB: ss.MemoryMiB,
		EnvdVersion: EnvdVersion, VolumeMount: []any{}}
}

// lookup reads a session the request names and its record, after asking
// Authorize about verb; it has answered when ok is false (an unknown
// sandbox: 404 with code 404, which the SDK turns into
// SandboxNotFoundError, or false for kill).
func (s *Server) lookup(ctx context.Context, w http.ResponseWriter, r *http.Request, verb string) (api.Session, record, bool) {
	id := r.PathValue("id")
	if !s.allowed(ctx, w, r, apiserver.Action{Verb: verb, SessionID: id}) {
		return api.Session{}, record{}, false
	}
	ss, err := s.cfg.Sessions.Get(ctx, id)
	if err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			writeControlError(w, http.StatusNotFound, "sandbox %q not found", id)
		} else {
			s.fail(w, r, verb, err)
		}
		return api.Session{}, record{}, false
	}
	rec, err := s.readRecord(ctx, ss)
	if err != nil {
		s.fail(w, r, verb, err)
		return api.Session{}, record{}, false
	}
	return ss, rec, true
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	ss, rec, ok := s.lookup(ctx, w, r, "session.get")
	if !ok {
		return
	}
	d := detail{listed: s.listedOf(ss, rec), EnvdAccessToken: s.AccessToken(ss.ID)}
	if ss.Waiting != nil {
		d.Cove = &coveDetail{Waiting: ss.Waiting}
	}
	writeJSON(w, http.StatusOK, d)
}

// parseMetadata reads the list's metadata filter, which the SDK encodes
// twice: the parameter is a query string whose keys and values are
// themselves URL-encoded.
func parseMetadata(q string) (map[string]string, error) {
	if q == "" {
		return nil, nil
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return nil, fmt.Errorf("metadata %q: %v", q, err)
	}
	out := map[string]string{}
	for k, vs := range vals {
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("metadata key %q: %v", k, err)
		}
		val, err := url.QueryUnescape(vs[len(vs)-1])
		if err != nil {
			return nil, fmt.Errorf("metadata value %q: %v", vs[len(vs)-1], err)
		}
		out[key] = val
	}
	return out, nil
}

// maxListLimit bounds a page of the list.
const maxListLimit = 1000

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	md, err := parseMetadata(q.Get("metadata"))
	if err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var states []string
	if v := q.Get("state"); v != "" {
		for st := range strings.SplitSeq(v, ",") {
			if st != "running" && st != "paused" {
				writeControlError(w, http.StatusBadRequest, "state %q: want running or paused", st)
				return
			}
			states = append(states, st)
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			writeControlError(w, http.StatusBadRequest, "limit %q: want 1 to %d", v, maxListLimit)
			return
		}
		limit = n
	}
	sessions, err := s.cfg.Sessions.List(ctx)
	if err != nil {
		s.fail(w, r, "list sandboxes", err)
		return
	}
	var out []listed
	for _, ss := range sessions {
		if ss.State == api.StateFailed {
			continue
		}
		if s.cfg.Authorize(ctx, apiserver.Action{Verb: "session.get", SessionID: ss.ID}) != nil {
			continue
		}
		rec, err := s.readRecord(ctx, ss)
		if err != nil {
			s.fail(w, r, "list sandboxes", err)
			return
		}
		l := s.listedOf(ss, rec)
		if len(states) > 0 && !slices.Contains(states, l.State) {
			continue
		}
		match := true
		for k, v := range md {
			if got, ok := rec.Metadata[k]; !ok || got != v {
				match = false
			}
		}
		if match {
			out = append(out, l)
		}
	}
	// Newest first; the id breaks ties, and is the page token.
	slices.SortFunc(out, func(a, b listed) int {
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), strings.Compare(a.SandboxID, b.SandboxID))
	})
	if next := q.Get("nextToken"); next != "" {
		i := slices.IndexFunc(out, func(l listed) bool { return l.SandboxID == next })
		if i < 0 {
			out = nil // the page's first sandbox is gone: so is the rest's order
		} else {
			out = out[i:]
		}
	}
	if len(out) > limit {
		w.Header().Set("X-Next-Token", out[limit].SandboxID)
		out = out[:limit]
	}
	if out == nil {
		out = []listed{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	ss, _, ok := s.lookup(ctx, w, r, "session.delete")
	if !ok {
		return
	}
	if err := s.remove(ctx, ss.ID); err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			writeControlError(w, http.StatusNotFound, "sandbox %q not found", ss.ID)
			return
		}
		s.fail(w, r, "kill sandbox", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// remove deletes a sandbox's session (its record goes with it) and ends
// its process streams; its snapshots are kept as templates first.
func (s *Server) remove(ctx context.Context, id string) error {
	s.keepSnapshots(ctx, id)
	err := s.cfg.Sessions.Delete(ctx, id)
	s.dropProcs(id)
	s.samples.drop(id)
	return err
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	var req struct {
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if req.Timeout == nil || *req.Timeout < 0 {
		writeControlError(w, http.StatusBadRequest, "timeout: want seconds ≥ 0")
		return
	}
	// Changing a sandbox's lifetime is as much as parking it.
	ss, rec, ok := s.lookup(ctx, w, r, "session.park")
	if !ok {
		return
	}
	rec.EndAt = time.Time{}
	if *req.Timeout > 0 {
		rec.EndAt = s.cfg.Now().UTC().Add(seconds(*req.Timeout))
	}
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		s.fail(w, r, "set timeout", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// pauseRequest is the body of POST /sandboxes/{id}/pause: the SDK's
// {"memory": false} (cove's pause keeps the memory always), and cove's
// triggers extension, which the SDK never sends.
type pauseRequest struct {
	Memory *bool         `json:"memory"`
	Cove   *pauseTrigger `json:"cove"`
}

// pauseTrigger parks the sandbox until an event: cove's park --until
// (the README's trigger expressions) and --timeout (a Go duration, a
// "cove:timeout" event then).
type pauseTrigger struct {
	Until   []string `json:"until"`
	Timeout string   `json:"timeout"`
}

// Bounds of the triggers extension, as cove's own park has them.
const (
	maxPauseUntil   = 32
	maxPauseTimeout = 30 * 24 * time.Hour
)

// eventWakePoll is how often the end-time sweep looks at a sandbox
// paused until an event, to give it its time when it runs again.
const eventWakePoll = 5 * time.Second

func (t *pauseTrigger) timeout() (time.Duration, error) {
	if n := len(t.Until); n > maxPauseUntil {
		return 0, fmt.Errorf("cove.until: %d expressions; the limit is %d", n, maxPauseUntil)
	}
	if len(t.Until) == 0 && t.Timeout == "" {
		return 0, errors.New("cove: name the events to wait for (until) or a timeout")
	}
	if t.Timeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(t.Timeout)
	if err != nil || d <= 0 || d > maxPauseTimeout {
		return 0, fmt.Errorf("cove.timeout %q: want a duration like \"6h\", more than 0s and at most 720h", t.Timeout)
	}
	return d, nil
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	var req pauseRequest
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var timeout time.Duration
	if req.Cove != nil {
		var err error
		if timeout, err = req.Cove.timeout(); err != nil {
			writeControlError(w, http.StatusBadRequest, "%v", err)
			return
		}
	}
	ss, rec, ok := s.lookup(ctx, w, r, "session.park")
	if !ok {
		return
	}
	if state(ss) == "paused" {
		writeControlError(w, http.StatusConflict, "sandbox %q is already paused", ss.ID)
		return
	}
	if req.Cove == nil {
		if _, err := s.cfg.Sessions.Park(ctx, ss.ID); err != nil {
			s.fail(w, r, "pause sandbox", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if _, err := s.cfg.Sessions.ParkUntil(ctx, ss.ID, req.Cove.Until, timeout); err != nil {
		s.fail(w, r, "pause sandbox until an event", err)
		return
	}
	// The sweep looks at it until it runs again (see expireOne).
	rec.EventWake = true
	b, err := json.Marshal(rec)
	if err == nil {
		err = s.cfg.Records.PutE2BSandbox(ctx, store.E2BSandbox{SessionID: ss.ID, Record: b, DueAt: s.cfg.Now().Add(eventWakePoll)})
	}
	if err != nil {
		// Paused and waiting all the same: only the end time after
		// the wake is lost.
		s.log.WarnContext(ctx, "e2b: record the sandbox's pause until an event", "session", ss.ID, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	var req struct {
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ss, rec, ok := s.lookup(ctx, w, r, "session.wake")
	if !ok {
		return
	}
	status := http.StatusOK
	if ss.State != api.StateRunning {
		if _, err := s.cfg.Sessions.Wake(ctx, ss.ID); err != nil {
			s.fail(w, r, "resume sandbox", err)
			return
		}
		status = http.StatusCreated
	}
	now := s.cfg.Now().UTC()
	switch {
	case req.Timeout != nil && *req.Timeout > 0:
		// A connect extends the lifetime, never shortens it; a resume
		// starts it afresh.
		end := now.Add(seconds(*req.Timeout))
		if status == http.StatusCreated || !rec.EndAt.IsZero() && end.After(rec.EndAt) {
			rec.EndAt = end
		}
	case status == http.StatusCreated && !rec.EndAt.IsZero() && rec.EndAt.Before(now.Add(ResumeTimeout)):
		// Resumed past its end time: not ended again at once.
		rec.EndAt = now.Add(ResumeTimeout)
	}
	rec.EventWake = false // its time is set here
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		s.fail(w, r, "connect sandbox", err)
		return
	}
	writeJSON(w, status, s.sandboxAnswer(ss.ID, rec))
}

// Run ends sandboxes at their end time (parks those that asked for
// auto-pause) until ctx is done, looking every interval.
func (s *Server) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.expire(ctx)
		}
	}
}

// expireLease is the lease of the end-time sweep: one server of those
// sharing a store ends sandboxes, the holder, renewing it each sweep.
const expireLease = "e2b/expire"

// expireBatch is how many due sandboxes one sweep takes at most; the
// rest wait for the next.
const expireBatch = 256

// expire ends the running sandboxes past their end time. It reads only
// the records due (store.E2BSandbox.DueAt, their end time, from an
// index), not every record: a sandbox is looked at when its end time
// comes, then not again until a write gives it a new one. One that does
// not run then (paused, failed) is not due any more: a sandbox woken
// other than through this API (cove's own wake) runs on until a connect
// or setTimeout gives it an end time again.
//
// With a Router, each server's sweep ends the sandboxes its node holds
// (its own lease, per node) and leaves the others' to their servers':
// only the holder's session manager can pause or stop a sandbox's VM.
func (s *Server) expire(ctx context.Context) {
	lease := expireLease
	if s.cfg.Router != nil {
		lease += "/" + s.cfg.Router.Node()
	}
	if ok, err := s.cfg.Records.Claim(ctx, lease, s.cfg.ServerID, 30*time.Second); err != nil || !ok {
		if err != nil {
			s.log.WarnContext(ctx, "e2b: claim the end-time sweep", "err", err)
		}
		return
	}
	now := s.cfg.Now()
	xs, err := s.cfg.Records.DueE2BSandboxes(ctx, now, expireBatch)
	if err != nil {
		s.log.WarnContext(ctx, "e2b: read the sandboxes due at their end time", "err", err)
		return
	}
	for _, x := range xs {
		if s.cfg.Router != nil {
			if _, elsewhere, err := s.cfg.Router.Session(ctx, x.SessionID); err != nil || elsewhere {
				continue // another server's node's (or the store cannot say now)
			}
		}
		s.expireOne(ctx, x, now)
	}
}

// expireOne ends sandbox x, due at now: parks it (auto-pause) or removes
// it if it runs past its end time, then records it not due, or due at
// its end time where that is still to come. A record written since it
// was read keeps its own due time.
func (s *Server) expireOne(ctx context.Context, x store.E2BSandbox, now time.Time) {
	var (
		rec  record
		next time.Time // not due again, unless…
	)
	defer func() {
		if _, err := s.cfg.Records.SetE2BSandboxDue(ctx, x.SessionID, x.DueAt, next); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.WarnContext(ctx, "e2b: record the sandbox's next end-time check", "session", x.SessionID, "err", err)
		}
	}()
	if err := json.Unmarshal(x.Record, &rec); err != nil {
		return
	}
	if rec.EventWake {
		s.eventWake(ctx, x, rec, now, &next)
		return
	}
	if rec.EndAt.IsZero() {
		return
	}
	if now.Before(rec.EndAt) {
		next = rec.EndAt
		return
	}
	ss, err := s.cfg.Sessions.Get(ctx, x.SessionID)
	switch {
	case err != nil && api.IsCode(err, api.CodeNotFound):
		return
	case err != nil:
		next = x.DueAt // look again at the next sweep
		return
	case ss.State == api.StateParked || ss.State == api.StateFailed:
		return
	case ss.State != api.StateRunning:
		next = x.DueAt // a park or wake under way: look again
		return
	}
	if rec.AutoPause {
		if err := s.announce(ctx, audit.Actor{Kind: audit.ActorCove}, "session.park", audit.Target{Session: ss.ID}); err != nil {
			next = x.DueAt
			return
		}
		if _, err := s.cfg.Sessions.Park(ctx, ss.ID); err != nil {
			s.log.WarnContext(ctx, "e2b: auto-pause at the sandbox's end time", "session", ss.ID, "err", err)
			next = x.DueAt
		} else {
			s.log.InfoContext(ctx, "e2b: sandbox paused at its end time", "session", ss.ID)
		}
		return
	}
	if err := s.announce(ctx, audit.Actor{Kind: audit.ActorCove}, "session.delete", audit.Target{Session: ss.ID}); err != nil {
		next = x.DueAt
		return
	}
	if err := s.remove(ctx, ss.ID); err != nil && !api.IsCode(err, api.CodeNotFound) {
		s.log.WarnContext(ctx, "e2b: end a sandbox at its end time", "session", ss.ID, "err", err)
		next = x.DueAt
		return
	}
	s.log.InfoContext(ctx, "e2b: sandbox ended at its end time", "session", ss.ID)
}

// eventWake looks at sandbox x, paused until an event: while it waits it
// is looked at again every eventWakePoll; once it runs (an event, a
// timeout, a connect or cove wake woke it) it gets ResumeTimeout more (or
// its end time, if later), as a resume by connect does, and the sweep
// takes it from there.
func (s *Server) eventWake(ctx context.Context, x store.E2BSandbox, rec record, now time.Time, next *time.Time) {
	ss, err := s.cfg.Sessions.Get(ctx, x.SessionID)
	switch {
	case err != nil && api.IsCode(err, api.CodeNotFound):
		return
	case err != nil, ss.State != api.StateRunning:
		*next = now.Add(eventWakePoll)
		return
	}
	rec.EventWake = false
	if !rec.EndAt.IsZero() && rec.EndAt.Before(now.Add(ResumeTimeout)) {
		rec.EndAt = now.Add(ResumeTimeout)
	}
	if err := s.writeRecord(ctx, ss.ID, rec); err != nil {
		s.log.WarnContext(ctx, "e2b: record the end time of a sandbox woken by an event", "session", ss.ID, "err", err)
		*next = now.Add(eventWakePoll)
	}
	// Written: the record's due time is its end time, which the
	// deferred compare-and-set leaves alone.
}
