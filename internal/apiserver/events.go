package apiserver

import (
	"context"
	"net/http"
	"strconv"

	"github.com/cove-dev/cove/api"
)

// SessionEvents reads the events due to a session; *session.Manager is
// one. It is an optional power of Config.Sessions: a server whose
// Sessions lack it answers GET /v1/sessions/{id}/events 404.
type SessionEvents interface {
	// Events returns one page of the events due to session id whose Seq
	// is above after, oldest first, with their deliveries' states. An
	// unknown id is CodeNotFound.
	Events(ctx context.Context, id string, after int64) (api.SessionEventPage, error)
}

// sessionEvents serves GET /v1/sessions/{id}/events[?after=SEQ]. The gate
// has decided session.events on the session, which exists.
func (s *Server) sessionEvents(w http.ResponseWriter, r *http.Request) error {
	var after int64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return api.Errorf(api.CodeInvalid, "after: %q is not an event seq (a whole number, 0 or more)", v)
		}
		after = n
	}
	ev, ok := s.sessions.(SessionEvents)
	if !ok {
		return api.Errorf(api.CodeNotFound, "this server keeps no session events")
	}
	page, err := ev.Events(r.Context(), r.PathValue("id"), after)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, page)
}
