package sqlite

import (
	"context"
	"errors"
	"time"
)

// Claim implements store.Store. The clock is this host's: one SQLite
// file has one host's servers.
func (s *Store) Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if key == "" || owner == "" || ttl <= 0 {
		return false, errorf("sqlite: claim %q for %q: want a key, an owner and a positive ttl (got %v)", key, owner, ttl)
	}
	now := time.Now().UnixNano()
	// One statement: taken if absent, expired or already owner's; a
	// lease held by another changes nothing, and no row is affected.
	res, err := s.db.ExecContext(ctx, `INSERT INTO leases (key, owner, expires) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
		WHERE leases.owner = excluded.owner OR leases.expires <= ?`,
		key, owner, now+int64(ttl), now)
	if err != nil {
		return false, errorf("sqlite: claim %q for %q: %w", key, owner, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, errorf("sqlite: claim %q for %q: rows affected: %w", key, owner, err)
	}
	return n == 1, nil
}

// Release implements store.Store.
func (s *Store) Release(ctx context.Context, key, owner string) error {
	if key == "" || owner == "" {
		return errorf("sqlite: release %q for %q: %w", key, owner, errors.New("want a key and an owner"))
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM leases WHERE key = ? AND owner = ?`, key, owner); err != nil {
		return errorf("sqlite: release %q for %q: %w", key, owner, err)
	}
	return nil
}
