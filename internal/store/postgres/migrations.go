package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema, in order. Migration i takes the database from
// schema_version i to i+1. Append only: never edit or reorder one that has
// shipped.
//
// The encodings are the SQLite store's, so that the two stores keep the
// same records the same way: times are BIGINT unix nanoseconds, NULL for
// the zero time (timestamptz holds only microseconds); maps and lists are
// JSON as TEXT, NULL when empty (the bytes Go wrote, where jsonb would
// refuse a \u0000); opaque bytes are BYTEA, NULL when empty. Text that
// lists are ordered by, or that keys are, is COLLATE "C", so that order is
// bytewise whatever the database's locale. Nothing refers to sessions by
// foreign key (see the SQLite store's migration 3), and tokens outlive
// their user (its migration 5).
var migrations = []string{
	// 1: the SQLite store's schema as of its migration 10.
	`CREATE TABLE sessions (
		id                TEXT COLLATE "C" PRIMARY KEY,
		state             TEXT NOT NULL,
		image             TEXT NOT NULL,
		memory_mib        BIGINT NOT NULL,
		cpus              BIGINT NOT NULL,
		env               TEXT,
		accel             TEXT NOT NULL,
		created_at        BIGINT,
		updated_at        BIGINT,
		error             TEXT NOT NULL,
		boot_millis       BIGINT NOT NULL,
		handle            BYTEA,
		idle_timeout_ns   BIGINT NOT NULL,
		no_auto_wake      BOOLEAN NOT NULL,
		template          TEXT NOT NULL,
		snapshot          BYTEA,
		template_version  BIGINT NOT NULL,
		owner             TEXT NOT NULL,
		agent             TEXT NOT NULL,
		allow             TEXT,
		token_gen         BIGINT NOT NULL DEFAULT 0,
		tokens_revoked_at BIGINT
	);
	CREATE INDEX sessions_by_created ON sessions (created_at NULLS FIRST, id);
	CREATE TABLE images (
		name         TEXT COLLATE "C" PRIMARY KEY,
		key          TEXT NOT NULL,
		dir          TEXT NOT NULL,
		size_bytes   BIGINT NOT NULL,
		created_at   BIGINT,
		build_millis BIGINT NOT NULL
	);
	CREATE TABLE templates (
		name        TEXT COLLATE "C" PRIMARY KEY,
		state       TEXT NOT NULL,
		image       TEXT NOT NULL,
		memory_mib  BIGINT NOT NULL,
		cpus        BIGINT NOT NULL,
		env         TEXT,
		setup       TEXT,
		start       TEXT NOT NULL,
		pool        BIGINT NOT NULL,
		error       TEXT NOT NULL,
		created_at  BIGINT,
		updated_at  BIGINT,
		snapshot    BYTEA,
		repo        TEXT NOT NULL,
		branch      TEXT NOT NULL,
		repo_dir    TEXT NOT NULL,
		version     BIGINT NOT NULL,
		commit_sha  TEXT NOT NULL,
		owner       TEXT NOT NULL,
		agent       TEXT NOT NULL,
		allow       TEXT
	);
	CREATE TABLE template_versions (
		template     TEXT COLLATE "C" NOT NULL REFERENCES templates (name) ON DELETE CASCADE,
		version      BIGINT NOT NULL,
		state        TEXT NOT NULL,
		commit_sha   TEXT NOT NULL,
		base         BIGINT NOT NULL,
		reason       TEXT NOT NULL,
		error        TEXT NOT NULL,
		build_millis BIGINT NOT NULL,
		created_at   BIGINT,
		updated_at   BIGINT,
		snapshot     BYTEA,
		PRIMARY KEY (template, version)
	);
	CREATE TABLE events (
		seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		source   TEXT NOT NULL,
		id       TEXT NOT NULL,
		name     TEXT NOT NULL,
		fields   TEXT,
		body     BYTEA,
		received BIGINT,
		UNIQUE (source, id)
	);
	CREATE TABLE subscriptions (
		session_id TEXT COLLATE "C" PRIMARY KEY,
		until      TEXT,
		deadline   BIGINT,
		created_at BIGINT
	);
	CREATE INDEX subscriptions_by_created ON subscriptions (created_at NULLS FIRST, session_id);
	CREATE TABLE deliveries (
		event_seq  BIGINT NOT NULL,
		session_id TEXT COLLATE "C" NOT NULL,
		state      TEXT NOT NULL,
		error      TEXT NOT NULL,
		created_at BIGINT,
		updated_at BIGINT,
		PRIMARY KEY (event_seq, session_id)
	);
	CREATE INDEX deliveries_by_state ON deliveries (state, event_seq, session_id);
	CREATE INDEX deliveries_by_session ON deliveries (session_id);
	CREATE TABLE hooks (
		name   TEXT COLLATE "C" PRIMARY KEY,
		secret BYTEA
	);
	CREATE TABLE users (
		id         TEXT COLLATE "C" PRIMARY KEY,
		name       TEXT COLLATE "C" NOT NULL UNIQUE,
		kind       TEXT NOT NULL,
		issuer     TEXT,
		subject    TEXT,
		created_at BIGINT,
		UNIQUE (issuer, subject)
	);
	CREATE TABLE team_members (
		user_id TEXT COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
		team    TEXT COLLATE "C" NOT NULL,
		PRIMARY KEY (user_id, team)
	);
	CREATE INDEX team_members_by_team ON team_members (team, user_id);
	CREATE TABLE tokens (
		id           TEXT COLLATE "C" PRIMARY KEY,
		name         TEXT NOT NULL,
		user_id      TEXT COLLATE "C" NOT NULL,
		hash         BYTEA NOT NULL UNIQUE,
		scopes       TEXT,
		created_at   BIGINT,
		expires_at   BIGINT,
		revoked_at   BIGINT,
		last_used_at BIGINT
	);
	CREATE INDEX tokens_by_created ON tokens (created_at NULLS FIRST, id);
	CREATE INDEX tokens_by_user ON tokens (user_id, created_at NULLS FIRST, id);
	CREATE TABLE removed_users (
		issuer     TEXT NOT NULL,
		subject    TEXT NOT NULL,
		id         TEXT COLLATE "C" NOT NULL,
		name       TEXT COLLATE "C" NOT NULL,
		removed_at BIGINT,
		PRIMARY KEY (issuer, subject)
	);
	CREATE INDEX removed_users_by_name ON removed_users (name, removed_at DESC NULLS LAST, id DESC);
	CREATE TABLE secrets (
		owner_kind TEXT COLLATE "C" NOT NULL,
		owner      TEXT COLLATE "C" NOT NULL,
		name       TEXT COLLATE "C" NOT NULL,
		hosts      TEXT,
		header     TEXT NOT NULL,
		sealed     BYTEA,
		created_at BIGINT,
		updated_at BIGINT,
		PRIMARY KEY (owner_kind, owner, name)
	);`,

	// 2: the SQLite store's migration 11: a parked session's snapshot in
	// the object store.
	`ALTER TABLE sessions ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;`,

	// 3: the SQLite store's migration 12: generations for
	// compare-and-swap, and leases. A lease's expiry is by the database
	// server's clock, the one clock every server sharing it agrees on.
	`ALTER TABLE sessions ADD COLUMN gen BIGINT NOT NULL DEFAULT 1;
	ALTER TABLE templates ADD COLUMN gen BIGINT NOT NULL DEFAULT 1;
	CREATE TABLE leases (
		key     TEXT COLLATE "C" PRIMARY KEY,
		owner   TEXT NOT NULL,
		expires TIMESTAMPTZ NOT NULL
	);`,
	// 4: the SQLite store's migration 13: template versions and images
	// in the object store.
	`ALTER TABLE template_versions ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';
	ALTER TABLE images ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';`,
	// 5: the SQLite store's migration 14: nodes, and the node that holds
	// each session.
	`ALTER TABLE sessions ADD COLUMN node TEXT COLLATE "C" NOT NULL DEFAULT '';
	CREATE INDEX sessions_by_node ON sessions (node);
	CREATE TABLE nodes (
		id              TEXT COLLATE "C" PRIMARY KEY,
		name            TEXT COLLATE "C" NOT NULL UNIQUE,
		labels          TEXT,
		capacity        TEXT NOT NULL,
		admin           TEXT NOT NULL,
		dead            BOOLEAN NOT NULL,
		embedded        BOOLEAN NOT NULL,
		credential_hash TEXT COLLATE "C" NOT NULL,
		joined_at       BIGINT,
		heartbeat_at    BIGINT,
		gen             BIGINT NOT NULL
	);
	CREATE UNIQUE INDEX nodes_by_credential ON nodes (credential_hash) WHERE credential_hash <> '';`,
	// 6: the SQLite store's migration 15: checkpoints of running
	// sessions, removed with their session; forks' parents.
	`ALTER TABLE sessions ADD COLUMN parent TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN from_checkpoint TEXT NOT NULL DEFAULT '';
	CREATE TABLE checkpoints (
		session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
		name       TEXT COLLATE "C" NOT NULL,
		created_at BIGINT,
		bytes      BIGINT NOT NULL,
		pause_ms   BIGINT NOT NULL,
		manifest   BYTEA,
		PRIMARY KEY (session_id, name)
	);`,
	// 7: the SQLite store's migration 16: what the E2B-compatible API
	// keeps of the sessions it made, removed with their session.
	`CREATE TABLE e2b_sandboxes (
		session_id TEXT COLLATE "C" PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
		record     BYTEA NOT NULL
	);`,
	// 8: the SQLite store's migration 17: node use read from an index
	// alone (SessionUsage).
	`CREATE INDEX sessions_by_node_state ON sessions (node, state) INCLUDE (memory_mib, cpus);
	DROP INDEX sessions_by_node;`,
	// 9: the SQLite store's migration 18: the E2B end-time sweep reads
	// the sandboxes due from an index; those from before are due at once.
	`ALTER TABLE e2b_sandboxes ADD COLUMN due_at BIGINT;
	UPDATE e2b_sandboxes SET due_at = 0;
	CREATE INDEX e2b_sandboxes_by_due ON e2b_sandboxes (due_at, session_id) WHERE due_at IS NOT NULL;`,
	// 10: the SQLite store's migration 19: where the other API servers
	// reach an embedded node's server (Node.URL).
	`ALTER TABLE nodes ADD COLUMN url TEXT NOT NULL DEFAULT '';`,
	// 11: the SQLite store's migration 20: where the other API servers
	// reach an embedded node's server's E2B API (Node.E2BURL).
	`ALTER TABLE nodes ADD COLUMN e2b_url TEXT NOT NULL DEFAULT '';`,
	// 12: the SQLite store's migration 21: a template version's build
	// log (TemplateVersion.Log).
	`ALTER TABLE template_versions ADD COLUMN build_log TEXT NOT NULL DEFAULT '';`,
	// 13: the SQLite store's migration 22: the Idempotency-Key of each
	// create that came with one (store.SessionKey), unique per owner,
	// outliving its session.
	`CREATE TABLE session_keys (
		owner        TEXT NOT NULL,
		key          TEXT NOT NULL,
		session_id   TEXT NOT NULL,
		request_hash TEXT NOT NULL,
		PRIMARY KEY (owner, key)
	);`,
	// 14: the SQLite store's migration 23: when each idempotency key's
	// create was made (unix ns), so that keys expire
	// (Store.ExpireSessionKeys); a key from before takes its session's
	// creation time, or, its session removed, the migration's.
	`ALTER TABLE session_keys ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
	UPDATE session_keys SET created_at = COALESCE(
		(SELECT created_at FROM sessions WHERE sessions.id = session_keys.session_id),
		(extract(epoch FROM now()) * 1000000000)::BIGINT);
	CREATE INDEX session_keys_by_created ON session_keys (created_at);`,
	// 15 (PostgreSQL alone: SQLite is one server's store): a NOTIFY on
	// sessionsChannel after each statement that writes session records,
	// delivered at its commit, which FollowSessions listens to so that
	// each server sees the others' changes (store.SessionFeed).
	`CREATE FUNCTION cove_sessions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_notify('cove_sessions', '');
		RETURN NULL;
	END $$;
	CREATE TRIGGER sessions_changed AFTER INSERT OR UPDATE OR DELETE ON sessions
		FOR EACH STATEMENT EXECUTE FUNCTION cove_sessions_changed();`,
}

// migrationLock is the key of the advisory lock that migrations hold, so
// that servers starting at once against one database migrate it one after
// the other ("cove" in ASCII).
const migrationLock = 0x636f7665

// migrate brings the database's schema up to len(steps), applying in one
// transaction the steps it has not had yet, as the schema_version table
// records. The transaction holds migrationLock from its start: a second
// server starting at once waits, then finds the schema up to date. A
// database newer than steps is refused, not touched.
func migrate(ctx context.Context, pool *pgxpool.Pool, steps []string) (err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
		version INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("make schema_version: %w", err)
	}
	var version int
	err = tx.QueryRow(ctx, `SELECT version FROM schema_version`).Scan(&version)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read schema_version: %w", err)
	}
	switch {
	case version > len(steps):
		return fmt.Errorf("database schema version %d is newer than this binary's %d", version, len(steps))
	case version == len(steps):
		return tx.Commit(ctx)
	}
	for i := version; i < len(steps); i++ {
		if _, err := tx.Exec(ctx, steps[i]); err != nil {
			return fmt.Errorf("apply migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_version (version) VALUES ($1)
		ON CONFLICT (one) DO UPDATE SET version = excluded.version`, len(steps)); err != nil {
		return fmt.Errorf("set schema_version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
