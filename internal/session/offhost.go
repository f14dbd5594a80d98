package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/store"
)

// Snapshots off the host (issue 18).
//
// Once a park has returned, the snapshot's files (RAM file, device state,
// disk overlay) are uploaded to the object store in the background
// (cas.Upload: content-addressed chunks, so what a store already holds is
// not sent again). When the manifest is durable the session's record gets
// its ID (store.Session.StoredManifest): the session is "stored". A wake
// that finds the session's files gone from this host restores them first
// (cas.Restore, every chunk verified), seeded by its template version's
// files where this host has them, after what they rest on (bases.go).
//
// A clone's snapshot shares most of its RAM with its template version's:
// the version's own files are stored first (bases.go: once it is ready,
// or at the latest before the clone's upload, which names it as its
// base), so that the clone adds only what it changed.
//
// The upload reads the files a wake would change (the woken guest writes
// its RAM file) and a delete removes: both end it, and wait for it to
// let go of the files, before they go on. Its record is written under
// the session's lifecycle lock, and only while the record still names the
// snapshot the upload read: a woken (or parked again, or removed) session
// never gets a stale manifest. A server stopped mid-upload leaves the
// session parked, not stored: Recover uploads it again.

// SnapshotStore is what the manager needs of the object store; *cas.Store
// is one.
type SnapshotStore interface {
	// UploadWith stores files and returns their manifest once it and
	// every chunk it names are durable; cancelled, it writes no
	// manifest. The manifest names opts.Bases, which must be stored.
	UploadWith(ctx context.Context, files []cas.Source, opts cas.UploadOptions) (cas.Manifest, cas.Stats, error)
	// LoadManifest reads a manifest Upload wrote.
	LoadManifest(ctx context.Context, id string) (cas.Manifest, error)
	// Restore writes a manifest's files into dir, every chunk verified;
	// nothing is put in place unless all of them are whole.
	Restore(ctx context.Context, m cas.Manifest, dir string, opts cas.RestoreOptions) (cas.RestoreStats, error)
	// GC deletes the manifests and chunks that neither live nor any
	// manifest younger than grace needs, once older than grace.
	GC(ctx context.Context, live []string, grace time.Duration) (cas.GCStats, error)
}

// uploadsAtOnce is how many snapshot uploads run at once; each reads and
// hashes with cas.Config.Parallel goroutines.
const uploadsAtOnce = 2

// uploads are the snapshot uploads under way (and the template versions'),
// the manifests of the template versions uploaded as clones' bases, and
// the restores under way.
type uploads struct {
	// slots bounds the uploads that run at once (a restart may find
	// thousands of parked sessions to upload); the others wait their
	// turn, cancellable.
	slots chan struct{}

	mu        sync.Mutex
	running   map[string]*upload          // guarded by mu: by session id, or "template NAME/VERSION"
	bases     map[string]*baseEntry       // guarded by mu: by "template/version"
	restoring map[string]*restoreProgress // guarded by mu: by session id
	failures  map[string]int              // guarded by mu: failed uploads in a row, by session id
}

// upload is one session's snapshot upload.
type upload struct {
	cancel context.CancelFunc
	done   chan struct{} // closed once the upload no longer reads the files
	ended  chan struct{} // closed once the upload is over (its outcome recorded)
}

// baseEntry is one template version's upload, done once.
type baseEntry struct {
	mu sync.Mutex
	m  *cas.Manifest // guarded by mu: the last manifest read or uploaded
}

// stopUpload ends session id's upload, if one runs, and returns once it
// no longer reads the session's files. The caller holds the session's
// lock.
func (m *Manager) stopUpload(id string) {
	m.ups.mu.Lock()
	u := m.ups.running[id]
	m.ups.mu.Unlock()
	if u == nil {
		return
	}
	u.cancel()
	<-u.done
}

// stopUploads ends every upload (the server stops): the next server
// uploads those sessions again.
func (m *Manager) stopUploads() {
	m.ups.mu.Lock()
	running := make([]*upload, 0, len(m.ups.running))
	for _, u := range m.ups.running {
		running = append(running, u)
	}
	m.ups.mu.Unlock()
	for _, u := range running {
		u.cancel()
		<-u.done
	}
}

