package session_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/session"
)

// downObjects is the real content-addressed store behind a switch that
// makes it unreachable, as an object store that goes away and comes back:
// while down, every upload fails before it reads a file.
type downObjects struct {
	session.SnapshotStore
	down  atomic.Bool
	tries atomic.Int32 // uploads refused while down
}

func (d *downObjects) UploadWith(ctx context.Context, files []cas.Source, opts cas.UploadOptions) (cas.Manifest, cas.Stats, error) {
	if d.down.Load() {
		d.tries.Add(1)
		return cas.Manifest{}, cas.Stats{}, errors.New("objstore: s3://bucket: dial tcp 127.0.0.1:9: connection refused")
	}
	return d.SnapshotStore.UploadWith(ctx, files, opts)
}

// TestFakeUploadRetried: a snapshot upload that fails because the object
// store is unreachable is tried again, later and more than once, without
// a new park or a restart; once the store is back the session becomes
// stored. A woken session's failed series ends: no upload of a snapshot
// its record no longer names.
func TestFakeUploadRetried(t *testing.T) {
	t.Parallel()
	var d *downObjects
	var mu sync.Mutex
	var failed, retried int
	r := newObjectsRig(t, func(c *session.Config) {
		d = &downObjects{SnapshotStore: c.Objects}
		d.down.Store(true)
		c.Objects = d
		c.UploadRetry = 20 * time.Millisecond
		c.OnEvent = func(_ context.Context, ev session.Event) error {
			if ev.Kind == session.EventStore && ev.Phase == session.Done {
				mu.Lock()
				defer mu.Unlock()
				if ev.Err != nil {
					failed++
				}
				if ev.Cause == session.CauseRetry {
					retried++
				}
			}
			return nil
		}
	})
	s := r.create(api.CreateSessionRequest{})
	r.park(s.ID)
	r.eventually("three uploads refused while the store is down", func() bool { return d.tries.Load() >= 3 })
	if got := r.get(s.ID); got.Stored {
		t.Fatal("session stored while the object store was down")
	}
	d.down.Store(false)
	r.waitStored(s.ID)
	mu.Lock()
	if failed < 3 || retried < 3 {
		t.Errorf("%d failed uploads and %d retries seen as events; want at least 3 of each", failed, retried)
	}
	mu.Unlock()

	// A woken session ends its series: the snapshot that failed is not
	// uploaded again once the record names none.
	d.down.Store(true)
	s2 := r.create(api.CreateSessionRequest{})
	r.park(s2.ID)
	r.eventually("an upload of the second session refused", func() bool { return d.tries.Load() >= 4 })
	if _, err := r.mgr.Wake(context.Background(), s2.ID); err != nil {
		t.Fatal(err)
	}
	before := d.tries.Load()
	// The retry delay doubles from 20 ms: a series still going would try
	// again within this wait, several times over.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if d.tries.Load() > before+1 { // one try may already have been due
			t.Fatalf("uploads of a woken session's old snapshot went on: %d tries after the wake", d.tries.Load()-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFakeGCClaimed: a garbage collection is work one server of those
// sharing a store does at a time: while another server holds the claim,
// a GC here is refused as a conflict and deletes nothing; once it is
// released, it runs.
func TestFakeGCClaimed(t *testing.T) {
	t.Parallel()
	r := newObjectsRig(t, nil)
	ctx := context.Background()
	ok, err := r.store.Claim(ctx, "gc", "srv-other", time.Minute)
	if err != nil || !ok {
		t.Fatalf("claim gc for another server: %v, %v", ok, err)
	}
	if _, err := r.mgr.CollectGarbage(ctx); api.CodeOf(err) != api.CodeConflict {
		t.Fatalf("gc while another server holds its claim: %v; want a conflict", err)
	}
	if err := r.store.Release(ctx, "gc", "srv-other"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.CollectGarbage(ctx); err != nil {
		t.Fatalf("gc once the claim is free: %v", err)
	}
}
