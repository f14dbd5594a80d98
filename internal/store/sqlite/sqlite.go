// Package sqlite keeps cove's state store in one SQLite file, through the
// pure-Go modernc.org/sqlite driver (no cgo).
package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"

	"github.com/cove-dev/cove/internal/store"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Store is a store.Store kept in one SQLite database file. It is safe for
// concurrent use.
//
// The database runs in WAL mode with synchronous=FULL, so a write that has
// returned survives a crash of the process or the machine. All calls share
// one connection: writers queue in Go rather than meet SQLITE_BUSY, which at
// cove's write rates costs nothing.
//
// When the database cannot be used for now (another process holds its lock
// past the busy timeout, its files cannot be written, the disk is full),
// calls fail with errors wrapping store.ErrUnavailable that say which, and
// change nothing; once the cause is gone the same Store works again.
type Store struct {
	db     *sql.DB
	events groupCommit // RecordEvent's batches
}

var _ store.Store = (*Store)(nil)

// busyTimeoutMillis is how long a connection waits for a lock another
// process holds (a backup tool, the sqlite3 shell) before failing.
const busyTimeoutMillis = 5000

// Open opens the database at path, creating it (mode 0600) if it does not
// exist, and brings its schema up to date. The directory must exist. A
// database whose schema is newer than this binary's is refused.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlite: open: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, errorf("sqlite: open %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	if fi, err := os.Stat(dir); err != nil {
		return nil, errorf("sqlite: open %s: database directory: %w", path, err)
	} else if !fi.IsDir() {
		return nil, errorf("sqlite: open %s: database directory %s is not a directory", path, dir)
	}
	// Create the file before SQLite does, which would make it 0644. SQLite
	// gives the -wal and -shm files the database file's mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			err = pe.Err // the path is already in the message
		}
		return nil, errorf("sqlite: open %s: %w", path, err)
	}
	f.Close()

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, errorf("sqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &Store{db: db}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, errorf("sqlite: open %s: %w", path, err)
	}
	return s, nil
}

// dsn is the driver's name for the database file at abs, with the settings
// that every connection applies when it opens.
func dsn(abs string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMillis))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(ON)")
	// Transactions take the write lock at BEGIN, so two of them cannot
	// deadlock upgrading read locks.
	q.Set("_txlock", "immediate")
	// A file: URI, so that any byte of the path ('?', '#', '%') is escaped.
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	return u.String()
}

// init checks that the connection settings took and migrates the schema.
func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal_mode: %w", err)
	}
	if mode != "wal" {
		return fmt.Errorf("journal_mode is %q, want wal (does the file system support WAL?)", mode)
	}
	var sync, fk int
	if err := s.db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return fmt.Errorf("read synchronous: %w", err)
	}
	if sync != 2 { // FULL
		return fmt.Errorf("synchronous is %d, want 2 (FULL)", sync)
	}
	if err := s.db.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return fmt.Errorf("read foreign_keys: %w", err)
	}
	if fk != 1 {
		return fmt.Errorf("foreign_keys is %d, want 1", fk)
	}
	if err := migrate(ctx, s.db, migrations); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return errorf("sqlite: close: %w", err)
	}
	return nil
}

const sessionColumns = `id, state, image, memory_mib, cpus, env, accel,
	created_at, updated_at, error, boot_millis, handle,
	idle_timeout_ns, no_auto_wake, template, snapshot, template_version, owner, agent, allow,
	stored_manifest, stored_bytes, node, parent, from_checkpoint, token_gen, tokens_revoked_at, gen`

// CreateSession implements store.Store.
func (s *Store) CreateSession(ctx context.Context, sess *store.Session) error {
	args, err := sessionArgs(*sess)
	if err != nil {
		return errorf("sqlite: create session %s: %w", sess.ID, err)
	}
	// UpdateSession never writes token_gen or tokens_revoked_at
	// (BumpTokenGen and RevokeSessionTokens do); a create stores them.
	revoked, err := encodeTime(sess.TokensRevokedAt)
	if err != nil {
		return errorf("sqlite: create session %s: tokens_revoked_at: %w", sess.ID, err)
	}
	args = append(args, int64(sess.TokenGen), revoked, 1)
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if sess.IdempotencyKey != "" {
			res, err := tx.ExecContext(ctx, `INSERT INTO session_keys (owner, key, session_id, request_hash, created_at)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, key) DO NOTHING`,
				sess.Owner, sess.IdempotencyKey, sess.ID, sess.RequestHash, cmp.Or(sess.CreatedAt, time.Now()).UnixNano())
			if err := oneRow(res, err, store.ErrKeyUsed); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO sessions (`+sessionColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING`, args...)
		return oneRow(res, err, store.ErrExists)
	})
	if err != nil {
		return errorf("sqlite: create session %s: %w", sess.ID, err)
	}
	sess.Gen = 1
	return nil
}

