package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are the schema, in order. Migration i takes the database from
// user_version i to i+1. Append only: never edit or reorder one that has
// shipped.
//
// Times are INTEGER unix nanoseconds, NULL for the zero time. Env is a JSON
// object as TEXT, NULL when empty; Handle and Snapshot are BLOBs, NULL when
// empty. Later steps keep to the same encodings.
var migrations = []string{
	// 1: sessions and images.
	`CREATE TABLE sessions (
		id          TEXT PRIMARY KEY,
		state       TEXT NOT NULL,
		image       TEXT NOT NULL,
		memory_mib  INTEGER NOT NULL,
		cpus        INTEGER NOT NULL,
		env         TEXT,
		accel       TEXT NOT NULL,
		created_at  INTEGER,
		updated_at  INTEGER,
		error       TEXT NOT NULL,
		boot_millis INTEGER NOT NULL,
		handle      BLOB
	) STRICT;
	CREATE INDEX sessions_by_created ON sessions (created_at, id);
	CREATE TABLE images (
		name         TEXT PRIMARY KEY,
		key          TEXT NOT NULL,
		dir          TEXT NOT NULL,
		size_bytes   INTEGER NOT NULL,
		created_at   INTEGER,
		build_millis INTEGER NOT NULL
	) STRICT;`,

	// 2: parking and templates. Sessions gain their idle timeout (nanoseconds),
	// auto-wake opt-out (0 or 1), template name and parked snapshot (a BLOB,
	// NULL when empty); templates get their own table, Setup a JSON array as
	// TEXT, NULL when empty.
	`ALTER TABLE sessions ADD COLUMN idle_timeout_ns INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sessions ADD COLUMN no_auto_wake INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sessions ADD COLUMN template TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN snapshot BLOB;
	CREATE TABLE templates (
		name        TEXT PRIMARY KEY,
		state       TEXT NOT NULL,
		image       TEXT NOT NULL,
		memory_mib  INTEGER NOT NULL,
		cpus        INTEGER NOT NULL,
		env         TEXT,
		setup       TEXT,
		start       TEXT NOT NULL,
		pool        INTEGER NOT NULL,
		error       TEXT NOT NULL,
		created_at  INTEGER,
		updated_at  INTEGER,
		snapshot    BLOB
	) STRICT;`,

	// 3: triggers. Events get a sequence number that is never reused
	// (AUTOINCREMENT), Fields a JSON object as TEXT and Body a BLOB, each
	// NULL when empty; a subscription's Until is a JSON array as TEXT, NULL
	// when empty. Nothing refers to sessions by foreign key: sessions are
	// deleted on their own, and DeleteSessionTriggers cleans up after them.
	`CREATE TABLE events (
		seq      INTEGER PRIMARY KEY AUTOINCREMENT,
		source   TEXT NOT NULL,
		id       TEXT NOT NULL,
		name     TEXT NOT NULL,
		fields   TEXT,
		body     BLOB,
		received INTEGER,
		UNIQUE (source, id)
	) STRICT;
	CREATE TABLE subscriptions (
		session_id TEXT PRIMARY KEY,
		until      TEXT,
		deadline   INTEGER,
		created_at INTEGER
	) STRICT;
	CREATE INDEX subscriptions_by_created ON subscriptions (created_at, session_id);
	CREATE TABLE deliveries (
		event_seq  INTEGER NOT NULL,
		session_id TEXT NOT NULL,
		state      TEXT NOT NULL,
		error      TEXT NOT NULL,
		created_at INTEGER,
		updated_at INTEGER,
		PRIMARY KEY (event_seq, session_id)
	) STRICT;
	CREATE INDEX deliveries_by_state ON deliveries (state, event_seq, session_id);
	CREATE INDEX deliveries_by_session ON deliveries (session_id);
	CREATE TABLE hooks (
		name   TEXT PRIMARY KEY,
		secret BLOB
	) STRICT;`,

	// 4: template versions. Sessions record which version of their
	// template they were cloned from; templates gain the repository they
	// follow, their current version and its commit; each build is a row of
	// template_versions. Templates and clones from before are version 1,
	// and each template gets its version-1 row.
	`ALTER TABLE sessions ADD COLUMN template_version INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE templates ADD COLUMN repo TEXT NOT NULL DEFAULT '';
	ALTER TABLE templates ADD COLUMN branch TEXT NOT NULL DEFAULT '';
	ALTER TABLE templates ADD COLUMN repo_dir TEXT NOT NULL DEFAULT '';
	ALTER TABLE templates ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE templates ADD COLUMN commit_sha TEXT NOT NULL DEFAULT '';
	CREATE TABLE template_versions (
		template     TEXT NOT NULL REFERENCES templates (name) ON DELETE CASCADE,
		version      INTEGER NOT NULL,
		state        TEXT NOT NULL,
		commit_sha   TEXT NOT NULL,
		base         INTEGER NOT NULL,
		reason       TEXT NOT NULL,
		error        TEXT NOT NULL,
		build_millis INTEGER NOT NULL,
		created_at   INTEGER,
		updated_at   INTEGER,
		snapshot     BLOB,
		PRIMARY KEY (template, version)
	) STRICT;
	UPDATE templates SET version = 1;
	UPDATE sessions SET template_version = 1 WHERE template != '';
	INSERT INTO template_versions
		SELECT name, 1, state, '', 0, 'create', error, 0, created_at, updated_at, snapshot FROM templates;`,

	// 5: identities. Users have unique names, and unique OIDC identities
	// (issuer, subject), both NULL for a local user (NULLs never clash in
	// a UNIQUE constraint); team memberships go with their user. Tokens
	// keep the SHA-256 of their secret (a BLOB of 32 bytes, unique), their
	// Scopes as a JSON array in TEXT, NULL when empty, and times NULL when
	// zero. A token refers to its user by id without a foreign key: it
	// outlives the user, revoked (DeleteUser), so that a later user of the
	// same name gains nothing.
	`CREATE TABLE users (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		kind       TEXT NOT NULL,
		issuer     TEXT,
		subject    TEXT,
		created_at INTEGER,
		UNIQUE (issuer, subject)
	) STRICT;
	CREATE TABLE team_members (
		user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
		team    TEXT NOT NULL,
		PRIMARY KEY (user_id, team)
	) STRICT;
	CREATE INDEX team_members_by_team ON team_members (team, user_id);
	CREATE TABLE tokens (
		id           TEXT PRIMARY KEY,
		name         TEXT NOT NULL,
		user_id      TEXT NOT NULL,
		hash         BLOB NOT NULL UNIQUE,
		scopes       TEXT,
		created_at   INTEGER,
		expires_at   INTEGER,
		revoked_at   INTEGER,
		last_used_at INTEGER
	) STRICT;
	CREATE INDEX tokens_by_created ON tokens (created_at, id);
	CREATE INDEX tokens_by_user ON tokens (user_id, created_at, id);`,

	// 6: owners. Sessions and templates record the id of the user who
	// created them and the agent name given at create. Those from before
	// were made with the admin token (the only credential that passed the
	// gate), so they are the admin's (store.OwnerAdmin), with no agent.
	`ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN agent TEXT NOT NULL DEFAULT '';
	ALTER TABLE templates ADD COLUMN owner TEXT NOT NULL DEFAULT '';
	ALTER TABLE templates ADD COLUMN agent TEXT NOT NULL DEFAULT '';
	UPDATE sessions SET owner = 'admin';
	UPDATE templates SET owner = 'admin';`,

	// 7: session token generations. Bumped on park, revoke: a session
	// token carrying an older one is dead.
	`ALTER TABLE sessions ADD COLUMN token_gen INTEGER NOT NULL DEFAULT 0;`,

	// 8: revocations that stay. A revoked session's identity stays dead
	// (tokens_revoked_at, NULL: not revoked), and a removed OIDC user's
	// issuer and subject cannot sign in again until an admin re-adds
	// them (removed_users).
	`ALTER TABLE sessions ADD COLUMN tokens_revoked_at INTEGER;
	CREATE TABLE removed_users (
		issuer     TEXT NOT NULL,
		subject    TEXT NOT NULL,
		id         TEXT NOT NULL,
		name       TEXT NOT NULL,
		removed_at INTEGER,
		PRIMARY KEY (issuer, subject)
	) STRICT;
	CREATE INDEX removed_users_by_name ON removed_users (name, removed_at, id);`,

	// 9: egress allowlists: the rules (egress.Rule's text form, a JSON
	// array; NULL: none) a session and a template allow.
	`ALTER TABLE sessions ADD COLUMN allow TEXT;
	ALTER TABLE templates ADD COLUMN allow TEXT;`,

	// 10: secrets, sealed by package secret (sealed: its ciphertext, never
	// a plaintext), keyed by their owner (kind: user, team or template)
	// and name. Hosts are a JSON array as TEXT. No foreign keys: owners
	// are of three kinds, and DeleteUser and DeleteTemplate remove their
	// owner's secrets themselves.
	`CREATE TABLE secrets (
		owner_kind TEXT NOT NULL,
		owner      TEXT NOT NULL,
		name       TEXT NOT NULL,
		hosts      TEXT,
		header     TEXT NOT NULL,
		sealed     BLOB,
		created_at INTEGER,
		updated_at INTEGER,
		PRIMARY KEY (owner_kind, owner, name)
	) STRICT;`,

	// 11: snapshots in the object store: the manifest (package cas) of
	// a parked session's snapshot once it is durable there ('': not
	// stored), and the bytes its upload added.
	`ALTER TABLE sessions ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;`,

	// 12: compare-and-swap and claims. Sessions and templates get a
	// generation that each update checks and advances (rows from before
	// start at 1, as a create does); leases are work claimed by one
	// owner until expires (unix nanoseconds by the store's clock).
	`ALTER TABLE sessions ADD COLUMN gen INTEGER NOT NULL DEFAULT 1;
	ALTER TABLE templates ADD COLUMN gen INTEGER NOT NULL DEFAULT 1;
	CREATE TABLE leases (
		key     TEXT PRIMARY KEY,
		owner   TEXT NOT NULL,
		expires INTEGER NOT NULL
	) STRICT;`,
	// 13: template versions and images in the object store: the
	// manifest of their files once durable there ('': not stored).
	`ALTER TABLE template_versions ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';
	ALTER TABLE images ADD COLUMN stored_manifest TEXT NOT NULL DEFAULT '';`,
	// 14: nodes, the VM hosts. Sessions name the node that holds them
	// ('': the embedded node, as every session from before was). A
	// node's Labels are a JSON object as TEXT, NULL when empty; its
	// Capacity a JSON object as TEXT. Credential hashes are unique but
	// for the embedded node's ''.
	`ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
	CREATE INDEX sessions_by_node ON sessions (node);
	CREATE TABLE nodes (
		id              TEXT PRIMARY KEY,
		name            TEXT NOT NULL UNIQUE,
		labels          TEXT,
		capacity        TEXT NOT NULL,
		admin           TEXT NOT NULL,
		dead            INTEGER NOT NULL,
		embedded        INTEGER NOT NULL,
		credential_hash TEXT NOT NULL,
		joined_at       INTEGER,
		heartbeat_at    INTEGER,
		gen             INTEGER NOT NULL
	) STRICT;
	CREATE UNIQUE INDEX nodes_by_credential ON nodes (credential_hash) WHERE credential_hash != '';`,
	// 15: checkpoints of running sessions, named uniquely per session;
	// a session's removal removes them (DeleteSession). Forks name their
	// parent session and its checkpoint they were made from.
	`ALTER TABLE sessions ADD COLUMN parent TEXT NOT NULL DEFAULT '';
	ALTER TABLE sessions ADD COLUMN from_checkpoint TEXT NOT NULL DEFAULT '';
	CREATE TABLE checkpoints (
		session_id TEXT NOT NULL,
		name       TEXT NOT NULL,
		created_at INTEGER,
		bytes      INTEGER NOT NULL,
		pause_ms   INTEGER NOT NULL,
		manifest   BLOB,
		PRIMARY KEY (session_id, name)
	) STRICT;`,
	// 16: what the E2B-compatible API keeps of the sessions it made
	// (store.E2BSandbox); a session's removal removes it (DeleteSession).
	`CREATE TABLE e2b_sandboxes (
		session_id TEXT PRIMARY KEY,
		record     BLOB NOT NULL
	) STRICT;`,

	// 17: node use read from an index alone (SessionUsage, on every
	// placement): its key covers every column the sums read, and the
	// node-only index it replaces is a prefix of it.
	`CREATE INDEX sessions_by_node_state ON sessions (node, state, memory_mib, cpus);
	DROP INDEX sessions_by_node;`,

	// 18: the E2B end-time sweep reads the sandboxes due from an index
	// (DueE2BSandboxes) rather than every record each second. due_at is
	// unix nanoseconds, NULL for never; the records from before are due at
	// once (0): the first sweep sets each its own.
	`ALTER TABLE e2b_sandboxes ADD COLUMN due_at INTEGER;
	UPDATE e2b_sandboxes SET due_at = 0;
	CREATE INDEX e2b_sandboxes_by_due ON e2b_sandboxes (due_at, session_id) WHERE due_at IS NOT NULL;`,

	// 19: where the other API servers reach an embedded node's server
	// (Node.URL, its --advertise-url), to route its sessions' calls
	// there; '' for none.
	`ALTER TABLE nodes ADD COLUMN url TEXT NOT NULL DEFAULT '';`,

	// 20: where the other API servers reach an embedded node's server's
	// E2B API (Node.E2BURL), to route its sandboxes' E2B calls there;
	// '' for none.
	`ALTER TABLE nodes ADD COLUMN e2b_url TEXT NOT NULL DEFAULT '';`,

	// 21: a template version's build log (TemplateVersion.Log), a good
	// build's as a failed one's; '' for the versions from before.
	`ALTER TABLE template_versions ADD COLUMN build_log TEXT NOT NULL DEFAULT '';`,

	// 22: the Idempotency-Key of each create that came with one
	// (store.SessionKey), unique per owner. A key outlives its session: a
	// retry after the session's removal is told so rather than making
	// another.
	`CREATE TABLE session_keys (
		owner        TEXT NOT NULL,
		key          TEXT NOT NULL,
		session_id   TEXT NOT NULL,
		request_hash TEXT NOT NULL,
		PRIMARY KEY (owner, key)
	) STRICT;`,

	// 23: when each idempotency key's create was made (unix ns), so that
	// keys expire (Store.ExpireSessionKeys). A key from before takes its
	// session's creation time, or, its session removed, the migration's.
	`ALTER TABLE session_keys ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
	UPDATE session_keys SET created_at = COALESCE(
		(SELECT created_at FROM sessions WHERE sessions.id = session_keys.session_id),
		CAST(strftime('%s', 'now') AS INTEGER) * 1000000000);
	CREATE INDEX session_keys_by_created ON session_keys (created_at);`,
}

// migrate brings db's schema up to len(steps), applying in one transaction
// the steps it has not had yet, as PRAGMA user_version records. A database
// newer than steps is refused, not touched.
func migrate(ctx context.Context, db *sql.DB, steps []string) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()

	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read user_version: %w", err)
	}
	switch {
	case version > len(steps):
		return fmt.Errorf("database schema version %d is newer than this binary's %d", version, len(steps))
	case version == len(steps):
		return tx.Commit()
	}
	for i := version; i < len(steps); i++ {
		if _, err := tx.ExecContext(ctx, steps[i]); err != nil {
			return fmt.Errorf("apply migration %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no parameters; len(steps) is an int, not input.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(steps))); err != nil {
		return fmt.Errorf("set user_version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
