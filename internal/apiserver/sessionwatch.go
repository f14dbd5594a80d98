package apiserver

import (
	"context"
	"net/http"
	"time"

	"github.com/cove-dev/cove/api"
)

// SessionChanges is the part of Sessions that tells when its sessions
// change; *session.Manager has it. A Sessions without it answers GET
// /v1/sessions/watch with 404 (clients poll GET /v1/sessions instead).
type SessionChanges interface {
	// Changes returns a channel that receives a signal after sessions
	// change (one signal may stand for several changes), and a func that
	// ends the subscription.
	Changes() (<-chan struct{}, func())
}

// Timing of GET /v1/sessions/watch: changes closer together than
// watchCoalesce are sent as one list; with no change, the list goes out
// again every watchResend anyway (it keeps the connection alive through
// proxies, and brings what another server changed where the store tells
// no other server's changes: SQLite).
var (
	watchCoalesce = 100 * time.Millisecond
	watchResend   = 15 * time.Second
)

// watchSessions serves GET /v1/sessions/watch: the caller's list of
// sessions as NDJSON, one {"sessions":[…]} a line — at once, then after
// each change — until the client goes away. Each list is GET
// /v1/sessions' answer for the same caller: the sessions it may read and
// no other.
func (s *Server) watchSessions(w http.ResponseWriter, r *http.Request) error {
	sc, ok := s.sessions.(SessionChanges)
	if !ok {
		return api.Errorf(api.CodeNotFound, "this server pushes no session changes; poll GET /v1/sessions")
	}
	ch, stop := sc.Changes()
	defer stop()
	first, err := s.visibleSessions(r.Context())
	if err != nil {
		return err
	}
	liftDeadlines(w)
	out := startNDJSON(w)
	defer out.close()
	if out.send(sessionList{Sessions: first}) != nil {
		return nil
	}
	resend := time.NewTicker(watchResend)
	defer resend.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-resend.C:
		case <-ch:
			// Let a burst (a create writes its record several times)
			// end before the list is read.
			select {
			case <-r.Context().Done():
				return nil
			case <-time.After(watchCoalesce):
			}
		}
		list, err := s.visibleSessions(r.Context())
		if err != nil {
			if r.Context().Err() != nil {
				return nil
			}
			s.log.Warn("watch sessions: list", "err", err)
			continue // the next change or resend tries again
		}
		if out.send(sessionList{Sessions: list}) != nil {
			return nil // the client went away
		}
	}
}

// visibleSessions is the list of sessions the caller may read
// (session.get on each), as GET /v1/sessions answers it.
func (s *Server) visibleSessions(ctx context.Context) ([]api.Session, error) {
	list, err := s.sessions.List(ctx)
	if err != nil {
		return nil, err
	}
	return s.readable(ctx, list)
}

// readable is the part of list the caller may read (session.get).
func (s *Server) readable(ctx context.Context, list []api.Session) ([]api.Session, error) {
	shown := make([]api.Session, 0, len(list))
	for _, sess := range list {
		ok, err := s.visible(ctx, Action{Verb: "session.get", SessionID: sess.ID})
		if err != nil {
			return nil, err
		}
		if ok {
			shown = append(shown, sess)
		}
	}
	return shown, nil
}
