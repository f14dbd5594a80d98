package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// keyedCreate is what CreateKeyed marks a create's context with: the
// caller's idempotency key and the digest of its request, which the
// create records with its session (store.SessionKey).
type keyedCreate struct{ key, hash string }

type keyedCreateKey struct{}

// keyOf is the idempotency key and request digest ctx carries, if any.
func keyOf(ctx context.Context) keyedCreate {
	k, _ := ctx.Value(keyedCreateKey{}).(keyedCreate)
	return k
}

// withKey sets rec's idempotency key and request digest from ctx.
func withKey(ctx context.Context, rec *store.Session) {
	k := keyOf(ctx)
	rec.IdempotencyKey, rec.RequestHash = k.key, k.hash
}

// requestHash is the digest of what a create asks: its request as JSON
// (map keys sorted), so that the same request sent twice, however its
// body was laid out, has the same digest.
func requestHash(req api.CreateSessionRequest) (string, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("session: digest the create request: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// keyPoll is how often a retry polls a create with its key that is
// still under way.
const keyPoll = 100 * time.Millisecond

// CreateKeyed is Create with the caller's idempotency key (the
// Idempotency-Key header): the first create with owner's key records it
// with the session it makes; a retry with the key answers that session
// (replayed true) and makes none, whichever server it reaches. A retry
// that asks for something else, or whose session was removed since, is a
// conflict (409). A retry while the first create is still under way waits
// for it (up to the boot timeout): a create given up because its caller
// went away frees its key, and the retry makes the session then.
func (m *Manager) CreateKeyed(ctx context.Context, owner, key string, req api.CreateSessionRequest) (sess api.Session, replayed bool, err error) {
	hash, err := requestHash(req)
	if err != nil {
		return api.Session{}, false, err
	}
	ctx = context.WithValue(ctx, keyedCreateKey{}, keyedCreate{key: key, hash: hash})
	deadline := time.Now().Add(m.cfg.DefaultBootTimeout)
	for {
		k, err := m.cfg.Store.SessionKey(ctx, owner, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
			sess, err := m.Create(ctx, owner, req)
			if errors.Is(err, store.ErrKeyUsed) {
				continue // a create with the key at once, elsewhere: answer its session
			}
			return sess, false, err
		case err != nil:
			return api.Session{}, false, fmt.Errorf("session: read idempotency key: %w", err)
		case k.RequestHash != hash:
			return api.Session{}, false, api.Errorf(api.CodeConflict,
				"Idempotency-Key %q was used by a create that asked for something else (session %s): use a new key for a new create", key, k.SessionID)
		}
		rec, err := m.cfg.Store.GetSession(ctx, k.SessionID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			// Freed (a create given up) in between, or removed: read again.
			if _, kerr := m.cfg.Store.SessionKey(ctx, owner, key); errors.Is(kerr, store.ErrNotFound) {
				continue
			}
			return api.Session{}, false, api.Errorf(api.CodeConflict,
				"Idempotency-Key %q: its create made session %s, which was removed since: use a new key for a new create", key, k.SessionID)
		case err != nil:
			return api.Session{}, false, fmt.Errorf("session: read session %s of idempotency key: %w", k.SessionID, err)
		case rec.State != api.StateCreating:
			return m.toAPI(rec), true, nil
		case time.Now().After(deadline):
			return api.Session{}, false, api.Errorf(api.CodeConflict,
				"Idempotency-Key %q: its create (session %s) is still under way: retry later", key, k.SessionID)
		}
		select {
		case <-ctx.Done():
			return api.Session{}, false, ctx.Err()
		case <-time.After(keyPoll):
		}
	}
}

// DefaultIdempotencyTTL is how long cove server keeps an Idempotency-Key
// unless told otherwise (Config.IdempotencyTTL).
const DefaultIdempotencyTTL = 24 * time.Hour

// keySweepEvery is how often keys older than ttl are swept: a tenth of
// it, between a second and ten minutes, so a key lives at most a tenth
// longer than ttl (ten minutes for the day of the default).
func keySweepEvery(ttl time.Duration) time.Duration {
	return min(max(ttl/10, time.Second), 10*time.Minute)
}

// SweepIdempotencyKeys frees, under the claim keys/sweep, every
// Idempotency-Key whose create was made longer than
// Config.IdempotencyTTL ago, and returns how many (0 with no TTL). A
// server that finds the claim held by another does nothing: that one
// sweeps. A retry with a freed key is a new create.
func (m *Manager) SweepIdempotencyKeys(ctx context.Context) int {
	if m.cfg.IdempotencyTTL <= 0 {
		return 0
	}
	lctx, release, ok := m.lease(ctx, "keys/sweep")
	if !ok {
		return 0
	}
	defer release()
	n, err := m.cfg.Store.ExpireSessionKeys(lctx, time.Now().Add(-m.cfg.IdempotencyTTL))
	if err != nil {
		m.cfg.Log.Warn("idempotency key sweep", "err", err)
		return 0
	}
	if n > 0 {
		m.cfg.Log.Info("idempotency keys expired", "keys", n, "ttl", m.cfg.IdempotencyTTL)
	}
	return n
}
