package cas

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cove-dev/cove/internal/objstore"
)

// GCStats counts what a GC did.
type GCStats struct {
	ManifestsLive    int // named live, or young: their chunks were kept
	ManifestsDeleted int
	ChunksKept       int // named by a live or young manifest
	ChunksYoung      int // named by none, but younger than the grace period
	ChunksDeleted    int
	BytesDeleted     int64
	// Broken lists the live (or young) manifests, or bases of one, that
	// are missing or corrupt: they can restore nothing, and the run went
	// on without them (see GC).
	Broken []string
}

// GC deletes what no live manifest needs:
//   - manifests older than grace that are neither in live nor a base
//     (Manifest.Bases) of one kept;
//   - chunks named by no manifest kept (those in live, those younger
//     than grace, and the bases of either, in turn), once they are older
//     than grace themselves.
//
// live must name every manifest still wanted (every snapshot, template
// version and image). One that is missing or corrupt (ErrNotFound,
// ErrBadManifest) can restore nothing, whatever is kept for it: it is
// listed in GCStats.Broken and the run goes on without it (a corrupt one
// is not deleted: it is left for inspection), so that one lost object
// does not stop every later collection. Any other error reading it (the
// store unreachable) fails the run before it deletes anything.
//
// GC is safe against uploads in flight: an upload puts its chunks, or
// refreshes those it reuses that are older than Config.RefreshAfter (and
// so its bases: UploadWith), before its manifest, so until the manifest is written every chunk it
// names is younger than RefreshAfter plus the upload's duration, and once
// written the manifest is young. grace must therefore exceed RefreshAfter
// by more than the longest upload, and the caller must record a manifest
// as live within grace of its upload; GC refuses a grace not above
// RefreshAfter.
func (s *Store) GC(ctx context.Context, live []string, grace time.Duration) (GCStats, error) {
	var st GCStats
	if grace <= s.cfg.RefreshAfter {
		return st, fmt.Errorf("cas: gc: grace %s must exceed the refresh age %s plus the longest upload", grace, s.cfg.RefreshAfter)
	}
	now := s.cfg.Now()
	old := func(t time.Time) bool { return now.Sub(t) > grace }
	keep := map[Hash]bool{}
	isLive := map[string]bool{}
	// mark keeps manifest id, the chunks it names and, in turn, the
	// manifests it rests on (Manifest.Bases).
	var mark func(id string) error
	mark = func(id string) error {
		if isLive[id] {
			return nil
		}
		isLive[id] = true
		m, err := s.LoadManifest(ctx, id)
		if err != nil {
			return err
		}
		st.ManifestsLive++
		if err := m.Hashes(func(h Hash) { keep[h] = true }); err != nil {
			return err
		}
		for _, b := range m.Bases {
			if err := mark(b); err != nil {
				return fmt.Errorf("base of %s: %w", id, err)
			}
		}
		return nil
	}
	// broken reports whether err, marking id, says a manifest is lost
	// for good (see above), and records it.
	broken := func(id string, err error) bool {
		if !errors.Is(err, objstore.ErrNotFound) && !errors.Is(err, ErrBadManifest) {
			return false
		}
		st.Broken = append(st.Broken, id)
		s.cfg.Log.Warn("cas: gc: a manifest that can restore nothing (missing or corrupt); collecting without it", "manifest", id, "err", err)
		return true
	}
	for _, id := range live {
		if err := mark(id); err != nil && !broken(id, err) {
			return st, fmt.Errorf("cas: gc: live manifest: %w", err)
		}
	}
	var stored []objstore.Info
	err := s.cfg.Objects.List(ctx, "manifests/", func(i objstore.Info) error {
		stored = append(stored, i)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("cas: gc: %w", err)
	}
	for _, i := range stored {
		if !old(i.ModTime) {
			// Young: perhaps an upload whose caller has not yet
			// recorded it. It, its chunks and its bases stay.
			id := strings.TrimPrefix(i.Key, "manifests/")
			if err := mark(id); err != nil && !broken(id, err) {
				return st, fmt.Errorf("cas: gc: young manifest: %w", err)
			}
		}
	}
	var dead []string
	for _, i := range stored {
		if !isLive[strings.TrimPrefix(i.Key, "manifests/")] {
			dead = append(dead, i.Key)
		}
	}
	// Delete the dead manifests first: a chunk is deleted only once no
	// manifest in the store that could be restored names it.
	for _, key := range dead {
		if err := s.cfg.Objects.Delete(ctx, key); err != nil {
			return st, fmt.Errorf("cas: gc: %w", err)
		}
		st.ManifestsDeleted++
	}
	err = s.cfg.Objects.List(ctx, "chunks/", func(i objstore.Info) error {
		k := i.Key[strings.LastIndexByte(i.Key, '/')+1:]
		h, err := ParseHash(k)
		if err != nil {
			s.cfg.Log.Warn("cas: gc: object under chunks/ that is no chunk; left", "key", i.Key)
			return nil
		}
		switch {
		case keep[h]:
			st.ChunksKept++
		case !old(i.ModTime):
			st.ChunksYoung++
		default:
			s.forget(h)
			if err := s.cfg.Objects.Delete(ctx, i.Key); err != nil {
				return err
			}
			st.ChunksDeleted++
			st.BytesDeleted += i.Size
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("cas: gc: %w", err)
	}
	s.cfg.Log.Info("cas: gc", "manifests_live", st.ManifestsLive, "manifests_deleted", st.ManifestsDeleted,
		"chunks_deleted", st.ChunksDeleted, "bytes_deleted", st.BytesDeleted, "chunks_young", st.ChunksYoung, "broken", len(st.Broken))
	return st, nil
}
