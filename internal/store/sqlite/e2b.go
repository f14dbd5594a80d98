package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"time"

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
		due, err := encodeTime(x.DueAt)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO e2b_sandboxes (session_id, record, due_at) VALUES (?, ?, ?)
			ON CONFLICT (session_id) DO UPDATE SET record = excluded.record, due_at = excluded.due_at`, x.SessionID, nonNil(x.Record), due)
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
	var due sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT record, due_at FROM e2b_sandboxes WHERE session_id = ?`, sessionID).Scan(&x.Record, &due)
	x.DueAt = decodeTime(due)
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
	list, err := s.e2bSandboxes(ctx, `SELECT session_id, record, due_at FROM e2b_sandboxes ORDER BY session_id`)
	if err != nil {
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

// DueE2BSandboxes implements store.Store.
func (s *Store) DueE2BSandboxes(ctx context.Context, at time.Time, limit int) ([]store.E2BSandbox, error) {
	n, err := encodeTime(at)
	if err != nil || n == nil {
		return nil, errorf("sqlite: due e2b sandboxes: at %v: %v", at, cmp.Or(err, errors.New("zero time")))
	}
	list, err := s.e2bSandboxes(ctx, `SELECT session_id, record, due_at FROM e2b_sandboxes
		WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at, session_id LIMIT ?`, n, max(limit, 0))
	if err != nil {
		return nil, errorf("sqlite: due e2b sandboxes: %w", err)
	}
	return list, nil
}

// SetE2BSandboxDue implements store.Store.
func (s *Store) SetE2BSandboxDue(ctx context.Context, sessionID string, was, due time.Time) (bool, error) {
	w, err := encodeTime(was)
	if err != nil {
		return false, errorf("sqlite: set due of e2b sandbox %s: %w", sessionID, err)
	}
	d, err := encodeTime(due)
	if err != nil {
		return false, errorf("sqlite: set due of e2b sandbox %s: %w", sessionID, err)
	}
	var set bool
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE e2b_sandboxes SET due_at = ? WHERE session_id = ? AND due_at IS ?`, d, sessionID, w)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			set = n == 1
			return err
		}
		var one int
		err = tx.QueryRowContext(ctx, `SELECT 1 FROM e2b_sandboxes WHERE session_id = ?`, sessionID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return false, errorf("sqlite: set due of e2b sandbox %s: %w", sessionID, err)
	}
	return set, nil
}

// e2bSandboxes runs a query of session_id, record and due_at rows.
func (s *Store) e2bSandboxes(ctx context.Context, query string, args ...any) ([]store.E2BSandbox, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	list := []store.E2BSandbox{}
	for rows.Next() {
		var (
			x   store.E2BSandbox
			due sql.NullInt64
		)
		if err := rows.Scan(&x.SessionID, &x.Record, &due); err != nil {
			return nil, err
		}
		x.DueAt = decodeTime(due)
		list = append(list, x)
	}
	return list, rows.Err()
}
