package postgres

import (
	"context"
	"errors"
	"time"
)

// Claim implements store.Store. Expiry is by the database server's clock
// (clock_timestamp), which every server sharing it agrees on. The one
// INSERT … ON CONFLICT locks the lease's row: of two owners claiming a
// free lease at once, the second waits for the first's commit, then finds
// it held and changes nothing.
func (s *Store) Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if key == "" || owner == "" || ttl <= 0 {
		return false, s.errorf("postgres: claim %q for %q: want a key, an owner and a positive ttl (got %v)", key, owner, ttl)
	}
	tag, err := s.exec(ctx, `INSERT INTO leases (key, owner, expires)
		VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond')
		ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
		WHERE leases.owner = excluded.owner OR leases.expires <= clock_timestamp()`,
		key, owner, max(ttl.Microseconds(), 1))
	if err != nil {
		return false, s.errorf("postgres: claim %q for %q: %w", key, owner, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Release implements store.Store.
func (s *Store) Release(ctx context.Context, key, owner string) error {
	if key == "" || owner == "" {
		return s.errorf("postgres: release %q for %q: %w", key, owner, errors.New("want a key and an owner"))
	}
	if _, err := s.exec(ctx, `DELETE FROM leases WHERE key = $1 AND owner = $2`, key, owner); err != nil {
		return s.errorf("postgres: release %q for %q: %w", key, owner, err)
	}
	return nil
}
