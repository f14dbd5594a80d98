package session_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// localBytes is what session id's snapshot files take in dir, as the
// node cache counts them: the blocks allocated to the RAM file, the
// device state and the disk overlay.
func localBytes(t *testing.T, dir, id string) int64 {
	t.Helper()
	var n int64
	for _, f := range []string{"mem", "state", "disk.qcow2"} {
		var st syscall.Stat_t
		err := syscall.Stat(filepath.Join(dir, id, f), &st)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			t.Fatal(err)
		default:
			n += st.Blocks * 512
		}
	}
	return n
}

// cacheHooks is an event hook for the node cache tests: it refuses the
// uploads of the sessions in refuse (they stay parked, not stored),
// holds the wake of session hold at its start (its lifecycle lock taken,
// its record still parked) until release is closed, and keeps the
// evictions done.
type cacheHooks struct {
	mu      sync.Mutex
	refuse  map[string]bool          // guarded by mu
	hold    string                   // guarded by mu
	held    chan struct{}            // guarded by mu: closed once hold's wake waits
	release chan struct{}            // guarded by mu
	evicted map[string]session.Event // guarded by mu: Done events by session, the last of each
	count   int                      // guarded by mu: evictions done
}

func (h *cacheHooks) onEvent(_ context.Context, ev session.Event) error {
	h.mu.Lock()
	switch {
	case ev.Kind == session.EventStore && ev.Phase == session.Begin && h.refuse[ev.Session]:
		h.mu.Unlock()
		return errors.New("this session's uploads are refused by the test")
	case ev.Kind == session.EventWake && ev.Phase == session.Begin && ev.Session == h.hold:
		held, release := h.held, h.release
		h.hold = ""
		h.mu.Unlock()
		close(held)
		<-release
		return nil
	case ev.Kind == session.EventEvict && ev.Phase == session.Done:
		h.evicted[ev.Session] = ev
		h.count++
	}
	h.mu.Unlock()
	return nil
}

// evictionCount is how many evictions were done.
func (h *cacheHooks) evictionCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

func (h *cacheHooks) evictions() map[string]session.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]session.Event{}
	for k, v := range h.evicted {
		out[k] = v
	}
	return out
}

// TestFakeCacheEvictsOldestStored protects the node cache's rules
// (Config.CacheSize): over the bound, stored parked sessions' files are
// evicted, least recently parked first, until under it, at start and
// after an upload; a session that is not stored is never evicted, even
// the oldest; nor is one under a lifecycle operation (a wake held at
// its start); an evicted session wakes from the object store with its
// files, and a re-parked one counts as recently parked.
func TestFakeCacheEvictsOldestStored(t *testing.T) {
	t.Parallel()
	h := &cacheHooks{refuse: map[string]bool{}, evicted: map[string]session.Event{}}
	var limit int64 // no bound until the restart
	r := newObjectsRig(t, func(c *session.Config) {
		c.CacheSize = limit
		c.OnEvent = h.onEvent
	})
	names := []string{"n", "a", "b", "c"} // parked in this order; n is never stored
	ids := map[string]string{}
	for _, name := range names {
		s := r.create(api.CreateSessionRequest{})
		ids[name] = s.ID
		r.write(s.ID, "/root/marker", "session "+name+"\n")
	}
	h.mu.Lock()
	h.refuse[ids["n"]] = true
	h.mu.Unlock()
	size := map[string]int64{}
	var total int64
	for _, name := range names {
		r.park(ids[name])
		if name != "n" {
			r.waitStored(ids[name])
		}
		size[name] = localBytes(t, r.dir, ids[name])
		total += size[name]
		if size[name] <= 0 {
			t.Fatalf("session %s holds %d bytes parked", name, size[name])
		}
	}
	if got := r.get(ids["n"]); got.Stored {
		t.Fatalf("session n stored though its uploads are refused: %+v", got)
	}
	t.Logf("parked bytes: %v, total %d", size, total)

	// A bound that a and b must go for (n, older, is not stored; c is the
	// newest): the first pass at start evicts them.
	limit = total - size["a"] - size["b"]/2
	r.restart()
	r.eventually("a and b evicted", func() bool {
		ev := h.evictions()
		return len(ev) >= 2
	})
	ev := h.evictions()
	for _, name := range []string{"a", "b"} {
		e, ok := ev[ids[name]]
		if !ok || e.Err != nil || e.Bytes != size[name] || e.Cause != session.CauseCache {
			t.Errorf("eviction of %s: %+v (found %v); want one freeing %d bytes, caused by the cache", name, e, ok, size[name])
		}
		if got := localBytes(t, r.dir, ids[name]); got != 0 {
			t.Errorf("session %s evicted but %d bytes of its snapshot are still here", name, got)
		}
		if got := r.get(ids[name]); !got.Evicted || !got.Stored || got.State != api.StateParked {
			t.Errorf("session %s after its eviction: %+v; want parked, stored, evicted", name, got)
		}
	}
	for _, name := range []string{"n", "c"} {
		if _, ok := ev[ids[name]]; ok || localBytes(t, r.dir, ids[name]) != size[name] {
			t.Errorf("session %s evicted (n is not stored, c the newest): %v", name, ev)
		}
		if got := r.get(ids[name]); got.Evicted {
			t.Errorf("session %s says evicted with its files here: %+v", name, got)
		}
	}
	if u := r.mgr.CacheUsage(); u.Limit != limit || u.Bytes != size["n"]+size["c"] || u.Bytes > limit {
		t.Errorf("cache usage %+v; want %d bytes of at most %d", u, size["n"]+size["c"], limit)
	}

	// An evicted session wakes from the object store with its files.
	r.wantFile(ids["a"], "/root/marker", "session a\n")

	// c's wake is held at its start (its lock taken, still parked) while
	// a's second park is stored: c, least recently parked, is passed
	// over, and a, parked last, goes instead.
	held, release := make(chan struct{}), make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	defer letGo() // a failure below must not leave c's lock held for the cleanup's delete
	h.mu.Lock()
	h.hold, h.held, h.release = ids["c"], held, release
	h.mu.Unlock()
	woke := make(chan error, 1)
	go func() {
		_, err := r.mgr.Wake(context.Background(), ids["c"])
		woke <- err
	}()
	<-held
	before := h.evictionCount()
	r.park(ids["a"])
	r.waitStored(ids["a"])
	r.eventually("an eviction after a's second park", func() bool { return h.evictionCount() > before })
	if got := localBytes(t, r.dir, ids["c"]); got != size["c"] {
		t.Errorf("session c, under its wake's lock, lost its files: %d bytes here, had %d", got, size["c"])
	}
	if got := localBytes(t, r.dir, ids["n"]); got != size["n"] {
		t.Errorf("session n, never stored, lost its files: %d bytes here, had %d", got, size["n"])
	}
	if got := r.get(ids["a"]); !got.Evicted {
		t.Errorf("session a, the only one that could go, was not evicted: %+v", got)
	}
	letGo()
	if err := <-woke; err != nil {
		t.Fatalf("wake of c held during the pass: %v", err)
	}
	r.wantFile(ids["c"], "/root/marker", "session c\n")
	r.wantFile(ids["a"], "/root/marker", "session a\n")
	r.wantFile(ids["b"], "/root/marker", "session b\n")
	if got := localBytes(t, r.dir, ids["n"]); got != size["n"] {
		t.Errorf("session n, never stored, lost its files: %d bytes here, had %d", got, size["n"])
	}
}

