package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// SessionWatch is the part of Sessions that watches guest directories;
// *session.Manager has it. A Sessions without it answers 404.
type SessionWatch interface {
	// Watch watches directory path in session id's guest (and its
	// subdirectories if recursive) until ctx ends or the watch does (the
	// session parked or stopped, the directory went away).
	Watch(ctx context.Context, id, path string, recursive, entries bool) (session.Watcher, error)
}

// watchDir serves GET /v1/sessions/{id}/files/watch: the changes under a
// guest directory as NDJSON, one api.WatchEvent a line, until the client
// goes away or the watch ends (the stream ends then).
func (s *Server) watchDir(w http.ResponseWriter, r *http.Request) error {
	p, err := guestPath(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	recursive, entries := q.Get("recursive") == "1" || q.Get("recursive") == "true", q.Get("entries") == "1" || q.Get("entries") == "true"
	sw, ok := s.sessions.(SessionWatch)
	if !ok {
		return api.Errorf(api.CodeNotFound, "this server watches no directories")
	}
	wt, err := sw.Watch(r.Context(), r.PathValue("id"), p, recursive, entries)
	if err != nil {
		return err
	}
	defer wt.Close()
	liftDeadlines(w)
	out := startNDJSON(w)
	defer out.close()
	for {
		evs, err := wt.Next()
		if errors.Is(err, io.EOF) || r.Context().Err() != nil {
			return nil
		}
		if err != nil {
			return reported(fmt.Errorf("watch %s: %w", p, err))
		}
		for _, ev := range evs {
			if err := out.send(ev); err != nil {
				return nil // the client went away
			}
		}
	}
}
