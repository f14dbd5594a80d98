package session

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
)

// Watcher is a directory watch in a session's guest.
type Watcher interface {
	// Next waits for the next events. It returns io.EOF once the watch
	// ended: the directory went away, or the session parked or stopped
	// (a watch does not survive a park: the watcher watches again after
	// the wake if it wants to).
	Next() ([]api.WatchEvent, error)
	// Close ends the watch.
	Close()
}

// Watch watches directory path in the session's guest, and its
// subdirectories if recursive; entries asks for each event's FileInfo.
// The watch lasts until Close, ctx's end, or the session's park or stop.
// It is not a call a park waits for, nor activity that keeps the session
// from parking when idle.
func (m *Manager) Watch(ctx context.Context, id, path string, recursive, entries bool) (Watcher, error) {
	var (
		w *agentproto.Watch
		l *live
		c *agentproto.Client
	)
	err := m.withAgent(ctx, id, func(al *live) (bool, error) {
		c = al.client()
		var err error
		if w, err = c.Watch(ctx, path, recursive, entries); err != nil {
			return true, err // a watch asked twice does no harm
		}
		l = al
		return false, nil
	})
	if err != nil {
		return nil, guestErr(id, "watch "+path, err)
	}
	return &watcher{m: m, id: id, path: path, l: l, c: c, w: w}, nil
}

type watcher struct {
	m      *Manager
	id     string
	path   string
	l      *live
	c      *agentproto.Client
	w      *agentproto.Watch
	closed atomic.Bool
}

func (w *watcher) Next() ([]api.WatchEvent, error) {
	evs, err := w.w.Next()
	if err != nil {
		if errors.Is(err, io.EOF) || w.closed.Load() {
			return nil, io.EOF
		}
		// The connection ended under the watch: a park or a stop ends
		// it cleanly; anything else is the guest's failure.
		w.m.mu.Lock()
		moved := w.l.deleting || w.m.live[w.id] != w.l
		w.m.mu.Unlock()
		if moved || w.l.client() != w.c {
			return nil, io.EOF
		}
		ctx, cancel := context.WithTimeout(context.Background(), agentproto.AnswerTimeout)
		defer cancel()
		if gone := w.m.goneErr(ctx, w.id); gone != nil {
			return nil, io.EOF
		}
		return nil, guestErr(w.id, "watch "+w.path, err)
	}
	out := make([]api.WatchEvent, 0, len(evs))
	for _, ev := range evs {
		e := api.WatchEvent{Name: ev.Name, Type: ev.Op, Dropped: ev.Dropped}
		if ev.Info != nil {
			fi := fileInfo(*ev.Info)
			e.Info = &fi
		}
		out = append(out, e)
	}
	return out, nil
}

func (w *watcher) Close() {
	w.closed.Store(true)
	w.w.Close()
}
