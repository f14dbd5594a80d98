package e2b

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"path"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	fspb "github.com/cove-dev/cove/internal/e2b/envdpb/filesystem"
	"github.com/cove-dev/cove/internal/session"
)

// Directory watches: filesystem.Filesystem's WatchDir (a server stream,
// what the JavaScript SDK's files.watchDir uses) and the polling trio
// CreateWatcher, GetWatcherEvents and RemoveWatcher (the Python SDK's
// synchronous watch), both on the session manager's Watch (inotify in the
// guest agent). A watch ends when the sandbox parks: the stream ends
// cleanly, and a polled watcher answers its last events, then not_found.
// The guest's overflow notices (events it dropped because the watcher
// fell behind) have no E2B form and are not passed on.

// eventTypes are filesystem.EventType's of the guest's kinds.
var eventTypes = map[string]fspb.EventType{"create": fspb.EventType_EVENT_TYPE_CREATE, "write": fspb.EventType_EVENT_TYPE_WRITE,
	"remove": fspb.EventType_EVENT_TYPE_REMOVE, "rename": fspb.EventType_EVENT_TYPE_RENAME, "chmod": fspb.EventType_EVENT_TYPE_CHMOD}

// fsEvents turns the guest's events into envd's, dropping overflow
// notices.
func fsEvents(dir string, evs []api.WatchEvent, names *owners) []*fspb.FilesystemEvent {
	out := make([]*fspb.FilesystemEvent, 0, len(evs))
	for _, ev := range evs {
		typ, ok := eventTypes[ev.Type]
		if !ok {
			continue
		}
		e := &fspb.FilesystemEvent{Name: ev.Name, Type: typ}
		if ev.Info != nil {
			e.Entry = entryOf(path.Join(dir, ev.Name), *ev.Info, names)
		}
		out = append(out, e)
	}
	return out
}

// watchRequest is WatchDirRequest and CreateWatcherRequest.
type watchRequest interface {
	GetPath() string
	GetRecursive() bool
	GetIncludeEntry() bool
}

// startWatch checks that the request names a directory and watches it.
// A watch is audited as a listing: it shows the directory's entries.
func (s *Server) startWatch(ctx context.Context, r *http.Request, req watchRequest) (session.Watcher, string, *rpcError) {
	p := s.path(r, req.GetPath())
	if err := s.announceEnvd(r, "file.list", audit.Target{Path: p}); err != nil {
		return nil, p, s.asRPC(r, "watch "+p, err)
	}
	id := sandboxID(r)
	fi, err := s.cfg.Sessions.Stat(ctx, id, p)
	if err != nil {
		return nil, p, s.asRPC(r, "watch "+p, err)
	}
	if !fi.IsDir {
		return nil, p, rpcErrorf(codeInvalidArgument, "watch %s: not a directory", p)
	}
	w, err := s.cfg.Sessions.Watch(ctx, id, p, req.GetRecursive(), req.GetIncludeEntry())
	if err != nil {
		return nil, p, s.asRPC(r, "watch "+p, err)
	}
	return w, p, nil
}

// watchDir serves WatchDir: the start event, then the directory's events
// until the client goes, the Connect-Timeout-Ms deadline passes
// (deadline_exceeded, as envd), or the watch ends (the sandbox paused,
// the directory went: a clean end).
func (s *Server) watchDir(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	req := &fspb.WatchDirRequest{}
	if e := readEnvelope(r, st, req); e != nil {
		_ = st.end(e)
		return
	}
	timeout, e := connectTimeout(r)
	if e != nil {
		_ = st.end(e)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	wt, dir, e := s.startWatch(ctx, r, req)
	if e != nil {
		_ = st.end(e)
		return
	}
	defer wt.Close()
	if st.send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}) != nil {
		return
	}
	type batch struct {
		evs []api.WatchEvent
		err error
	}
	next := make(chan batch)
	go func() {
		for {
			evs, err := wt.Next()
			select {
			case next <- batch{evs, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	names := s.owners(ctx, sandboxID(r))
	ka := time.NewTicker(keepaliveInterval(r))
	defer ka.Stop()
	for {
		select {
		case b := <-next:
			if b.err != nil {
				if errors.Is(b.err, io.EOF) {
					_ = st.end(nil)
				} else {
					_ = st.end(s.asRPC(r, "watch "+dir, b.err))
				}
				return
			}
			for _, ev := range fsEvents(dir, b.evs, names) {
				if st.send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: ev}}) != nil {
					return
				}
			}
		case <-ka.C:
			if st.send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}}) != nil {
				return
			}
		case <-ctx.Done():
			if r.Context().Err() == nil { // the deadline, not the client's leave
				_ = st.end(rpcErrorf(codeDeadlineExceeded, "the watch of %s reached its Connect-Timeout-Ms", dir))
			}
			return
		}
	}
}

