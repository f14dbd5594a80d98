package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/cove-dev/cove/internal/store"
)

const checkpointColumns = `session_id, name, created_at, bytes, pause_ms, manifest`

// CreateCheckpoint implements store.Store.
func (s *Store) CreateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	created, err := encodeTime(c.CreatedAt)
	if err != nil {
		return errorf("sqlite: create checkpoint %s of %s: created_at: %w", c.Name, c.SessionID, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM sessions WHERE id = ?`, c.SessionID).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO checkpoints (`+checkpointColumns+`)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, name) DO NOTHING`,
			c.SessionID, c.Name, created, c.Bytes, c.PauseMillis, c.Manifest)
		return oneRow(res, err, store.ErrExists)
	})
	if err != nil {
		return errorf("sqlite: create checkpoint %s of %s: %w", c.Name, c.SessionID, err)
	}
	return nil
}

// GetCheckpoint implements store.Store.
func (s *Store) GetCheckpoint(ctx context.Context, sessionID, name string) (store.Checkpoint, error) {
	c, err := scanCheckpoint(s.db.QueryRowContext(ctx, `SELECT `+checkpointColumns+` FROM checkpoints
		WHERE session_id = ? AND name = ?`, sessionID, name))
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Checkpoint{}, errorf("sqlite: get checkpoint %s of %s: %w", name, sessionID, err)
	}
	return c, nil
}

// ListCheckpoints implements store.Store.
func (s *Store) ListCheckpoints(ctx context.Context, sessionID string) ([]store.Checkpoint, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+checkpointColumns+` FROM checkpoints
		WHERE session_id = ? ORDER BY created_at, name`, sessionID)
	if err != nil {
		return nil, errorf("sqlite: list checkpoints of %s: %w", sessionID, err)
	}
	defer rows.Close()
	list := []store.Checkpoint{}
	for rows.Next() {
		c, err := scanCheckpoint(rows)
		if err != nil {
			return nil, errorf("sqlite: list checkpoints of %s: %w", sessionID, err)
		}
		list = append(list, c)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list checkpoints of %s: %w", sessionID, err)
	}
	return list, nil
}

// UpdateCheckpoint implements store.Store.
func (s *Store) UpdateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	res, err := s.db.ExecContext(ctx, `UPDATE checkpoints SET bytes = ?, manifest = ? WHERE session_id = ? AND name = ?`,
		c.Bytes, c.Manifest, c.SessionID, c.Name)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: update checkpoint %s of %s: %w", c.Name, c.SessionID, err)
	}
	return nil
}

// DeleteCheckpoint implements store.Store.
func (s *Store) DeleteCheckpoint(ctx context.Context, sessionID, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM checkpoints WHERE session_id = ? AND name = ?`, sessionID, name)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete checkpoint %s of %s: %w", name, sessionID, err)
	}
	return nil
}

func scanCheckpoint(sc interface{ Scan(...any) error }) (store.Checkpoint, error) {
	var (
		c       store.Checkpoint
		created sql.NullInt64
	)
	if err := sc.Scan(&c.SessionID, &c.Name, &created, &c.Bytes, &c.PauseMillis, &c.Manifest); err != nil {
		return store.Checkpoint{}, err
	}
	c.CreatedAt = decodeTime(created)
	if len(c.Manifest) == 0 {
		c.Manifest = nil
	}
	return c, nil
}
