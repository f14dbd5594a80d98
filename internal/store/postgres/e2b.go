package postgres

import (
	"context"

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
	tag, err := s.exec(ctx, `INSERT INTO e2b_sandboxes (session_id, record)
		SELECT id, $2 FROM sessions WHERE id = $1
		ON CONFLICT (session_id) DO UPDATE SET record = excluded.record`, x.SessionID, rec)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: put e2b sandbox %s: %w", x.SessionID, err)
	}
	return nil
}

// GetE2BSandbox implements store.Store.
func (s *Store) GetE2BSandbox(ctx context.Context, sessionID string) (store.E2BSandbox, error) {
	x, err := scanE2BSandbox(s.queryRow(ctx, `SELECT session_id, record FROM e2b_sandboxes WHERE session_id = $1`, sessionID))
	if err != nil {
		return store.E2BSandbox{}, s.errorf("postgres: get e2b sandbox %s: %w", sessionID, notFound(err))
	}
	return x, nil
}

// ListE2BSandboxes implements store.Store.
func (s *Store) ListE2BSandboxes(ctx context.Context) ([]store.E2BSandbox, error) {
	out, err := query(ctx, s, scanE2BSandbox, `SELECT session_id, record FROM e2b_sandboxes ORDER BY session_id`)
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
	var x store.E2BSandbox
	if err := sc.Scan(&x.SessionID, &x.Record); err != nil {
		return store.E2BSandbox{}, err
	}
	return x, nil
}