// SessionKey implements store.Store.
func (s *Store) SessionKey(ctx context.Context, owner, key string) (store.SessionKey, error) {
	k := store.SessionKey{Owner: owner, Key: key}
	err := s.db.QueryRowContext(ctx, `SELECT session_id, request_hash FROM session_keys WHERE owner = ? AND key = ?`,
		owner, key).Scan(&k.SessionID, &k.RequestHash)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.SessionKey{}, errorf("sqlite: session key of %s: %w", owner, err)
	}
	return k, nil
}

// DeleteSessionKey implements store.Store.
func (s *Store) DeleteSessionKey(ctx context.Context, owner, key string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM session_keys WHERE owner = ? AND key = ?`, owner, key)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete session key of %s: %w", owner, err)
	}
	return nil
}

// ExpireSessionKeys implements store.Store.
func (s *Store) ExpireSessionKeys(ctx context.Context, before time.Time) (int, error) {
	at, err := encodeTime(before)
	if err != nil {
		return 0, errorf("sqlite: expire session keys: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM session_keys WHERE created_at < ?`, at)
	if err != nil {
		return 0, errorf("sqlite: expire session keys: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, errorf("sqlite: expire session keys: %w", err)
	}
	return int(n), nil
}

// UpdateSession implements store.Store.
func (s *Store) UpdateSession(ctx context.Context, sess *store.Session) error {
	args, err := sessionArgs(*sess)
	if err != nil {
		return errorf("sqlite: update session %s: %w", sess.ID, err)
	}
	// sessionArgs starts with the id; it goes last, in WHERE, with the
	// generation read.
	args = append(args[1:], sess.ID, sess.Gen)
	res, err := s.db.ExecContext(ctx, `UPDATE sessions SET
		state = ?, image = ?, memory_mib = ?, cpus = ?, env = ?, accel = ?,
		created_at = ?, updated_at = ?, error = ?, boot_millis = ?, handle = ?,
		idle_timeout_ns = ?, no_auto_wake = ?, template = ?, snapshot = ?, template_version = ?,
		owner = ?, agent = ?, allow = ?, stored_manifest = ?, stored_bytes = ?, node = ?, parent = ?, from_checkpoint = ?,
		gen = gen + 1
		WHERE id = ? AND gen = ?`, args...)
	if err := oneRow(res, err, nil); err != nil {
		return errorf("sqlite: update session %s: %w", sess.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errorf("sqlite: update session %s: %w", sess.ID, s.staleOrGone(ctx, "sessions", "id", sess.ID, sess.Gen))
	}
	sess.Gen++
	return nil
}

// staleOrGone says why an update of the row of table whose column col is
// key, at generation gen, changed nothing: ErrNotFound if there is no
// such row, else ErrConflict with the generation it has.
func (s *Store) staleOrGone(ctx context.Context, table, col, key string, gen int64) error {
	return staleOrGone(ctx, s.db, table, col, key, gen)
}

// querier is a *sql.DB or *sql.Tx.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func staleOrGone(ctx context.Context, db querier, table, col, key string, gen int64) error {
	var cur int64
	// table and col are constants of this package, never input.
	err := db.QueryRowContext(ctx, `SELECT gen FROM `+table+` WHERE `+col+` = ?`, key).Scan(&cur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.ErrNotFound
	case err != nil:
		return err
	}
	return fmt.Errorf("%w (generation %d, the copy's %d)", store.ErrConflict, cur, gen)
}

