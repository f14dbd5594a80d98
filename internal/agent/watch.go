package agent

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
)

// A directory watch (OpWatch) reads inotify. Each watch has an inotify
// instance of its own, with one kernel watch per directory watched (the
// directory, and for a recursive watch every directory under it, those
// made later included). Events wait in a queue of at most
// agentproto.MaxWatchQueue until the stream takes them; an event that
// finds the queue full is dropped and counted, and the count goes to the
// host as a WatchOverflow event where the dropped events would have been.

// watchMask is what a watched directory reports: the changes of its
// entries, and its own removal or move.
const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// watchBatch is the most events one FrameEvents carries: with names up to
// PATH_MAX it stays well under agentproto.MaxFrame.
const watchBatch = 128

// takeWatch counts a new watch, or reports that the guest has
// agentproto.MaxWatches already.
func (a *Agent) takeWatch() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.watches >= agentproto.MaxWatches {
		return false
	}
	a.watches++
	return true
}

func (a *Agent) dropWatch() {
	a.mu.Lock()
	a.watches--
	a.mu.Unlock()
}

// watch serves OpWatch: see the agentproto package doc.
func (a *Agent) watch(st io.ReadWriter, req agentproto.Request) {
	if err := checkPath(req.Path); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if !a.takeWatch() {
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("watch %s: the guest has %d watches already, the most it keeps", req.Path, agentproto.MaxWatches))
		return
	}
	defer a.dropWatch()
	w, err := newDirWatch(req.Path, req.Recursive, req.Entries)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(ctx, w.close)
	defer stop()
	defer w.close()
	if agentproto.WriteJSON(st, agentproto.FrameResponse, agentproto.Response{}) != nil {
		return
	}
	// The host sends nothing more: its close of the stream ends the watch.
	go func() {
		_, _ = io.Copy(io.Discard, st)
		cancel()
	}()
	go w.read()
	for {
		evs, ended := w.take(ctx)
		for len(evs) > 0 {
			n := min(len(evs), watchBatch)
			if agentproto.WriteJSON(st, agentproto.FrameEvents, evs[:n]) != nil {
				return
			}
			evs = evs[n:]
		}
		if ended {
			if ctx.Err() == nil {
				_ = agentproto.WriteFrame(st, agentproto.FrameEOF, nil)
			}
			return
		}
	}
}

// dirWatch is one watch's inotify instance and queue.
type dirWatch struct {
	root      string
	recursive bool
	entries   bool
	f         *os.File // the inotify instance (non-blocking: reads wait in the poller, Close ends them)
	closeOnce sync.Once

	dirs   map[int]string // wd → the directory's path relative to root; only read's goroutine after the start
	rootWd int
	// writes are the agent's own file writes under way (see putFile):
	// the cookie of the temporary file's move → whether the file it
	// replaces is new. Only read's goroutine.
	writes map[uint32]bool

	mu      sync.Mutex
	queue   []agentproto.WatchEvent // guarded by mu
	dropped int64                   // guarded by mu: events dropped since the queue was last taken
	ended   bool                    // guarded by mu: no event comes any more
	ready   chan struct{}           // signalled when queue, dropped or ended change
}

func newDirWatch(root string, recursive, entries bool) (*dirWatch, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("watch %s: %w", root, unix.ENOTDIR)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch %s: inotify: %w", root, err)
	}
	w := &dirWatch{root: filepath.Clean(root), recursive: recursive, entries: entries, f: os.NewFile(uintptr(fd), "inotify"),
		dirs: map[int]string{}, writes: map[uint32]bool{}, ready: make(chan struct{}, 1)}
	wd, err := unix.InotifyAddWatch(fd, w.root, watchMask)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	w.rootWd, w.dirs[wd] = wd, ""
	if recursive {
		w.addTree("")
	}
	return w, nil
}

func (w *dirWatch) close() { w.closeOnce.Do(func() { w.f.Close() }) }

// addTree watches the directories under rel (relative to root). One that
// cannot be watched (gone meanwhile, or the kernel's limit on watches
// reached) is left out.
func (w *dirWatch) addTree(rel string) {
	start := filepath.Join(w.root, rel)
	_ = filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		r, rerr := filepath.Rel(w.root, p)
		if rerr != nil || r == "." {
			return nil
		}
		if wd, err := w.addWatch(p); err == nil {
			w.dirs[wd] = r
		}
		return nil
	})
}

func (w *dirWatch) addWatch(p string) (int, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var wd int
	var werr error
	if err := rc.Control(func(fd uintptr) { wd, werr = unix.InotifyAddWatch(int(fd), p, watchMask) }); err != nil {
		return 0, err
	}
	return wd, werr
}

