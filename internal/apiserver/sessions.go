package apiserver

import (
	"net/http"
	"strconv"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/session"
)

// sessionList is the answer of GET /v1/sessions: Next, with ?limit, is
// the next page's token ("" after the last page).
type sessionList struct {
	Sessions []api.Session `json:"sessions"`
	Next     string        `json:"next,omitempty"`
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, struct {
		OK bool `json:"ok"`
	}{true})
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSessionRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := validateCreate(req); err != nil {
		return err
	}
	// The gate left the decision here (decidedByHandler): on the
	// template a clone comes from, or on the Server.
	if err := s.decide(r.Context(), Action{Verb: "session.create", Template: req.Template}); err != nil {
		return err
	}
	act := Action{Verb: "session.create", Template: req.Template}
	key, keyed, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var sess api.Session
	replayed := false
	if keyed {
		kc, ok := s.sessions.(KeyedCreator)
		if !ok {
			return api.Errorf(api.CodeInvalid, "%s: this server's sessions take no idempotency key", idempotencyHeader)
		}
		sess, replayed, err = kc.CreateKeyed(r.Context(), owner(r.Context()), key, req)
	} else {
		sess, err = s.sessions.Create(r.Context(), owner(r.Context()), req)
	}
	if err != nil {
		s.outcome(r.Context(), act, audit.Outcome{Error: err.Error()})
		return err
	}
	if replayed {
		// The create with this key was made and audited before: this
		// answers it again, and changes nothing.
		return writeJSON(w, http.StatusOK, sess)
	}
	act.SessionID = sess.ID
	s.outcome(r.Context(), act, audit.Outcome{})
	if sess.BootMillis > 0 {
		s.metrics.ObserveBoot(time.Duration(sess.BootMillis) * time.Millisecond)
	}
	return writeJSON(w, http.StatusCreated, sess)
}

// idempotencyHeader names the header of a create's idempotency key.
const idempotencyHeader = "Idempotency-Key"

// maxIdempotencyKey bounds an idempotency key's length, in bytes.
const maxIdempotencyKey = 255

// idempotencyKey reads a create's Idempotency-Key: keyed false without
// one; a key that is empty, longer than maxIdempotencyKey bytes or has
// a byte that is not printable ASCII is CodeInvalid.
func idempotencyKey(r *http.Request) (key string, keyed bool, err error) {
	vals := r.Header.Values(idempotencyHeader)
	switch {
	case len(vals) == 0:
		return "", false, nil
	case len(vals) > 1:
		return "", false, api.Errorf(api.CodeInvalid, "%s: given %d times, want one", idempotencyHeader, len(vals))
	}
	key = vals[0]
	if key == "" || len(key) > maxIdempotencyKey {
		return "", false, api.Errorf(api.CodeInvalid, "%s: %d bytes, want 1 to %d", idempotencyHeader, len(key), maxIdempotencyKey)
	}
	for i := range len(key) {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return "", false, api.Errorf(api.CodeInvalid, "%s: byte %d (%#x) is not printable ASCII", idempotencyHeader, i, c)
		}
	}
	return key, true, nil
}

// listSessions lists the sessions the caller may read (session.get).
func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) error {
	list, next, err := s.listPage(r)
	if err != nil {
		return err
	}
	shown, err := s.readable(r.Context(), list)
	if err != nil {
		return err
	}
	// A page may show fewer than its limit (those the caller may not
	// see are left out) and still have a next one.
	return writeJSON(w, http.StatusOK, sessionList{Sessions: shown, Next: next})
}

// listPage reads the sessions GET /v1/sessions lists: all of them, or,
// with ?limit=N (and ?after=TOKEN, the next token of the page before),
// one page of N at most (1 to session.MaxPage) and the next page's token.
func (s *Server) listPage(r *http.Request) ([]api.Session, string, error) {
	q := r.URL.Query()
	lim, after := q.Get("limit"), q.Get("after")
	if lim == "" && after == "" {
		list, err := s.sessions.List(r.Context())
		return list, "", err
	}
	limit, err := strconv.Atoi(lim)
	if err != nil || limit < 1 || limit > session.MaxPage {
		return nil, "", api.Errorf(api.CodeInvalid, "limit %q: want a number from 1 to %d (with after)", lim, session.MaxPage)
	}
	p, ok := s.sessions.(Pager)
	if !ok {
		list, err := s.sessions.List(r.Context()) // one page: all
		return list, "", err
	}
	return p.ListPage(r.Context(), after, limit)
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.sessions.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) error {
	if err := s.sessions.Delete(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// The body of POST /v1/sessions/{id}/wake, api.WakeRequest, may be empty
// (or {}); unknown fields are refused so that later options cannot be
// silently ignored by an older server. The park body, api.ParkRequest, is
// decoded the same way.

// parkSession parks a session; with until or timeout in the body it parks
// it until an event (Sessions.ParkUntil).
func (s *Server) parkSession(w http.ResponseWriter, r *http.Request) error {
	var req api.ParkRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	timeout, err := validatePark(req)
	if err != nil {
		return err
	}
	liftDeadlines(w) // saving a large guest's RAM takes a while
	id := r.PathValue("id")
	var sess api.Session
	if len(req.Until) == 0 && req.Timeout == "" {
		sess, err = s.sessions.Park(r.Context(), id)
	} else {
		sess, err = s.sessions.ParkUntil(r.Context(), id, req.Until, timeout)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

func (s *Server) wakeSession(w http.ResponseWriter, r *http.Request) error {
	var req api.WakeRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	liftDeadlines(w)
	var sess api.Session
	var err error
	if req.FromLastSnapshot {
		sess, err = s.sessions.WakeFromLastSnapshot(r.Context(), r.PathValue("id"))
	} else {
		sess, err = s.sessions.Wake(r.Context(), r.PathValue("id"))
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}