// GetSession implements store.Store.
func (s *Store) GetSession(ctx context.Context, id string) (store.Session, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = ?`, id)
	sess, err := scanSession(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Session{}, errorf("sqlite: get session %s: %w", id, err)
	}
	return sess, nil
}

// BumpTokenGen implements store.Store.
func (s *Store) BumpTokenGen(ctx context.Context, id string) (uint64, error) {
	var gen int64
	err := s.db.QueryRowContext(ctx, `UPDATE sessions SET token_gen = token_gen + 1
		WHERE id = ? RETURNING token_gen`, id).Scan(&gen)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return 0, errorf("sqlite: bump token generation of session %s: %w", id, err)
	}
	return uint64(gen), nil
}

// RevokeSessionTokens implements store.Store.
func (s *Store) RevokeSessionTokens(ctx context.Context, id string, at time.Time) (uint64, error) {
	if at.IsZero() {
		return 0, errorf("sqlite: revoke tokens of session %s: zero time", id)
	}
	revoked, err := encodeTime(at)
	if err != nil {
		return 0, errorf("sqlite: revoke tokens of session %s: %w", id, err)
	}
	var gen int64
	err = s.db.QueryRowContext(ctx, `UPDATE sessions SET token_gen = token_gen + 1,
		tokens_revoked_at = COALESCE(tokens_revoked_at, ?)
		WHERE id = ? RETURNING token_gen`, revoked, id).Scan(&gen)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return 0, errorf("sqlite: revoke tokens of session %s: %w", id, err)
	}
	return uint64(gen), nil
}

// ListSessions implements store.Store.
func (s *Store) ListSessions(ctx context.Context) ([]store.Session, error) {
	// NULL, the zero time, sorts first, as the zero time is earliest.
	return s.listSessions(ctx, `SELECT `+sessionColumns+` FROM sessions
		ORDER BY created_at, id`)
}

// ListSessionsAfter implements store.Store.
func (s *Store) ListSessionsAfter(ctx context.Context, after store.SessionCursor, limit int) ([]store.Session, error) {
	if limit <= 0 {
		return []store.Session{}, nil
	}
	const order = ` ORDER BY created_at, id LIMIT ?`
	switch {
	case after == store.SessionCursor{}:
		return s.listSessions(ctx, `SELECT `+sessionColumns+` FROM sessions`+order, limit)
	case after.CreatedAt.IsZero():
		// NULL (the zero time) sorts first: the rest of those, then all
		// the others.
		return s.listSessions(ctx, `SELECT `+sessionColumns+` FROM sessions
			WHERE created_at IS NULL AND id > ? OR created_at IS NOT NULL`+order, after.ID, limit)
	}
	created, err := encodeTime(after.CreatedAt)
	if err != nil {
		return nil, errorf("sqlite: list sessions: after: %w", err)
	}
	return s.listSessions(ctx, `SELECT `+sessionColumns+` FROM sessions
		WHERE (created_at, id) > (?, ?)`+order, created, after.ID, limit)
}

// listSessions runs query, which selects sessionColumns, with args.
func (s *Store) listSessions(ctx context.Context, query string, args ...any) ([]store.Session, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, errorf("sqlite: list sessions: %w", err)
	}
	defer rows.Close()
	var list []store.Session
	for rows.Next() {
		sess, err := scanSession(rows)
		if err != nil {
			return nil, errorf("sqlite: list sessions: %w", err)
		}
		list = append(list, sess)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list sessions: %w", err)
	}
	return list, nil
}

// SessionUsage implements store.Store.
func (s *Store) SessionUsage(ctx context.Context) ([]store.SessionUsage, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT node, state, COUNT(*), SUM(memory_mib), SUM(cpus) FROM sessions
		GROUP BY node, state ORDER BY node, state`)
	if err != nil {
		return nil, errorf("sqlite: session usage: %w", err)
	}
	defer rows.Close()
	out := []store.SessionUsage{}
	for rows.Next() {
		var u store.SessionUsage
		if err := rows.Scan(&u.Node, &u.State, &u.Sessions, &u.MemoryMiB, &u.CPUs); err != nil {
			return nil, errorf("sqlite: session usage: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: session usage: %w", err)
	}
	return out, nil
}

// DeleteSession implements store.Store.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id)
		if err := oneRow(res, err, store.ErrNotFound); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, `DELETE FROM checkpoints WHERE session_id = ?`, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM e2b_sandboxes WHERE session_id = ?`, id)
		return err
	})
	if err != nil {
		return errorf("sqlite: delete session %s: %w", id, err)
	}
	return nil
}

const imageColumns = `name, key, dir, size_bytes, created_at, build_millis, stored_manifest`

// PutImage implements store.Store.
func (s *Store) PutImage(ctx context.Context, im store.Image) error {
	created, err := encodeTime(im.CreatedAt)
	if err != nil {
		return errorf("sqlite: put image %s: created_at: %w", im.Name, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET
			key = excluded.key, dir = excluded.dir, size_bytes = excluded.size_bytes,
			created_at = excluded.created_at, build_millis = excluded.build_millis,
			stored_manifest = excluded.stored_manifest`,
		im.Name, im.Key, im.Dir, im.SizeBytes, created, im.BuildMillis, im.StoredManifest)
	if err != nil {
		return errorf("sqlite: put image %s: %w", im.Name, err)
	}
	return nil
}

