package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/cove-dev/cove/internal/store"
)

// PutE2BSandbox implements store.Store.
func (s *Store) PutE2BSandbox(ctx context.Context, x store.E2BSandbox) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM sessions WHERE id = ?`, x.SessionID).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO e2b_sandboxes (session_id, record) VALUES (?, ?)
			ON CONFLICT (session_id) DO UPDATE SET record = excluded.record`, x.SessionID, nonNil(x.Record))
		return err
	})
	if err != nil {
		return errorf("sqlite: put e2b sandbox %s: %w", x.SessionID, err)
	}
	return nil
}

// GetE2BSandbox implements store.Store.
func (s *Store) GetE2BSandbox(ctx context.Context, sessionID string) (store.E2BSandbox, error) {
	x := store.E2BSandbox{SessionID: sessionID}
	err := s.db.QueryRowContext(ctx, `SELECT record FROM e2b_sandboxes WHERE session_id = ?`, sessionID).Scan(&x.Record)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.E2BSandbox{}, errorf("sqlite: get e2b sandbox %s: %w", sessionID, err)
	}
	return x, nil
}

// ListE2BSandboxes implements store.Store.
func (s *Store) ListE2BSandboxes(ctx context.Context) ([]store.E2BSandbox, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT session_id, record FROM e2b_sandboxes ORDER BY session_id`)
	if err != nil {
		return nil, errorf("sqlite: list e2b sandboxes: %w", err)
	}
	defer rows.Close()
	list := []store.E2BSandbox{}
	for rows.Next() {
		var x store.E2BSandbox
		if err := rows.Scan(&x.SessionID, &x.Record); err != nil {
			return nil, errorf("sqlite: list e2b sandboxes: %w", err)
		}
		list = append(list, x)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list e2b sandboxes: %w", err)
	}
	return list, nil
}

// DeleteE2BSandbox implements store.Store.
func (s *Store) DeleteE2BSandbox(ctx context.Context, sessionID string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM e2b_sandboxes WHERE session_id = ?`, sessionID)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete e2b sandbox %s: %w", sessionID, err)
	}
	return nil
}

// nonNil stores an empty record as an empty BLOB, not NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
