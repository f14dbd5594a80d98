package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

const nodeColumns = `id, name, labels, capacity, admin, dead, embedded, credential_hash,
	joined_at, heartbeat_at, url, e2b_url, gen`

// CreateNode implements store.Store. ON CONFLICT DO NOTHING covers every
// unique column (id, name, credential hash): a clash inserts nothing.
func (s *Store) CreateNode(ctx context.Context, n *store.Node) error {
	args, err := nodeArgs(*n)
	if err != nil {
		return errorf("sqlite: create node %s: %w", n.ID, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO nodes (`+nodeColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT DO NOTHING`, args...)
	if err := oneRow(res, err, store.ErrExists); err != nil {
		return errorf("sqlite: create node %s (%q): %w", n.ID, n.Name, err)
	}
	n.Gen = 1
	return nil
}

// UpdateNode implements store.Store.
func (s *Store) UpdateNode(ctx context.Context, n *store.Node) error {
	args, err := nodeArgs(*n)
	if err != nil {
		return errorf("sqlite: update node %s: %w", n.ID, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM nodes
			WHERE (name = ? OR (credential_hash = ? AND credential_hash != '')) AND id != ?`,
			n.Name, n.CredentialHash, n.ID).Scan(&other)
		if err == nil {
			return fmt.Errorf("node %s has the same name or credential: %w", other, store.ErrExists)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// nodeArgs starts with the id; it goes last, in WHERE, with the
		// generation read.
		args = append(args[1:], n.ID, n.Gen)
		res, err := tx.ExecContext(ctx, `UPDATE nodes SET
			name = ?, labels = ?, capacity = ?, admin = ?, dead = ?, embedded = ?,
			credential_hash = ?, joined_at = ?, heartbeat_at = ?, url = ?, e2b_url = ?, gen = gen + 1
			WHERE id = ? AND gen = ?`, args...)
		if err := oneRow(res, err, nil); err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return staleOrGone(ctx, tx, "nodes", "id", n.ID, n.Gen)
		}
		return nil
	})
	if err != nil {
		return errorf("sqlite: update node %s: %w", n.ID, err)
	}
	n.Gen++
	return nil
}

// GetNode implements store.Store.
func (s *Store) GetNode(ctx context.Context, id string) (store.Node, error) {
	return s.getNode(ctx, "node "+id, `id = ?`, id)
}

// GetNodeByName implements store.Store.
func (s *Store) GetNodeByName(ctx context.Context, name string) (store.Node, error) {
	return s.getNode(ctx, fmt.Sprintf("node named %q", name), `name = ?`, name)
}

// GetNodeByCredential implements store.Store.
func (s *Store) GetNodeByCredential(ctx context.Context, hash string) (store.Node, error) {
	if hash == "" {
		return store.Node{}, errorf("sqlite: get node by credential: empty hash: %w", store.ErrNotFound)
	}
	return s.getNode(ctx, "node by credential", `credential_hash = ?`, hash)
}

// getNode returns the one node where cond (a constant of this package)
// holds for arg; what names it in errors.
func (s *Store) getNode(ctx context.Context, what, cond, arg string) (store.Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE `+cond, arg))
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Node{}, errorf("sqlite: get %s: %w", what, err)
	}
	return n, nil
}

// ListNodes implements store.Store.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes ORDER BY name`)
	if err != nil {
		return nil, errorf("sqlite: list nodes: %w", err)
	}
	defer rows.Close()
	list := []store.Node{}
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, errorf("sqlite: list nodes: %w", err)
		}
		list = append(list, n)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list nodes: %w", err)
	}
	return list, nil
}

// DeleteNode implements store.Store.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM nodes WHERE id = ?`, id)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete node %s: %w", id, err)
	}
	return nil
}

// HeartbeatNode implements store.Store.
func (s *Store) HeartbeatNode(ctx context.Context, id string, at time.Time, c store.NodeCapacity) error {
	hb, err := encodeTime(at)
	if err != nil {
		return errorf("sqlite: heartbeat of node %s: %w", id, err)
	}
	capacity, err := encodeCapacity(c)
	if err != nil {
		return errorf("sqlite: heartbeat of node %s: %w", id, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE nodes SET heartbeat_at = ?, capacity = ?, dead = 0
		WHERE id = ?`, hb, capacity, id)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: heartbeat of node %s: %w", id, err)
	}
	return nil
}

// nodeArgs are n's column values, in nodeColumns order, less gen.
func nodeArgs(n store.Node) ([]any, error) {
	labels, err := encodeEnv(n.Labels)
	if err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	capacity, err := encodeCapacity(n.Capacity)
	if err != nil {
		return nil, err
	}
	joined, err := encodeTime(n.JoinedAt)
	if err != nil {
		return nil, fmt.Errorf("joined_at: %w", err)
	}
	hb, err := encodeTime(n.HeartbeatAt)
	if err != nil {
		return nil, fmt.Errorf("heartbeat_at: %w", err)
	}
	return []any{n.ID, n.Name, labels, capacity, n.Admin, n.Dead, n.Embedded, n.CredentialHash, joined, hb, n.URL, n.E2BURL}, nil
}

// encodeCapacity is c as a JSON object.
func encodeCapacity(c store.NodeCapacity) (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("capacity: %w", err)
	}
	return string(b), nil
}

func scanNode(sc scanner) (store.Node, error) {
	var (
		n          store.Node
		labels     sql.NullString
		capacity   string
		joined, hb sql.NullInt64
	)
	err := sc.Scan(&n.ID, &n.Name, &labels, &capacity, &n.Admin, &n.Dead, &n.Embedded,
		&n.CredentialHash, &joined, &hb, &n.URL, &n.E2BURL, &n.Gen)
	if err != nil {
		return store.Node{}, err
	}
	if n.Labels, err = decodeEnv(labels); err != nil {
		return store.Node{}, fmt.Errorf("node %s: labels: %w", n.ID, err)
	}
	if err := json.Unmarshal([]byte(capacity), &n.Capacity); err != nil {
		return store.Node{}, fmt.Errorf("node %s: capacity: %w", n.ID, err)
	}
	if len(n.Capacity.CPUFlags) == 0 {
		n.Capacity.CPUFlags = nil
	}
	n.JoinedAt = decodeTime(joined)
	n.HeartbeatAt = decodeTime(hb)
	return n, nil
}