// GetImage implements store.Store.
func (s *Store) GetImage(ctx context.Context, name string) (store.Image, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ?`, name)
	im, err := scanImage(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Image{}, errorf("sqlite: get image %s: %w", name, err)
	}
	return im, nil
}

// ListImages implements store.Store.
func (s *Store) ListImages(ctx context.Context) ([]store.Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY name`)
	if err != nil {
		return nil, errorf("sqlite: list images: %w", err)
	}
	defer rows.Close()
	var list []store.Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, errorf("sqlite: list images: %w", err)
		}
		list = append(list, im)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list images: %w", err)
	}
	return list, nil
}

// DeleteImage implements store.Store.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name)
	if err := oneRow(res, err, store.ErrNotFound); err != nil {
		return errorf("sqlite: delete image %s: %w", name, err)
	}
	return nil
}

const templateColumns = `name, state, image, memory_mib, cpus, env, setup, start,
	pool, error, created_at, updated_at, snapshot, repo, branch, repo_dir, version, commit_sha,
	owner, agent, allow, gen`

// CreateTemplate implements store.Store.
func (s *Store) CreateTemplate(ctx context.Context, t *store.Template) error {
	args, err := templateArgs(*t)
	if err != nil {
		return errorf("sqlite: create template %s: %w", t.Name, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO templates (`+templateColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
		ON CONFLICT (name) DO NOTHING`, args...)
	if err := oneRow(res, err, store.ErrExists); err != nil {
		return errorf("sqlite: create template %s: %w", t.Name, err)
	}
	t.Gen = 1
	return nil
}

// UpdateTemplate implements store.Store.
func (s *Store) UpdateTemplate(ctx context.Context, t *store.Template) error {
	args, err := templateArgs(*t)
	if err != nil {
		return errorf("sqlite: update template %s: %w", t.Name, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error { return updateTemplate(ctx, tx, args, t.Gen) })
	if err != nil {
		return errorf("sqlite: update template %s: %w", t.Name, err)
	}
	t.Gen++
	return nil
}

// execer is a *sql.DB or *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	querier
}

// updateTemplate replaces a template's row by args (templateArgs) if its
// generation is gen, advancing it; else it fails with ErrConflict or
// ErrNotFound.
func updateTemplate(ctx context.Context, db execer, args []any, gen int64) error {
	name := args[0].(string)
	// templateArgs starts with the name; it goes last, in WHERE, with the
	// generation read.
	args = append(args[1:], name, gen)
	res, err := db.ExecContext(ctx, `UPDATE templates SET
		state = ?, image = ?, memory_mib = ?, cpus = ?, env = ?, setup = ?, start = ?,
		pool = ?, error = ?, created_at = ?, updated_at = ?, snapshot = ?,
		repo = ?, branch = ?, repo_dir = ?, version = ?, commit_sha = ?,
		owner = ?, agent = ?, allow = ?, gen = gen + 1
		WHERE name = ? AND gen = ?`, args...)
	if err := oneRow(res, err, nil); err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return staleOrGone(ctx, db, "templates", "name", name, gen)
	}
	return nil
}

// GetTemplate implements store.Store.
func (s *Store) GetTemplate(ctx context.Context, name string) (store.Template, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+templateColumns+` FROM templates WHERE name = ?`, name)
	t, err := scanTemplate(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Template{}, errorf("sqlite: get template %s: %w", name, err)
	}
	return t, nil
}

// ListTemplates implements store.Store.
func (s *Store) ListTemplates(ctx context.Context) ([]store.Template, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+templateColumns+` FROM templates ORDER BY name`)
	if err != nil {
		return nil, errorf("sqlite: list templates: %w", err)
	}
	defer rows.Close()
	var list []store.Template
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			return nil, errorf("sqlite: list templates: %w", err)
		}
		list = append(list, t)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf("sqlite: list templates: %w", err)
	}
	return list, nil
}