// startUpload uploads the snapshot of parked session rec in the
// background. The caller holds the session's lock.
func (m *Manager) startUpload(rec store.Session, cause Cause) {
	if m.cfg.Objects == nil {
		return
	}
	if m.layered(context.Background(), rec) { // a header read: nothing to wait on
		// Its disk is a chain of layers in its dir (checkpoints): the
		// store keeps a disk on its template's or image's alone.
		m.cfg.Log.Info("snapshot not uploaded: the session's disk has checkpoint layers; it stays on this host", "session", rec.ID)
		return
	}
	m.mu.Lock()
	select {
	case <-m.stop:
		m.mu.Unlock()
		return // the server stops: the next one uploads it
	default:
	}
	m.bg.Add(1) // under mu: never after stopLoops closed stop
	m.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	u := &upload{cancel: cancel, done: make(chan struct{}), ended: make(chan struct{})}
	m.ups.mu.Lock()
	if old := m.ups.running[rec.ID]; old != nil {
		old.cancel() // a snapshot the record no longer names
	}
	m.ups.running[rec.ID] = u
	m.ups.mu.Unlock()
	go func() {
		defer m.bg.Done()
		defer cancel()
		m.runUpload(ctx, rec, u, cause)
		m.ups.mu.Lock()
		if m.ups.running[rec.ID] == u {
			delete(m.ups.running, rec.ID)
		}
		m.ups.mu.Unlock()
		close(u.ended)
		m.kickCache() // the session may be evictable now (cache.go)
	}()
}

// runUpload is one upload: the clone's base first, then the files, then
// the record.
func (m *Manager) runUpload(ctx context.Context, rec store.Session, u *upload, cause Cause) {
	log := m.cfg.Log.With("session", rec.ID)
	select {
	case m.ups.slots <- struct{}{}:
		defer func() { <-m.ups.slots }()
	case <-ctx.Done():
		close(u.done)
		return
	}
	ev, err := m.beginEvent(ctx, Event{Kind: EventStore, Cause: cause, Session: rec.ID})
	if err != nil {
		close(u.done)
		log.Warn("snapshot upload refused; tried again later", "err", err, "retry_in", m.uploadFailed(rec))
		return
	}
	start := time.Now()
	man, st, err := m.uploadFiles(ctx, rec)
	close(u.done)
	if err == nil {
		m.crashPoint("upload.durable")
		err = m.recordStored(rec, man.ID, st.BytesAdded)
	}
	ev.Bytes = st.BytesAdded
	m.doneEvent(context.Background(), ev, start, err)
	switch {
	case err == nil:
		m.uploadEnded(rec.ID)
		log.Info("snapshot stored", "manifest", man.ID, "bytes", st.Bytes, "bytes_added", st.BytesAdded,
			"chunks_added", st.ChunksAdded, "chunks_reused", st.ChunksReused, "ms", time.Since(start).Milliseconds())
	case ctx.Err() != nil || errors.Is(err, errSnapshotMoved):
		m.uploadEnded(rec.ID)
		log.Info("snapshot upload ended: the session was woken, parked again or removed", "err", err)
	default:
		log.Warn("snapshot upload failed; tried again later", "err", err, "retry_in", m.uploadFailed(rec))
	}
}

// Retries. An upload that fails (the object store unreachable or
// refusing, the audit log refusing the event) leaves the session parked
// on this host only, and is tried again after a delay that doubles with
// each failure in a row, from Config.UploadRetry (10 s) to 10 minutes;
// a wake, a new park or a removal ends the series (the retry finds
// another snapshot, or none), and so does a success.

// maxUploadRetry is the longest wait between tries of a failing upload.
const maxUploadRetry = 10 * time.Minute

// uploadFailed counts a failure of session rec's upload and schedules
// the next try; it returns the wait.
func (m *Manager) uploadFailed(rec store.Session) time.Duration {
	m.ups.mu.Lock()
	n := m.ups.failures[rec.ID]
	m.ups.failures[rec.ID] = n + 1
	m.ups.mu.Unlock()
	wait := m.cfg.UploadRetry
	if wait <= 0 {
		wait = 10 * time.Second
	}
	for range min(n, 16) {
		wait = min(2*wait, maxUploadRetry)
	}
	time.AfterFunc(wait, func() { m.retryUpload(rec.ID, rec.Snapshot) })
	return wait
}

