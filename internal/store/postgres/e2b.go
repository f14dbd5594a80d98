package postgres

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

// PutE2BSandbox implements store.Store. The row is written only if its
// session exists (the foreign key removes it with the session).
func (s *Store) PutE2BSandbox(ctx context.Context, x store.E2BSandbox) error {
	rec := x.Record
	if rec == nil {
		rec = []byte{}
	}
	due, err := encodeTime(x.DueAt)
	if err != nil {
		return s.errorf("postgres: put e2b sandbox %s: %w", x.SessionID, err)
	}
	tag, err := s.exec(ctx, `INSERT INTO e2b_sandboxes (session_id, record, due_at)
		SELECT id, $2, $3 FROM sessions WHERE id = $1
		ON CONFLICT (session_id) DO UPDATE SET record = excluded.record, due_at = excluded.due_at`, x.SessionID, rec, due)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: put e2b sandbox %s: %w", x.SessionID, err)
	}
	return nil
}

// GetE2BSandbox implements store.Store.
func (s *Store) GetE2BSandbox(ctx context.Context, sessionID string) (store.E2BSandbox, error) {
	x, err := scanE2BSandbox(s.queryRow(ctx, `SELECT session_id, record, due_at FROM e2b_sandboxes WHERE session_id = $1`, sessionID))
	if err != nil {
		return store.E2BSandbox{}, s.errorf("postgres: get e2b sandbox %s: %w", sessionID, notFound(err))
	}
	return x, nil
}

// ListE2BSandboxes implements store.Store.
func (s *Store) ListE2BSandboxes(ctx context.Context) ([]store.E2BSandbox, error) {
	out, err := query(ctx, s, scanE2BSandbox, `SELECT session_id, record, due_at FROM e2b_sandboxes ORDER BY session_id`)
	if err != nil {
		return nil, s.errorf("postgres: list e2b sandboxes: %w", err)
	}
	return out, nil
}

// DeleteE2BSandbox implements store.Store.
func (s *Store) DeleteE2BSandbox(ctx context.Context, sessionID string) error {
	tag, err := s.exec(ctx, `DELETE FROM e2b_sandboxes WHERE session_id = $1`, sessionID)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete e2b sandbox %s: %w", sessionID, err)
	}
	return nil
}

func scanE2BSandbox(sc pgx.Row) (store.E2BSandbox, error) {
	var (
		x   store.E2BSandbox
		due *int64
	)
	if err := sc.Scan(&x.SessionID, &x.Record, &due); err != nil {
		return store.E2BSandbox{}, err
	}
	x.DueAt = decodeTime(due)
	return x, nil
}

// DueE2BSandboxes implements store.Store.
func (s *Store) DueE2BSandboxes(ctx context.Context, at time.Time, limit int) ([]store.E2BSandbox, error) {
	n, err := encodeTime(at)
	if err != nil || n == nil {
		return nil, s.errorf("postgres: due e2b sandboxes: at %v: %v", at, cmp.Or(err, errors.New("zero time")))
	}
	out, err := query(ctx, s, scanE2BSandbox, `SELECT session_id, record, due_at FROM e2b_sandboxes
		WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at, session_id LIMIT $2`, n, max(limit, 0))
	if err != nil {
		return nil, s.errorf("postgres: due e2b sandboxes: %w", err)
	}
	if out == nil {
		out = []store.E2BSandbox{}
	}
	return out, nil
}

// SetE2BSandboxDue implements store.Store.
func (s *Store) SetE2BSandboxDue(ctx context.Context, sessionID string, was, due time.Time) (bool, error) {
	w, err := encodeTime(was)
	if err != nil {
		return false, s.errorf("postgres: set due of e2b sandbox %s: %w", sessionID, err)
	}
	d, err := encodeTime(due)
	if err != nil {
		return false, s.errorf("postgres: set due of e2b sandbox %s: %w", sessionID, err)
	}
	// One statement: the row, and whether it was still at was.
	var set bool
	err = s.queryRow(ctx, `WITH upd AS (
			UPDATE e2b_sandboxes SET due_at = $2 WHERE session_id = $1 AND due_at IS NOT DISTINCT FROM $3::BIGINT RETURNING 1)
		SELECT EXISTS (SELECT 1 FROM upd) FROM e2b_sandboxes WHERE session_id = $1`, sessionID, d, w).Scan(&set)
	if err != nil {
		return false, s.errorf("postgres: set due of e2b sandbox %s: %w", sessionID, notFound(err))
	}
	return set, nil
}