// DeleteTemplate implements store.Store.
func (s *Store) DeleteTemplate(ctx context.Context, name string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// Its versions go with it (ON DELETE CASCADE); its secrets here.
		res, err := tx.ExecContext(ctx, `DELETE FROM templates WHERE name = ?`, name)
		if err := oneRow(res, err, store.ErrNotFound); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM secrets WHERE owner_kind = ? AND owner = ?`, store.SecretOwnerTemplate, name)
		return err
	})
	if err != nil {
		return errorf("sqlite: delete template %s: %w", name, err)
	}
	return nil
}

// oneRow checks the result of a statement that should change one row: it
// returns err if the statement failed, ifNone if no row changed, and nil if
// exactly one did.
func oneRow(res sql.Result, err, ifNone error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	switch {
	case err != nil:
		return fmt.Errorf("rows affected: %w", err)
	case n == 0:
		return ifNone
	case n > 1:
		return fmt.Errorf("%d rows changed, want 1", n)
	}
	return nil
}

// sessionArgs are sess's column values, in sessionColumns order, but for
// token_gen and tokens_revoked_at, which only CreateSession,
// BumpTokenGen and RevokeSessionTokens write.
func sessionArgs(sess store.Session) ([]any, error) {
	env, err := encodeEnv(sess.Env)
	if err != nil {
		return nil, fmt.Errorf("env: %w", err)
	}
	created, err := encodeTime(sess.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("created_at: %w", err)
	}
	updated, err := encodeTime(sess.UpdatedAt)
	if err != nil {
		return nil, fmt.Errorf("updated_at: %w", err)
	}
	allow, err := encodeStrings("rule", sess.Allow)
	if err != nil {
		return nil, fmt.Errorf("allow: %w", err)
	}
	return []any{
		sess.ID, sess.State, sess.Image, sess.MemoryMiB, sess.CPUs, env, sess.Accel,
		created, updated, sess.Error, sess.BootMillis, encodeBlob(sess.Handle),
		int64(sess.IdleTimeout), sess.NoAutoWake, sess.Template, encodeBlob(sess.Snapshot), sess.TemplateVersion,
		sess.Owner, sess.Agent, allow, sess.StoredManifest, sess.StoredBytes, sess.Node, sess.Parent, sess.FromCheckpoint,
	}, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

func scanSession(sc scanner) (store.Session, error) {
	var (
		sess             store.Session
		env              sql.NullString
		created, updated sql.NullInt64
		idle, gen        int64
		revoked          sql.NullInt64
		allow            sql.NullString
	)
	err := sc.Scan(&sess.ID, &sess.State, &sess.Image, &sess.MemoryMiB, &sess.CPUs, &env,
		&sess.Accel, &created, &updated, &sess.Error, &sess.BootMillis, &sess.Handle,
		&idle, &sess.NoAutoWake, &sess.Template, &sess.Snapshot, &sess.TemplateVersion,
		&sess.Owner, &sess.Agent, &allow, &sess.StoredManifest, &sess.StoredBytes, &sess.Node, &sess.Parent, &sess.FromCheckpoint, &gen, &revoked, &sess.Gen)
	if err != nil {
		return store.Session{}, err
	}
	sess.TokenGen = uint64(gen)
	sess.TokensRevokedAt = decodeTime(revoked)
	if sess.Allow, err = decodeStrings(allow); err != nil {
		return store.Session{}, fmt.Errorf("session %s: allow: %w", sess.ID, err)
	}
	if sess.Env, err = decodeEnv(env); err != nil {
		return store.Session{}, fmt.Errorf("session %s: env: %w", sess.ID, err)
	}
	sess.CreatedAt = decodeTime(created)
	sess.UpdatedAt = decodeTime(updated)
	sess.IdleTimeout = time.Duration(idle)
	if len(sess.Handle) == 0 {
		sess.Handle = nil
	}
	if len(sess.Snapshot) == 0 {
		sess.Snapshot = nil
	}
	return sess, nil
}

// templateArgs are t's column values, in templateColumns order.
func templateArgs(t store.Template) ([]any, error) {
	env, err := encodeEnv(t.Env)
	if err != nil {
		return nil, fmt.Errorf("env: %w", err)
	}
	setup, err := encodeStrings("command", t.Setup)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	created, err := encodeTime(t.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("created_at: %w", err)
	}
	updated, err := encodeTime(t.UpdatedAt)
	if err != nil {
		return nil, fmt.Errorf("updated_at: %w", err)
	}
	allow, err := encodeStrings("rule", t.Allow)
	if err != nil {
		return nil, fmt.Errorf("allow: %w", err)
	}
	return []any{
		t.Name, t.State, t.Image, t.MemoryMiB, t.CPUs, env, setup, t.Start,
		t.Pool, t.Error, created, updated, encodeBlob(t.Snapshot),
		t.Repo, t.Branch, t.RepoDir, t.Version, t.Commit,
		t.Owner, t.Agent, allow,
	}, nil
}

func scanTemplate(sc scanner) (store.Template, error) {
	var (
		t                 store.Template
		env, setup, allow sql.NullString
		created, updated  sql.NullInt64
	)
	err := sc.Scan(&t.Name, &t.State, &t.Image, &t.MemoryMiB, &t.CPUs, &env, &setup, &t.Start,
		&t.Pool, &t.Error, &created, &updated, &t.Snapshot,
		&t.Repo, &t.Branch, &t.RepoDir, &t.Version, &t.Commit,
		&t.Owner, &t.Agent, &allow, &t.Gen)
	if err != nil {
		return store.Template{}, err
	}
	if t.Env, err = decodeEnv(env); err != nil {
		return store.Template{}, fmt.Errorf("template %s: env: %w", t.Name, err)
	}
	if t.Setup, err = decodeStrings(setup); err != nil {
		return store.Template{}, fmt.Errorf("template %s: setup: %w", t.Name, err)
	}
	if t.Allow, err = decodeStrings(allow); err != nil {
		return store.Template{}, fmt.Errorf("template %s: allow: %w", t.Name, err)
	}
	t.CreatedAt = decodeTime(created)
	t.UpdatedAt = decodeTime(updated)
	if len(t.Snapshot) == 0 {
		t.Snapshot = nil
	}
	return t, nil
}

func scanImage(sc scanner) (store.Image, error) {
	var (
		im      store.Image
		created sql.NullInt64
	)
	if err := sc.Scan(&im.Name, &im.Key, &im.Dir, &im.SizeBytes, &created, &im.BuildMillis, &im.StoredManifest); err != nil {
		return store.Image{}, err
	}
	im.CreatedAt = decodeTime(created)
	return im, nil
}

// The times that unix nanoseconds in an int64 can hold.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// encodeTime is t as unix nanoseconds, or NULL for the zero time.
func encodeTime(t time.Time) (any, error) {
	if t.IsZero() {
		return nil, nil
	}
	if t.Before(minTime) || t.After(maxTime) {
		return nil, fmt.Errorf("time %v is outside the years 1678 to 2262 that unix nanoseconds hold", t)
	}
	return t.UnixNano(), nil
}

// decodeTime undoes encodeTime, giving UTC.
func decodeTime(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// encodeEnv is env as a JSON object, or NULL if it is empty. JSON would
// silently replace bytes that are not UTF-8, so those are refused.
func encodeEnv(env map[string]string) (any, error) {
	if len(env) == 0 {
		return nil, nil
	}
	for k, v := range env {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("variable %q is not valid UTF-8", k)
		}
	}
	b, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// decodeEnv undoes encodeEnv.
func decodeEnv(s sql.NullString) (map[string]string, error) {
	if !s.Valid {
		return nil, nil
	}
	var env map[string]string
	if err := json.Unmarshal([]byte(s.String), &env); err != nil {
		return nil, err
	}
	return env, nil
}

// encodeStrings is ss as a JSON array, or NULL if it is empty. As with
// encodeEnv, strings that are not UTF-8 are refused; what names one in
// the error ("command", "expression", "scope").
func encodeStrings(what string, ss []string) (any, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	for i, v := range ss {
		if !utf8.ValidString(v) {
			return nil, fmt.Errorf("%s %d is not valid UTF-8", what, i)
		}
	}
	b, err := json.Marshal(ss)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// decodeStrings undoes encodeStrings.
func decodeStrings(s sql.NullString) ([]string, error) {
	if !s.Valid {
		return nil, nil
	}
	var ss []string
	if err := json.Unmarshal([]byte(s.String), &ss); err != nil {
		return nil, err
	}
	return ss, nil
}

// encodeBlob is b, or NULL if it is empty.
func encodeBlob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}
