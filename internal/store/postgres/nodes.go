package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

const nodeColumns = `id, name, labels, capacity, admin, dead, embedded, credential_hash,
	joined_at, heartbeat_at, url, e2b_url, gen`

// CreateNode implements store.Store. ON CONFLICT DO NOTHING covers every
// unique column (id, name, credential hash): a clash, even with a writer
// on another server, inserts nothing.
func (s *Store) CreateNode(ctx context.Context, n *store.Node) error {
	args, err := nodeArgs(*n)
	if err != nil {
		return s.errorf("postgres: create node %s: %w", n.ID, err)
	}
	tag, err := s.exec(ctx, `INSERT INTO nodes (`+nodeColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1) ON CONFLICT DO NOTHING`, args...)
	if err := oneRow(tag, err, store.ErrExists); err != nil {
		return s.errorf("postgres: create node %s (%q): %w", n.ID, n.Name, err)
	}
	n.Gen = 1
	return nil
}

// UpdateNode implements store.Store. A clash found by the check says
// which node holds the name; one with a writer committing between check
// and update fails on the unique index, still ErrExists.
func (s *Store) UpdateNode(ctx context.Context, n *store.Node) error {
	args, err := nodeArgs(*n)
	if err != nil {
		return s.errorf("postgres: update node %s: %w", n.ID, err)
	}
	args = append(args, n.Gen)
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var other string
		err := tx.QueryRow(ctx, `SELECT id FROM nodes
			WHERE (name = $1 OR (credential_hash = $2 AND credential_hash <> '')) AND id <> $3`,
			n.Name, n.CredentialHash, n.ID).Scan(&other)
		if err == nil {
			return fmt.Errorf("node %s has the same name or credential: %w", other, store.ErrExists)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE nodes SET
			name = $2, labels = $3, capacity = $4, admin = $5, dead = $6, embedded = $7,
			credential_hash = $8, joined_at = $9, heartbeat_at = $10, url = $11, e2b_url = $12, gen = gen + 1
			WHERE id = $1 AND gen = $13`, args...)
		if err := oneRow(tag, err, nil); err != nil {
			return s.classify(err)
		}
		if tag.RowsAffected() == 0 {
			return s.staleOrGone(ctx, tx, "nodes", "id", n.ID, n.Gen)
		}
		return nil
	})
	if err != nil {
		return s.errorf("postgres: update node %s: %w", n.ID, err)
	}
	n.Gen++
	return nil
}

// GetNode implements store.Store.
func (s *Store) GetNode(ctx context.Context, id string) (store.Node, error) {
	return s.getNode(ctx, "node "+id, `id = $1`, id)
}

// GetNodeByName implements store.Store.
func (s *Store) GetNodeByName(ctx context.Context, name string) (store.Node, error) {
	return s.getNode(ctx, fmt.Sprintf("node named %q", name), `name = $1`, name)
}

// GetNodeByCredential implements store.Store.
func (s *Store) GetNodeByCredential(ctx context.Context, hash string) (store.Node, error) {
	if hash == "" {
		return store.Node{}, s.errorf("postgres: get node by credential: empty hash: %w", store.ErrNotFound)
	}
	return s.getNode(ctx, "node by credential", `credential_hash = $1`, hash)
}

// getNode returns the one node where cond (a constant of this package)
// holds for arg; what names it in errors.
func (s *Store) getNode(ctx context.Context, what, cond, arg string) (store.Node, error) {
	n, err := scanNode(s.queryRow(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE `+cond, arg))
	if err != nil {
		return store.Node{}, s.errorf("postgres: get %s: %w", what, notFound(err))
	}
	return n, nil
}

// ListNodes implements store.Store.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	out, err := query(ctx, s, scanNode, `SELECT `+nodeColumns+` FROM nodes ORDER BY name`)
	if err != nil {
		return nil, s.errorf("postgres: list nodes: %w", err)
	}
	return out, nil
}

// DeleteNode implements store.Store.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	tag, err := s.exec(ctx, `DELETE FROM nodes WHERE id = $1`, id)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete node %s: %w", id, err)
	}
	return nil
}

// HeartbeatNode implements store.Store.
func (s *Store) HeartbeatNode(ctx context.Context, id string, at time.Time, c store.NodeCapacity) error {
	hb, err := encodeTime(at)
	if err != nil {
		return s.errorf("postgres: heartbeat of node %s: %w", id, err)
	}
	capacity, err := encodeCapacity(c)
	if err != nil {
		return s.errorf("postgres: heartbeat of node %s: %w", id, err)
	}
	tag, err := s.exec(ctx, `UPDATE nodes SET heartbeat_at = $2, capacity = $3, dead = false
		WHERE id = $1`, id, hb, capacity)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: heartbeat of node %s: %w", id, err)
	}
	return nil
}

// nodeArgs are n's column values, in nodeColumns order, less gen.
func nodeArgs(n store.Node) ([]any, error) {
	labels, err := encodeMap("label", n.Labels)
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

func scanNode(sc pgx.Row) (store.Node, error) {
	var (
		n          store.Node
		labels     *string
		capacity   string
		joined, hb *int64
	)
	err := sc.Scan(&n.ID, &n.Name, &labels, &capacity, &n.Admin, &n.Dead, &n.Embedded,
		&n.CredentialHash, &joined, &hb, &n.URL, &n.E2BURL, &n.Gen)
	if err != nil {
		return store.Node{}, err
	}
	if n.Labels, err = decodeMap(labels); err != nil {
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