// uploadEnded ends session id's series of failed uploads.
func (m *Manager) uploadEnded(id string) {
	m.ups.mu.Lock()
	delete(m.ups.failures, id)
	m.ups.mu.Unlock()
}

// retryUpload tries session id's upload again if it still is what failed:
// parked, not stored, with the same snapshot, its files here, and no
// upload of it running.
func (m *Manager) retryUpload(id string, snapshot []byte) {
	select {
	case <-m.stop:
		return // the server stops: the next one uploads it
	default:
	}
	unlock := m.lock(id)
	defer unlock()
	m.ups.mu.Lock()
	running := m.ups.running[id] != nil
	m.ups.mu.Unlock()
	rec, err := m.cfg.Store.GetSession(context.Background(), id)
	if running || err != nil || rec.State != api.StateParked || rec.StoredManifest != "" || !bytes.Equal(rec.Snapshot, snapshot) {
		if err == nil || errors.Is(err, store.ErrNotFound) {
			m.uploadEnded(id)
		} else {
			// The store is unreachable too: try later.
			m.cfg.Log.Warn("snapshot upload not retried: read the session", "session", id, "err", err,
				"retry_in", m.uploadFailed(store.Session{ID: id, Snapshot: snapshot}))
		}
		return
	}
	if mach, err := decodeMachine(rec.Snapshot); err != nil || mach.Parked == nil || filesGone(mach) {
		m.uploadEnded(id)
		return
	}
	m.startUpload(rec, CauseRetry)
}

// errSnapshotMoved says that a finished upload's session no longer has
// the snapshot it uploaded.
var errSnapshotMoved = errors.New("the session's record names another snapshot now")

// snapshotSources are the files of parked session id's snapshot, named as
// in its directory: a restore writes them back there.
func (m *Manager) snapshotSources(id string, mach machine) ([]cas.Source, error) {
	if mach.Parked == nil {
		return nil, errors.New("no snapshot recorded")
	}
	dir := m.dir(id)
	var srcs []cas.Source
	for _, p := range []string{mach.Parked.Mem, mach.Parked.State, mach.Disk} {
		if filepath.Dir(p) != dir {
			return nil, fmt.Errorf("snapshot file %s is not in the session's directory %s", p, dir)
		}
		srcs = append(srcs, cas.Source{Name: filepath.Base(p), Path: p})
	}
	return srcs, nil
}

// uploadFiles uploads session rec's snapshot files.
func (m *Manager) uploadFiles(ctx context.Context, rec store.Session) (cas.Manifest, cas.Stats, error) {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil {
		return cas.Manifest{}, cas.Stats{}, err
	}
	srcs, err := m.snapshotSources(rec.ID, mach)
	if err != nil {
		return cas.Manifest{}, cas.Stats{}, err
	}
	// What the snapshot rests on is stored first: a clone's template
	// version (the base its chunks dedup against), or the image.
	var opts cas.UploadOptions
	if rec.Template != "" {
		base, _, err := m.templateBase(ctx, rec.Template, rec.TemplateVersion)
		if err != nil {
			return cas.Manifest{}, cas.Stats{}, fmt.Errorf("the template version it rests on: %w", err)
		}
		opts.Bases = []string{base.ID}
	} else {
		img, err := m.imageBase(ctx, mach.Disk)
		if err != nil {
			return cas.Manifest{}, cas.Stats{}, fmt.Errorf("the image it rests on: %w", err)
		}
		if img != "" {
			opts.Bases = []string{img}
		}
	}
	crashed := false
	opts.Progress = func(p cas.Progress) {
		if !crashed && p.Done >= p.Total/2 {
			crashed = true
			m.crashPoint("upload.partial")
		}
	}
	return m.cfg.Objects.UploadWith(ctx, srcs, opts)
}

