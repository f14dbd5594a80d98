package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// The node cache (issue 18).
//
// Config.CacheSize bounds the bytes of parked sessions' snapshot files on
// this host: the RAM file, the device state and the disk overlay of each
// session recorded parked, counted as the blocks they have allocated (the
// RAM file is sparse: only the pages its guest touched count). Running
// sessions' files are the live VMs' memory and disk, not cache, and are
// not counted; nor are template versions' files.
//
// When parked sessions hold more than the bound, the evictor removes the
// snapshot files of stored ones (their record names the manifest of the
// snapshot it records, so the object store holds every byte of it),
// least recently parked first, until they hold no more than the bound. A
// session is evicted only under its lifecycle lock, taken without
// waiting: one being woken, parked, removed or recorded stored is passed
// over, as is one whose upload runs, and the record is read again under
// the lock. A wake of an evicted session restores its files from the
// object store (fetchSnapshot) and then wakes as any other.
//
// The evictor is one goroutine: it runs a pass at start (Recover) and
// after each upload ends, when parked sessions' bytes may have grown past
// the bound and new ones may have become evictable. A pass reads the
// session records and stats three files of each parked one; it removes
// nothing while under the bound. Parked sessions that cannot be evicted
// (not stored: an upload under way or failing) may keep the cache over
// its bound: that is logged once, until a pass gets under it again; parks
// are never refused for it.

// nodeCache is the evictor's state.
type nodeCache struct {
	kick chan struct{} // a pass is wanted; buffered, so kicks coalesce

	mu    sync.Mutex
	bytes int64 // guarded by mu: parked sessions' bytes here, as the last pass left them
	over  bool  // guarded by mu: the last pass ended over the bound (and said so)
}

// CacheUsage is what the node cache holds.
type CacheUsage struct {
	// Bytes is what parked sessions' snapshot files take on this host
	// (allocated blocks), as the evictor's last pass left it.
	Bytes int64
	// Limit is Config.CacheSize; 0: no bound.
	Limit int64
}

// CacheUsage returns what the node cache holds.
func (m *Manager) CacheUsage() CacheUsage {
	m.cache.mu.Lock()
	defer m.cache.mu.Unlock()
	return CacheUsage{Bytes: m.cache.bytes, Limit: m.cfg.CacheSize}
}

// startCache starts the evictor, which runs a first pass at once; with
// no bound there is none.
func (m *Manager) startCache() {
	if m.cfg.CacheSize <= 0 {
		return
	}
	m.kickCache()
	m.bg.Add(1)
	go m.cacheLoop()
}

// kickCache asks the evictor for a pass.
func (m *Manager) kickCache() {
	select {
	case m.cache.kick <- struct{}{}:
	default: // one is asked for already
	}
}

func (m *Manager) cacheLoop() {
	defer m.bg.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.cache.kick:
		}
		m.cachePass(context.Background())
	}
}

// cached is a parked session's snapshot on this host.
type cached struct {
	rec    store.Session
	mach   machine
	bytes  int64
	parked time.Time
}

// cachePass evicts stored parked sessions' files, least recently parked
// first, while parked sessions hold more than Config.CacheSize.
func (m *Manager) cachePass(ctx context.Context) {
	limit := m.cfg.CacheSize
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		m.cfg.Log.Warn("node cache: list sessions; nothing evicted this time", "err", err)
		return
	}
	var used int64
	var evictable []cached
	for _, rec := range recs {
		if rec.State != api.StateParked {
			continue
		}
		mach, err := decodeMachine(rec.Snapshot)
		if err != nil || mach.Parked == nil {
			continue
		}
		srcs, err := m.snapshotSources(rec.ID, mach)
		if err != nil {
			continue
		}
		var n int64
		for _, s := range srcs {
			n += allocated(s.Path)
		}
		used += n
		if n > 0 && rec.StoredManifest != "" {
			evictable = append(evictable, cached{rec: rec, mach: mach, bytes: n, parked: mach.Parked.CreatedAt})
		}
	}
	if used > limit {
		sort.Slice(evictable, func(i, j int) bool {
			a, b := evictable[i], evictable[j]
			if !a.parked.Equal(b.parked) {
				return a.parked.Before(b.parked)
			}
			return a.rec.ID < b.rec.ID
		})
		for _, c := range evictable {
			if used <= limit {
				break
			}
			freed, err := m.evict(ctx, c, used, limit)
			if err != nil {
				m.cfg.Log.Warn("node cache: eviction failed", "session", c.rec.ID, "err", err)
			}
			used -= freed
		}
	}
	m.cache.mu.Lock()
	defer m.cache.mu.Unlock()
	m.cache.bytes = used
	switch {
	case used <= limit:
		m.cache.over = false
	case !m.cache.over:
		m.cache.over = true
		m.cfg.Log.Warn("node cache over its bound: the parked sessions left here are not stored yet (uploads under way or failing) or were busy; nothing else is evicted",
			"cache_bytes", used, "cache_size", limit)
	}
}

// evict removes the snapshot files of parked session c from this host if
// it may go: stored, its record unchanged since the pass read it, no
// upload of it running and no lifecycle operation on it. It returns the
// bytes freed (0: passed over).
func (m *Manager) evict(ctx context.Context, c cached, used, limit int64) (int64, error) {
	id := c.rec.ID
	unlock, ok := m.tryLock(id)
	if !ok {
		return 0, nil // being woken, parked, removed or recorded stored
	}
	defer unlock()
	cur, err := m.cfg.Store.GetSession(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read its record: %w", err)
	}
	if cur.State != api.StateParked || cur.StoredManifest == "" || cur.StoredManifest != c.rec.StoredManifest ||
		!bytes.Equal(cur.Snapshot, c.rec.Snapshot) || m.uploading(id) {
		return 0, nil
	}
	srcs, err := m.snapshotSources(id, c.mach)
	if err != nil {
		return 0, err
	}
	ev, err := m.beginEvent(ctx, Event{Kind: EventEvict, Cause: CauseCache, Session: id})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	var freed int64
	var errs []error
	for _, s := range srcs {
		n := allocated(s.Path)
		if err := os.Remove(s.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		freed += n
	}
	err = errors.Join(errs...)
	ev.Bytes = freed
	m.doneEvent(ctx, ev, start, err)
	if err != nil {
		return freed, fmt.Errorf("remove its snapshot files: %w", err)
	}
	m.cfg.Log.Info("node cache: evicted a stored session's snapshot files; its wake restores them from the object store",
		"session", id, "manifest", cur.StoredManifest, "bytes_freed", freed, "cache_bytes", used-freed, "cache_size", limit)
	return freed, nil
}

// tryLock takes session id's lifecycle lock if no one holds it.
func (m *Manager) tryLock(id string) (unlock func(), ok bool) {
	m.mu.Lock()
	l := m.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		m.locks[id] = l
	}
	m.mu.Unlock()
	if !l.TryLock() {
		return nil, false
	}
	return l.Unlock, true
}

// uploading reports whether an upload of session id runs.
func (m *Manager) uploading(id string) bool {
	m.ups.mu.Lock()
	defer m.ups.mu.Unlock()
	return m.ups.running[id] != nil
}

// evicted reports whether parked session rec's snapshot files are gone
// from this host while the object store holds them: its wake restores
// them first.
func evicted(rec store.Session) bool {
	if rec.State != api.StateParked || rec.StoredManifest == "" {
		return false
	}
	mach, err := decodeMachine(rec.Snapshot)
	return err == nil && mach.Parked != nil && filesGone(mach)
}
