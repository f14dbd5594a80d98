package session

import (
	"context"
	"fmt"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
)

// Garbage collection of the object store (issue 18).
//
// The live set is every manifest a durable record names: each session's
// stored snapshot, each template version's files, each image's files. A
// GC run (cas.Store.GC) keeps those and, in turn, the manifests they rest
// on (a clone's template version, a version's image: cas.Manifest.Bases,
// even an image build no record names any more), and any manifest younger
// than the grace period (an upload not yet recorded); it deletes the
// other manifests and the chunks no kept manifest names, once older than
// the grace period. A snapshot a wake consumed (its record names it no
// more) and the files of a version removed are garbage from then on.
//
// Safe against uploads in flight: an upload writes (or refreshes) its
// chunks before its manifest, and records the manifest right after; its
// chunks are young until then. The object store's refresh age must stay
// under the grace period by more than the longest upload (see cas.GC):
// cmd/cove sets it to half the grace.

// DefaultGCGrace is how old an unnamed manifest or chunk must be before a
// GC deletes it, unless Config.GCGrace says otherwise.
const DefaultGCGrace = 24 * time.Hour

func (m *Manager) gcGrace() time.Duration {
	if m.cfg.GCGrace > 0 {
		return m.cfg.GCGrace
	}
	return DefaultGCGrace
}

// liveManifests lists every manifest a record names.
func (m *Manager) liveManifests(ctx context.Context) ([]string, error) {
	var live []string
	add := func(id string) {
		if id != "" {
			live = append(live, id)
		}
	}
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		add(r.StoredManifest)
		// The last stored snapshot a wake consumed: what a session lost
		// with its node goes back to (lost.go).
		if mach, err := decodeMachine(r.Snapshot); err == nil && mach.LastStored != nil {
			add(mach.LastStored.Manifest)
		}
	}
	ts, err := m.cfg.Store.ListTemplates(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		vs, err := m.cfg.Store.ListTemplateVersions(ctx, t.Name)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			add(v.StoredManifest)
		}
	}
	ims, err := m.cfg.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	for _, im := range ims {
		add(im.StoredManifest)
	}
	return live, nil
}

// CollectGarbage runs one GC of the object store over the live set the
// records name (see above), and returns what it did. GC runs one at a
// time; a run that fails (the store unreachable) deletes nothing further
// and is logged. A live manifest missing or corrupt does not stop it: it
// can restore nothing, and is reported (GCStats.Broken).
func (m *Manager) CollectGarbage(ctx context.Context) (cas.GCStats, error) {
	if m.cfg.Objects == nil {
		return cas.GCStats{}, fmt.Errorf("session: gc: no object store")
	}
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	// One server of those sharing the store collects at a time: two
	// would be safe, but would read and delete the same objects twice.
	ctx, release, ok := m.lease(ctx, "gc")
	if !ok {
		return cas.GCStats{}, api.Errorf(api.CodeConflict, "gc: another server is collecting the object store's garbage now (or the store could not say): try again later")
	}
	defer release()
	start := time.Now()
	live, err := m.liveManifests(ctx)
	if err != nil {
		return cas.GCStats{}, fmt.Errorf("session: gc: live set: %w", err)
	}
	st, err := m.cfg.Objects.GC(ctx, live, m.gcGrace())
	if err != nil {
		m.cfg.Log.Warn("object store gc failed", "err", err)
		return st, fmt.Errorf("session: %w", err)
	}
	m.cfg.Log.Info("object store gc", "live", len(live), "manifests_kept", st.ManifestsLive, "manifests_deleted", st.ManifestsDeleted,
		"chunks_deleted", st.ChunksDeleted, "bytes_deleted", st.BytesDeleted, "chunks_young", st.ChunksYoung,
		"broken", st.Broken, "ms", time.Since(start).Milliseconds())
	return st, nil
}

// GC is CollectGarbage for the API (POST /v1/admin/gc).
func (m *Manager) GC(ctx context.Context) (api.GCResult, error) {
	st, err := m.CollectGarbage(ctx)
	if err != nil {
		return api.GCResult{}, err
	}
	return api.GCResult{ManifestsKept: st.ManifestsLive, ManifestsDeleted: st.ManifestsDeleted,
		ChunksKept: st.ChunksKept, ChunksYoung: st.ChunksYoung, ChunksDeleted: st.ChunksDeleted, BytesDeleted: st.BytesDeleted,
		Broken: st.Broken}, nil
}