// forgetTree stops watching rel and what is under it (moved away).
func (w *dirWatch) forgetTree(rel string) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return
	}
	for wd, r := range w.dirs {
		if wd != w.rootWd && (r == rel || strings.HasPrefix(r, rel+"/")) {
			delete(w.dirs, wd)
			_ = rc.Control(func(fd uintptr) { _, _ = unix.InotifyRmWatch(int(fd), uint32(wd)) })
		}
	}
}

// read turns the instance's events into the queue's until the instance
// is closed or the watched directory goes.
func (w *dirWatch) read() {
	defer w.end()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameEnd := off + unix.SizeofInotifyEvent + int(ev.Len)
			if nameEnd > n {
				break
			}
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:nameEnd]), "\x00")
			off = nameEnd
			if !w.event(int(ev.Wd), ev.Mask, ev.Cookie, name) {
				return
			}
		}
	}
}

// event queues what one inotify event says; false once the watched
// directory is gone.
func (w *dirWatch) event(wd int, mask, cookie uint32, name string) bool {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.push(agentproto.WatchEvent{Op: agentproto.WatchOverflow})
		return true
	}
	if mask&unix.IN_IGNORED != 0 {
		delete(w.dirs, wd)
		return wd != w.rootWd
	}
	dir, ok := w.dirs[wd]
	if !ok {
		return true // a directory already forgotten
	}
	if name == "" {
		// The directory's own change: its parent reports it (with a
		// name), unless it is the root, whose removal or move ends the
		// watch.
		if wd == w.rootWd && mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			return false
		}
		return true
	}
	rel := path.Join(dir, name)
	isDir := mask&unix.IN_ISDIR != 0
	// The agent writes a file as a temporary one renamed over it: what
	// a watcher sees is the file's write (its create too if it is new),
	// as for a write in place; the temporary file is not reported.
	if strings.HasPrefix(name, writeTemp) && !isDir {
		if mask&unix.IN_MOVED_FROM != 0 {
			if len(w.writes) >= 64 { // moves whose other half never came
				clear(w.writes)
			}
			w.writes[cookie] = strings.HasPrefix(name, writeTempNew)
		}
		return true
	}
	if isNew, ok := w.writes[cookie]; ok && cookie != 0 && mask&unix.IN_MOVED_TO != 0 {
		delete(w.writes, cookie)
		if isNew {
			w.push(w.entry(rel, agentproto.WatchCreate))
		}
		w.push(w.entry(rel, agentproto.WatchWrite))
		return true
	}
	var op string
	switch {
	case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		op = agentproto.WatchCreate
		if isDir && w.recursive {
			if nwd, err := w.addWatch(filepath.Join(w.root, rel)); err == nil {
				w.dirs[nwd] = rel
				w.addTree(rel)
			}
		}
	case mask&unix.IN_MODIFY != 0:
		op = agentproto.WatchWrite
	case mask&unix.IN_DELETE != 0:
		op = agentproto.WatchRemove
	case mask&unix.IN_MOVED_FROM != 0:
		op = agentproto.WatchRename
		if isDir && w.recursive {
			w.forgetTree(rel)
		}
	case mask&unix.IN_ATTRIB != 0:
		op = agentproto.WatchChmod
	default:
		return true
	}
	w.push(w.entry(rel, op))
	return true
}

// entry is the event op of rel, with its FileInfo if the watch asked for
// it and rel is there.
func (w *dirWatch) entry(rel, op string) agentproto.WatchEvent {
	ev := agentproto.WatchEvent{Name: rel, Op: op}
	if w.entries && op != agentproto.WatchRemove && op != agentproto.WatchRename {
		if fi, err := os.Lstat(filepath.Join(w.root, rel)); err == nil {
			ev.Info = info(path.Base(rel), fi)
		}
	}
	return ev
}

// push queues ev, or counts it dropped if the queue is full.
func (w *dirWatch) push(ev agentproto.WatchEvent) {
	w.mu.Lock()
	if len(w.queue) >= agentproto.MaxWatchQueue {
		w.dropped++
	} else {
		w.queue = append(w.queue, ev)
	}
	w.mu.Unlock()
	w.signal()
}

func (w *dirWatch) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
	w.signal()
}

func (w *dirWatch) signal() {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// take waits for events and returns all that are queued, with an
// overflow notice after them if some were dropped; ended is true once
// no more come (the directory went, or ctx ended).
func (w *dirWatch) take(ctx context.Context) (evs []agentproto.WatchEvent, ended bool) {
	for {
		w.mu.Lock()
		evs, w.queue = w.queue, nil
		if w.dropped > 0 {
			evs = append(evs, agentproto.WatchEvent{Op: agentproto.WatchOverflow, Dropped: w.dropped})
			w.dropped = 0
		}
		ended = w.ended
		w.mu.Unlock()
		if len(evs) > 0 || ended {
			return evs, ended
		}
		select {
		case <-w.ready:
		case <-ctx.Done():
			return nil, true
		}
	}
}
