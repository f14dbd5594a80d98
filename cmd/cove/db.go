package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/nodeinfo"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// openStore opens the state store that --db names: "sqlite" (or "") for
// the SQLite file state.db in home, one server's; a postgres:// or
// postgresql:// URL for a PostgreSQL database that servers can share.
func openStore(ctx context.Context, db, home string, log *slog.Logger) (store.Store, error) {
	switch {
	case db == "" || db == "sqlite":
		path := filepath.Join(home, "state.db")
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		log.Info("state store: SQLite", "path", path)
		return st, nil
	case sharedStore(db):
		st, err := postgres.Open(ctx, db)
		if err != nil {
			return nil, fmt.Errorf("server: --db: %w", err)
		}
		where := "PostgreSQL"
		if u, err := url.Parse(db); err == nil {
			where = u.Redacted()
		}
		log.Info("state store: PostgreSQL", "db", where)
		return st, nil
	}
	shown := db // a mistyped scheme must not show a password either
	if u, err := url.Parse(db); err == nil && u.User != nil {
		shown = u.Redacted()
	}
	return nil, fmt.Errorf("server: --db %q: want sqlite, or a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL", shown)
}

// fenceAfter is how long a node (a server's embedded one, or a 'cove
// node' serving sessions) may go without a heartbeat
// before it freezes its VMs (session.Config.FenceAfter): half of
// --node-grace where the store is shared (PostgreSQL), so that a node
// another server may take for dead has frozen its VMs first; never on
// SQLite, where no other node can take its sessions over.
func fenceAfter(db string, grace time.Duration) time.Duration {
	if !sharedStore(db) {
		return 0
	}
	return grace / 2
}

// probeNode measures this host for its node record, with fence, the span
// after which the node freezes its VMs without a heartbeat (fenceAfter):
// the servers' sweepers then wait at least twice that before they take
// the node for dead, whatever their own --node-grace.
func probeNode(ctx context.Context, home, accel string, fence time.Duration) (store.NodeCapacity, error) {
	c, err := nodeinfo.Probe(ctx, home, accel)
	c.FenceAfterMS = fence.Milliseconds()
	return c, err
}
