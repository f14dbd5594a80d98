package cas

import (
	"context"
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
}

// GC deletes what no live manifest needs:
//   - manifests not in live that are older than grace;
//   - chunks named by no manifest in live and by no manifest younger than
//     grace, once they are older than grace themselves.
//
// live must name every manifest still wanted (every snapshot, template
// version and image); GC fails, deleting nothing, if one is missing or
// corrupt.
//
// GC is safe against uploads in flight: an upload puts its chunks, or
// refreshes those it reuses that are older than Config.RefreshAfter,
// before its manifest, so until the manifest is written every chunk it
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
	mark := func(id string) error {
		m, err := s.LoadManifest(ctx, id)
		if err != nil {
			return err
		}
		st.ManifestsLive++
		return m.Hashes(func(h Hash) { keep[h] = true })
	}
	isLive := map[string]bool{}
	for _, id := range live {
		if isLive[id] {
			continue
		}
		isLive[id] = true
		if err := mark(id); err != nil {
			return st, fmt.Errorf("cas: gc: live manifest: %w", err)
		}
	}
	var dead []string
	err := s.cfg.Objects.List(ctx, "manifests/", func(i objstore.Info) error {
		id := strings.TrimPrefix(i.Key, "manifests/")
		switch {
		case isLive[id]:
		case old(i.ModTime):
			dead = append(dead, i.Key)
		default:
			// Young: perhaps an upload whose caller has not yet
			// recorded it. Its chunks stay.
			return mark(id)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("cas: gc: %w", err)
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
		"chunks_deleted", st.ChunksDeleted, "bytes_deleted", st.BytesDeleted, "chunks_young", st.ChunksYoung)
	return st, nil
}