// TestFakeCacheOverBoundWarnsOnce: parked sessions that cannot be evicted
// (not stored) keep the cache over its bound: the server says so once,
// and parks go on.
func TestFakeCacheOverBoundWarnsOnce(t *testing.T) {
	t.Parallel()
	h := &cacheHooks{refuse: map[string]bool{}, evicted: map[string]session.Event{}}
	log := &syncBuffer{}
	r := newObjectsRig(t, func(c *session.Config) {
		c.CacheSize = 1
		c.OnEvent = h.onEvent
		c.Log = slog.New(slog.NewTextHandler(log, nil))
	})
	const warning = "node cache over its bound"
	for i := range 3 {
		s := r.create(api.CreateSessionRequest{})
		h.mu.Lock()
		h.refuse[s.ID] = true
		h.mu.Unlock()
		r.park(s.ID)
		// The refused upload ends, and the pass it asks for runs.
		r.eventually(fmt.Sprintf("pass after park %d", i), func() bool {
			return r.mgr.CacheUsage().Bytes >= int64(i+1)*1 && strings.Contains(log.String(), warning)
		})
	}
	r.eventually("cache bytes of all three", func() bool {
		var want int64
		ss, _ := r.mgr.List(context.Background())
		for _, s := range ss {
			want += localBytes(t, r.dir, s.ID)
		}
		return r.mgr.CacheUsage().Bytes == want
	})
	if n := strings.Count(log.String(), warning); n != 1 {
		t.Errorf("the over-bound warning was logged %d times, want once:\n%s", n, log)
	}
	if ev := h.evictions(); len(ev) != 0 {
		t.Errorf("sessions not stored were evicted: %v", ev)
	}
}

// TestFakeCacheRacesWakes: with a bound of one byte, every stored parked
// session is evicted as soon as a pass sees it, while its session is
// parked, woken and parked again from several goroutines: whichever comes
// first, the eviction or the wake, each wake finds the session as its
// last park left it (from the host's files or from the object store).
func TestFakeCacheRacesWakes(t *testing.T) {
	t.Parallel()
	h := &cacheHooks{refuse: map[string]bool{}, evicted: map[string]session.Event{}}
	r := newObjectsRig(t, func(c *session.Config) {
		c.CacheSize = 1
		c.OnEvent = h.onEvent
	})
	const sessions, rounds = 4, 6
	var ids []string
	for range sessions {
		ids = append(ids, r.create(api.CreateSessionRequest{}).ID)
	}
	var wg sync.WaitGroup
	errs := make(chan error, sessions*rounds)
	for _, id := range ids {
		wg.Go(func() {
			ctx := context.Background()
			for i := range rounds {
				want := fmt.Sprintf("%s round %d\n", id, i)
				if err := r.mgr.WriteFile(ctx, id, "/root/marker", 0o644, strings.NewReader(want)); err != nil {
					errs <- fmt.Errorf("%s: write round %d: %w", id, i, err)
					return
				}
				if _, err := r.mgr.Park(ctx, id); err != nil {
					errs <- fmt.Errorf("%s: park round %d: %w", id, i, err)
					return
				}
				if i%2 == 1 { // every other round, wait to be evicted first
					if !waitFor(30*time.Second, func() bool {
						s, err := r.mgr.Get(ctx, id)
						return err == nil && s.Evicted
					}) {
						errs <- fmt.Errorf("%s: not evicted in round %d", id, i)
						return
					}
				}
				rc, err := r.mgr.Open(ctx, id, "/root/marker") // wakes it
				if err != nil {
					errs <- fmt.Errorf("%s: open round %d: %w", id, i, err)
					return
				}
				b, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || string(b) != want {
					errs <- fmt.Errorf("%s: round %d: the marker is %q (%v), want %q", id, i, b, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if h.evictionCount() < sessions*rounds/2 {
		t.Errorf("%d evictions, want at least %d (every other round of each session)", h.evictionCount(), sessions*rounds/2)
	}
}
