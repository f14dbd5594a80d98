package session_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// TestFakeIdempotencyKeysExpire: an Idempotency-Key younger than the TTL
// is kept by a sweep, and its retry answers its session; once older, the
// sweep of the server holding the claim frees it (one that finds another
// server's claim leaves it), and a retry makes a new session, the first
// one staying.
func TestFakeIdempotencyKeysExpire(t *testing.T) {
	t.Parallel()
	r := newFakeRigWith(t, func(c *session.Config) { c.IdempotencyTTL = time.Hour })
	ctx := context.Background()
	req := api.CreateSessionRequest{Agent: "review-bot"}
	first, replayed, err := r.mgr.CreateKeyed(ctx, store.OwnerAdmin, "k1", req)
	if err != nil || replayed {
		t.Fatalf("keyed create: %+v, replayed %v, %v", first, replayed, err)
	}
	if n := r.mgr.SweepIdempotencyKeys(ctx); n != 0 {
		t.Fatalf("sweep of a key younger than the TTL freed %d", n)
	}
	if again, replayed, err := r.mgr.CreateKeyed(ctx, store.OwnerAdmin, "k1", req); err != nil || !replayed || again.ID != first.ID {
		t.Fatalf("retry within the TTL: %s, replayed %v, %v; want %s replayed", again.ID, replayed, err, first.ID)
	}

	// A server whose keys live a nanosecond: k1 is old now.
	r.config = func(c *session.Config) { c.IdempotencyTTL = time.Nanosecond }
	r.restart()
	if ok, err := r.store.Claim(ctx, "keys/sweep", "srv-other", time.Minute); err != nil || !ok {
		t.Fatalf("another server's claim: %v, %v", ok, err)
	}
	if n := r.mgr.SweepIdempotencyKeys(ctx); n != 0 {
		t.Fatalf("sweep while another server holds the claim freed %d", n)
	}
	if _, err := r.store.SessionKey(ctx, store.OwnerAdmin, "k1"); err != nil {
		t.Fatalf("the key while another server holds the sweep's claim: %v; want kept", err)
	}
	if err := r.store.Release(ctx, "keys/sweep", "srv-other"); err != nil {
		t.Fatal(err)
	}
	// This server's loop may sweep it first: either way it is gone.
	r.mgr.SweepIdempotencyKeys(ctx)
	if _, err := r.store.SessionKey(ctx, store.OwnerAdmin, "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the expired key after a sweep: %v; want freed", err)
	}
	second, replayed, err := r.mgr.CreateKeyed(ctx, store.OwnerAdmin, "k1", req)
	if err != nil || replayed || second.ID == first.ID {
		t.Fatalf("retry with the expired key: %s, replayed %v, %v; want a new session", second.ID, replayed, err)
	}
	if _, err := r.mgr.Get(ctx, first.ID); err != nil {
		t.Fatalf("the first session after its key expired: %v", err)
	}
}
