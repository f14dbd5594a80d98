package fake

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
)

// fakeWatch is a directory watch in the fake guest: the guest's own file
// changes (write, mkdir, remove, touch) are its events, queued up to
// agentproto.MaxWatchQueue and dropped with an overflow notice past that,
// as the real agent's inotify watches are.
type fakeWatch struct {
	dir       string
	recursive bool
	ready     chan struct{} // signalled when queue or dropped change

	mu      sync.Mutex
	queue   []agentproto.WatchEvent // guarded by mu
	dropped int64                   // guarded by mu
}

// rel is p relative to the watched directory, if the watch sees p.
func (w *fakeWatch) rel(p string) (string, bool) {
	prefix := strings.TrimSuffix(w.dir, "/") + "/"
	if !strings.HasPrefix(p, prefix) {
		return "", false
	}
	rel := p[len(prefix):]
	if !w.recursive && strings.Contains(rel, "/") {
		return "", false
	}
	return rel, true
}

func (w *fakeWatch) push(ev agentproto.WatchEvent) {
	w.mu.Lock()
	if len(w.queue) >= agentproto.MaxWatchQueue {
		w.dropped++
	} else {
		w.queue = append(w.queue, ev)
	}
	w.mu.Unlock()
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

func (w *fakeWatch) take() []agentproto.WatchEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	evs := w.queue
	w.queue = nil
	if w.dropped > 0 {
		evs = append(evs, agentproto.WatchEvent{Op: agentproto.WatchOverflow, Dropped: w.dropped})
		w.dropped = 0
	}
	return evs
}

// notify gives p's change op to the watches that see it. Called with
// g.mu held.
func (g *guest) notify(p, op string) {
	for w := range g.watches {
		if rel, ok := w.rel(p); ok {
			w.push(agentproto.WatchEvent{Name: rel, Op: op})
		}
	}
}

// watch serves OpWatch until the host closes the stream (or the session
// ends, a park's detach).
func (g *guest) watch(st *yamux.Stream, req agentproto.Request) {
	p, err := cleanPath(req.Path)
	if err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if !g.enter() {
		return
	}
	f := g.st.Files[p]
	switch {
	case f == nil:
		g.mu.Unlock()
		respondErr(st, agentproto.CodeNotFound, fmt.Errorf("watch %s: no such file or directory", p))
		return
	case !f.Dir:
		g.mu.Unlock()
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("watch %s: not a directory", p))
		return
	case len(g.watches) >= agentproto.MaxWatches:
		g.mu.Unlock()
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("watch %s: the guest has %d watches already", p, agentproto.MaxWatches))
		return
	}
	w := &fakeWatch{dir: p, recursive: req.Recursive, ready: make(chan struct{}, 1)}
	if g.watches == nil {
		g.watches = map[*fakeWatch]struct{}{}
	}
	g.watches[w] = struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.watches, w)
		g.mu.Unlock()
	}()
	respond(st, agentproto.Response{})
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, st)
		close(done)
	}()
	for {
		if evs := w.take(); len(evs) > 0 {
			if agentproto.WriteJSON(st, agentproto.FrameEvents, evs) != nil {
				return
			}
		}
		select {
		case <-w.ready:
		case <-done:
			return
		}
	}
}