// recordStored records that session id's snapshot, as rec read it, is
// stored under manifest: only if its record still names that snapshot.
func (m *Manager) recordStored(rec store.Session, manifest string, added int64) error {
	unlock := m.lock(rec.ID)
	defer unlock()
	ctx := context.Background()
	cur, err := m.cfg.Store.GetSession(ctx, rec.ID)
	if errors.Is(err, store.ErrNotFound) {
		return errSnapshotMoved
	}
	if err != nil {
		return fmt.Errorf("session: record stored snapshot of %s: %w", rec.ID, err)
	}
	if cur.State != api.StateParked || !bytes.Equal(cur.Snapshot, rec.Snapshot) {
		return errSnapshotMoved
	}
	cur.StoredManifest, cur.StoredBytes = manifest, added
	// This snapshot is the last stored one now: the one a wake consumed
	// before (lost.go) is garbage.
	if mach, err := decodeMachine(cur.Snapshot); err == nil && mach.LastStored != nil {
		mach.LastStored = nil
		cur.Snapshot = mach.encode()
	}
	if err := m.cfg.Store.UpdateSession(ctx, &cur); err != nil {
		return fmt.Errorf("session: record stored snapshot of %s: %w", rec.ID, err)
	}
	return nil
}

// filesGone reports whether a parked machine's files are missing from
// this host, all or some.
func filesGone(mach machine) bool {
	for _, p := range []string{mach.Parked.State, mach.Parked.Mem, mach.Disk} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return false
}

// fetchSnapshot puts back a stored session's snapshot files, and what
// they rest on, where they are missing from this host (removed, evicted
// from its cache, or never here), from the object store (see bases.go);
// the caller holds the session's lock and the record still says parked.
// A session whose files are all here, or that is not stored, is left to
// the wake as it is. A restore that fails (a chunk missing or corrupt,
// the store unreachable) leaves the files as they were and the session
// parked, with the reason in its record: the store may have the data
// again later, and no bad byte is ever used.
func (m *Manager) fetchSnapshot(ctx context.Context, rec store.Session) error {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.Parked == nil || rec.StoredManifest == "" || m.cfg.Objects == nil {
		return nil
	}
	var ver *machine
	if rec.Template != "" {
		if _, vm, err := m.version(ctx, rec.Template, rec.TemplateVersion); err == nil {
			ver = &vm
		}
	}
	if !m.chainGone(ctx, mach, ver) {
		// Files here of a session that moved from a node of another
		// home (a wake failed after their restore) may name its files.
		if err := m.rebaseHome(ctx, mach.Disk, mach.FromHome, m.home()); err != nil {
			return api.Errorf(api.CodeUnavailable, "session %s: wake: %v; the session stays parked", rec.ID, err)
		}
		return nil
	}
	log := m.cfg.Log.With("session", rec.ID, "manifest", rec.StoredManifest)
	log.Info("snapshot files gone from this host: restoring them from the object store")
	start := time.Now()
	st, err := m.restoreChain(ctx, rec, mach, log)
	if err != nil {
		msg := "wake: restore the snapshot from the object store: " + err.Error()
		rec.Error, rec.UpdatedAt = msg, time.Now().UTC()
		if uerr := m.cfg.Store.UpdateSession(context.WithoutCancel(ctx), &rec); uerr != nil {
			log.Error("record failed restore", "err", uerr)
		}
		log.Warn("restore from the object store failed; the session stays parked", "err", err)
		return api.Errorf(api.CodeUnavailable, "session %s: %s; the session stays parked", rec.ID, msg)
	}
	log.Info("snapshot restored from the object store", "chunks_fetched", st.ChunksFetched, "bytes_fetched", st.BytesFetched,
		"chunks_from_seeds", st.ChunksFromSeeds, "ms", time.Since(start).Milliseconds())
	return nil
}

// uploadParked starts the uploads of parked sessions not stored (a server
// stopped mid-upload, or one that ran without an object store) whose
// files are on this host.
func (m *Manager) uploadParked(ctx context.Context) {
	if m.cfg.Objects == nil {
		return
	}
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		m.cfg.Log.Warn("parked sessions not uploaded: list sessions", "err", err)
		return
	}
	for _, rec := range recs {
		if rec.State != api.StateParked || rec.StoredManifest != "" {
			continue
		}
		unlock := m.lock(rec.ID)
		// Read again under the lock: a wake may have come first.
		rec, err := m.cfg.Store.GetSession(ctx, rec.ID)
		if err == nil && rec.State == api.StateParked && rec.StoredManifest == "" {
			if mach, err := decodeMachine(rec.Snapshot); err == nil && mach.Parked != nil && !filesGone(mach) {
				m.startUpload(rec, CauseRestart)
			}
		}
		unlock()
	}
}

var _ SnapshotStore = (*cas.Store)(nil)
