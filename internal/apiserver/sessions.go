package apiserver

import (
	"github.com/cove-dev/cove/internal/audit"
	"net/http"
	"time"

	"github.com/cove-dev/cove/api"
)

// sessionList is the answer of GET /v1/sessions.
type sessionList struct {
	Sessions []api.Session `json:"sessions"`
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
	sess, err := s.sessions.Create(r.Context(), owner(r.Context()), req)
	if err != nil {
		s.outcome(r.Context(), act, audit.Outcome{Error: err.Error()})
		return err
	}
	act.SessionID = sess.ID
	s.outcome(r.Context(), act, audit.Outcome{})
	if sess.BootMillis > 0 {
		s.metrics.ObserveBoot(time.Duration(sess.BootMillis) * time.Millisecond)
	}
	return writeJSON(w, http.StatusCreated, sess)
}

// listSessions lists the sessions the caller may read (session.get).
func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) error {
	shown, err := s.visibleSessions(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sessionList{shown})
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