// Bounds of the polled watchers: per sandbox, and the events one holds
// until polled (the oldest are kept, later ones dropped).
const (
	maxPolledWatchers = 16
	maxPolledEvents   = 4096
)

// polled is a watcher made by CreateWatcher: its events wait for
// GetWatcherEvents.
type polled struct {
	id  string
	dir string
	w   session.Watcher

	mu     sync.Mutex
	events []*fspb.FilesystemEvent // guarded by mu
	ended  bool                    // guarded by mu: the watch ended; the events left are the last
	err    *rpcError               // guarded by mu: why, if not cleanly
}

// pump collects the watch's events until it ends.
func (pw *polled) pump(s *Server, r *http.Request) {
	names := s.owners(r.Context(), sandboxID(r))
	for {
		evs, err := pw.w.Next()
		pw.mu.Lock()
		if err != nil {
			pw.ended = true
			if !errors.Is(err, io.EOF) {
				pw.err = s.asRPC(r, "watch "+pw.dir, err)
			}
			pw.mu.Unlock()
			return
		}
		for _, ev := range fsEvents(pw.dir, evs, names) {
			if len(pw.events) < maxPolledEvents {
				pw.events = append(pw.events, ev)
			}
		}
		pw.mu.Unlock()
	}
}

// watcherRPC serves CreateWatcher, GetWatcherEvents and RemoveWatcher.
func (s *Server) watcherRPC(w http.ResponseWriter, r *http.Request, method string) {
	var req proto.Message
	create := &fspb.CreateWatcherRequest{}
	switch method {
	case "CreateWatcher":
		req = create
	case "GetWatcherEvents":
		req = &fspb.GetWatcherEventsRequest{}
	case "RemoveWatcher":
		req = &fspb.RemoveWatcherRequest{}
	}
	c, e := readUnary(r, req)
	if e != nil {
		writeUnaryError(w, e)
		return
	}
	var watcherID string
	if x, ok := req.(interface{ GetWatcherId() string }); ok {
		watcherID = x.GetWatcherId()
	}
	t := s.table(sandboxID(r))
	switch method {
	case "CreateWatcher":
		t.mu.Lock()
		for id, pw := range t.watchers { // ended and drained: nobody gets more from it
			pw.mu.Lock()
			if pw.ended && len(pw.events) == 0 {
				delete(t.watchers, id)
			}
			pw.mu.Unlock()
		}
		full := len(t.watchers) >= maxPolledWatchers
		t.mu.Unlock()
		if full {
			writeUnaryError(w, rpcErrorf(codeResourceExhausted, "the sandbox has %d watchers, the most it keeps: remove one", maxPolledWatchers))
			return
		}
		// The watch outlives this request: it lasts as the sandbox's
		// processes do, until RemoveWatcher or the sandbox's end.
		wt, dir, e := s.startWatch(t.ctx, r, create)
		if e != nil {
			writeUnaryError(w, e)
			return
		}
		var b [8]byte
		_, _ = rand.Read(b[:])
		pw := &polled{id: hex.EncodeToString(b[:]), dir: dir, w: wt}
		t.mu.Lock()
		if len(t.watchers) >= maxPolledWatchers {
			t.mu.Unlock()
			wt.Close()
			writeUnaryError(w, rpcErrorf(codeResourceExhausted, "the sandbox has %d watchers, the most it keeps: remove one", maxPolledWatchers))
			return
		}
		t.watchers[pw.id] = pw
		t.mu.Unlock()
		go pw.pump(s, r.WithContext(context.WithoutCancel(r.Context())))
		writeUnary(w, c, &fspb.CreateWatcherResponse{WatcherId: pw.id})
	case "GetWatcherEvents", "RemoveWatcher":
		t.mu.Lock()
		pw := t.watchers[watcherID]
		if pw != nil && method == "RemoveWatcher" {
			delete(t.watchers, pw.id)
		}
		t.mu.Unlock()
		if pw == nil {
			writeUnaryError(w, rpcErrorf(codeNotFound, "watcher %q not found", watcherID))
			return
		}
		if method == "RemoveWatcher" {
			pw.w.Close()
			writeUnary(w, c, &fspb.RemoveWatcherResponse{})
			return
		}
		pw.mu.Lock()
		evs, ended, err := pw.events, pw.ended, pw.err
		pw.events = nil
		pw.mu.Unlock()
		if ended && len(evs) == 0 {
			t.mu.Lock()
			delete(t.watchers, pw.id)
			t.mu.Unlock()
			if err == nil {
				err = rpcErrorf(codeNotFound, "watcher %q ended: the sandbox paused, or the directory went away", pw.id)
			}
			writeUnaryError(w, err)
			return
		}
		writeUnary(w, c, &fspb.GetWatcherEventsResponse{Events: evs})
	}
}
