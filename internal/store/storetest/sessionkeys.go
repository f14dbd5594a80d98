package storetest

import (
	"errors"
	"slices"
	"testing"

	"github.com/cove-dev/cove/internal/store"
)

// A create with an idempotency key records it with its session, once per
// owner: a second create with the owner's key fails with ErrKeyUsed and
// makes nothing; another owner's same key is its own. The key outlives
// its session, and DeleteSessionKey frees it.
func (s *suite) sessionKeys(t *testing.T) {
	dir := t.TempDir()
	st := s.openIn(t, dir)
	ctx := t.Context()
	if _, err := st.SessionKey(ctx, "u_alice", "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SessionKey before any create = %v, want ErrNotFound", err)
	}
	first := fullSession("first")
	first.Owner, first.IdempotencyKey, first.RequestHash = "u_alice", "k1", "hash-1"
	mustCreate(t, st, first)
	k, err := st.SessionKey(ctx, "u_alice", "k1")
	want := store.SessionKey{Owner: "u_alice", Key: "k1", SessionID: "first", RequestHash: "hash-1"}
	if err != nil || k != want {
		t.Fatalf("SessionKey = %+v, %v; want %+v", k, err, want)
	}

	second := fullSession("second")
	second.Owner, second.IdempotencyKey, second.RequestHash = "u_alice", "k1", "hash-2"
	if err := st.CreateSession(ctx, &second); !errors.Is(err, store.ErrKeyUsed) {
		t.Fatalf("a second create with alice's key = %v, want ErrKeyUsed", err)
	}
	wantSessionIDs(t, st, "first")
	if k, err := st.SessionKey(ctx, "u_alice", "k1"); err != nil || k != want {
		t.Fatalf("SessionKey after the refused create = %+v, %v; want %+v", k, err, want)
	}

	// A key taken by a create whose session id exists already is not
	// kept: the create changed nothing.
	dup := fullSession("first")
	dup.Owner, dup.IdempotencyKey, dup.RequestHash = "u_alice", "k2", "hash-3"
	if err := st.CreateSession(ctx, &dup); !errors.Is(err, store.ErrExists) {
		t.Fatalf("a create with a taken id = %v, want ErrExists", err)
	}
	if _, err := st.SessionKey(ctx, "u_alice", "k2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SessionKey of the refused create's key = %v, want ErrNotFound", err)
	}

	bob := fullSession("bobs")
	bob.Owner, bob.IdempotencyKey, bob.RequestHash = "u_bob", "k1", "hash-b"
	mustCreate(t, st, bob)
	wantSessionIDs(t, st, "bobs", "first") // same CreatedAt: by ID
	if k, err := st.SessionKey(ctx, "u_bob", "k1"); err != nil || k.SessionID != "bobs" {
		t.Fatalf("bob's SessionKey = %+v, %v; want session bobs", k, err)
	}

	// Kept after the session's removal, seen by a second store over the
	// same data (another server).
	if err := st.DeleteSession(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	st = s.openIn(t, dir)
	if k, err := st.SessionKey(ctx, "u_alice", "k1"); err != nil || k != want {
		t.Fatalf("SessionKey after its session's removal, through another store = %+v, %v; want %+v", k, err, want)
	}
	if err := st.DeleteSessionKey(ctx, "u_alice", "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SessionKey(ctx, "u_alice", "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SessionKey after DeleteSessionKey = %v, want ErrNotFound", err)
	}
	if err := st.DeleteSessionKey(ctx, "u_alice", "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteSessionKey(missing) = %v, want ErrNotFound", err)
	}
	again := fullSession("again")
	again.Owner, again.IdempotencyKey, again.RequestHash = "u_alice", "k1", "hash-2"
	mustCreate(t, st, again)
	if k, err := st.SessionKey(ctx, "u_alice", "k1"); err != nil || k.SessionID != "again" {
		t.Fatalf("SessionKey of the freed key's new create = %+v, %v", k, err)
	}
}

// ExpireSessionKeys frees the keys whose create was made before the time
// given (their session's CreatedAt), and only those: their sessions stay,
// and a create with a freed key makes a new session.
func (s *suite) expireSessionKeys(t *testing.T) {
	st := s.openIn(t, t.TempDir())
	ctx := t.Context()
	for i, id := range []string{"old", "mid", "new"} {
		sess := fullSession(id)
		sess.CreatedAt = at(1 + 2*i)
		sess.Owner, sess.IdempotencyKey, sess.RequestHash = "u_alice", "k-"+id, "hash-"+id
		mustCreate(t, st, sess)
	}
	wantKeys := func(when string, want ...string) {
		t.Helper()
		for _, id := range []string{"old", "mid", "new"} {
			_, err := st.SessionKey(ctx, "u_alice", "k-"+id)
			kept := slices.Contains(want, id)
			if kept && err != nil || !kept && !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("%s: SessionKey(k-%s) = %v; want kept %v", when, id, err, kept)
			}
		}
	}
	if n, err := st.ExpireSessionKeys(ctx, at(3)); err != nil || n != 1 {
		t.Fatalf("ExpireSessionKeys(before the second) = %d, %v; want 1 (the first)", n, err)
	}
	wantKeys("after the first expiry", "mid", "new")
	if n, err := st.ExpireSessionKeys(ctx, at(3)); err != nil || n != 0 {
		t.Fatalf("ExpireSessionKeys again = %d, %v; want 0", n, err)
	}
	if n, err := st.ExpireSessionKeys(ctx, at(6)); err != nil || n != 2 {
		t.Fatalf("ExpireSessionKeys(after the last) = %d, %v; want 2", n, err)
	}
	wantKeys("after the second expiry")
	wantSessionIDs(t, st, "old", "mid", "new")

	again := fullSession("again")
	again.Owner, again.IdempotencyKey, again.RequestHash = "u_alice", "k-old", "hash-old"
	mustCreate(t, st, again)
	if k, err := st.SessionKey(ctx, "u_alice", "k-old"); err != nil || k.SessionID != "again" {
		t.Fatalf("SessionKey of the expired key's new create = %+v, %v", k, err)
	}
}
