package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const checkpointColumns = `session_id, name, created_at, bytes, pause_ms, manifest`

// CreateCheckpoint implements store.Store. The row is inserted only if its
// session exists (the foreign key removes it with the session).
func (s *Store) CreateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	created, err := encodeTime(c.CreatedAt)
	if err != nil {
		return s.errorf("postgres: create checkpoint %s of %s: created_at: %w", c.Name, c.SessionID, err)
	}
	tag, err := s.exec(ctx, `INSERT INTO checkpoints (`+checkpointColumns+`)
		SELECT id, $2, $3, $4, $5, $6 FROM sessions WHERE id = $1
		ON CONFLICT (session_id, name) DO NOTHING`,
		c.SessionID, c.Name, created, c.Bytes, c.PauseMillis, c.Manifest)
	if err == nil && tag.RowsAffected() == 0 {
		// No session, or a checkpoint of that name: say which.
		var one int
		if err = s.queryRow(ctx, `SELECT 1 FROM sessions WHERE id = $1`, c.SessionID).Scan(&one); err == nil {
			err = store.ErrExists
		} else {
			err = notFound(err)
		}
	}
	if err != nil {
		return s.errorf("postgres: create checkpoint %s of %s: %w", c.Name, c.SessionID, err)
	}
	return nil
}

// GetCheckpoint implements store.Store.
func (s *Store) GetCheckpoint(ctx context.Context, sessionID, name string) (store.Checkpoint, error) {
	c, err := scanCheckpoint(s.queryRow(ctx, `SELECT `+checkpointColumns+` FROM checkpoints
		WHERE session_id = $1 AND name = $2`, sessionID, name))
	if err != nil {
		return store.Checkpoint{}, s.errorf("postgres: get checkpoint %s of %s: %w", name, sessionID, notFound(err))
	}
	return c, nil
}

// ListCheckpoints implements store.Store.
func (s *Store) ListCheckpoints(ctx context.Context, sessionID string) ([]store.Checkpoint, error) {
	out, err := query(ctx, s, scanCheckpoint, `SELECT `+checkpointColumns+` FROM checkpoints
		WHERE session_id = $1 ORDER BY created_at NULLS FIRST, name`, sessionID)
	if err != nil {
		return nil, s.errorf("postgres: list checkpoints of %s: %w", sessionID, err)
	}
	return out, nil
}

// UpdateCheckpoint implements store.Store.
func (s *Store) UpdateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	tag, err := s.exec(ctx, `UPDATE checkpoints SET bytes = $3, manifest = $4 WHERE session_id = $1 AND name = $2`,
		c.SessionID, c.Name, c.Bytes, c.Manifest)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: update checkpoint %s of %s: %w", c.Name, c.SessionID, err)
	}
	return nil
}

// DeleteCheckpoint implements store.Store.
func (s *Store) DeleteCheckpoint(ctx context.Context, sessionID, name string) error {
	tag, err := s.exec(ctx, `DELETE FROM checkpoints WHERE session_id = $1 AND name = $2`, sessionID, name)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete checkpoint %s of %s: %w", name, sessionID, err)
	}
	return nil
}

func scanCheckpoint(sc pgx.Row) (store.Checkpoint, error) {
	var (
		c       store.Checkpoint
		created *int64
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
