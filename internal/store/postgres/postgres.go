// Package postgres keeps cove's state store in a PostgreSQL database,
// through pgx, so that several servers can share it.
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/store"
)

// Store is a store.Store kept in a PostgreSQL database. It is safe for
// concurrent use, and so are several Stores, in one process or in many,
// on one database: where the SQLite store relies on its single writer,
// this one makes each change one statement that locks the rows it
// changes (UPDATE … RETURNING, DELETE claiming a row) or a transaction
// that locks what it reads before it writes (SELECT … FOR SHARE).
//
// A write that has returned is committed, and as durable as the server
// makes commits (synchronous_commit).
//
// When the server cannot be reached, goes away or is restarted, calls fail
// with errors wrapping store.ErrUnavailable that say why, and the pool
// drops its connections; once the server is back the next call connects
// again. A connection that breaks during a COMMIT leaves unknown whether
// that write happened: the error says the connection broke, as for any
// client of a remote database.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// connectTimeout bounds each attempt to connect to the server, unless the
// URL sets connect_timeout.
const connectTimeout = 10 * time.Second

// deadPeer is how long a connection to the database server may go with
// what it sent unacknowledged, or its keepalive probes unanswered,
// before it fails: a partition from the server (or a host gone without
// a word) fails the queries it holds in seconds, and the pool connects
// afresh once the network is back, rather than waiting on TCP's
// retransmissions for minutes.
const deadPeer = 30 * time.Second

// dialer is the pool's dialer: TCP keepalive probes every tenth of
// deadPeer once idle that long, and TCP_USER_TIMEOUT of deadPeer.
func dialer() *net.Dialer {
	return &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: deadPeer / 10, Interval: deadPeer / 10, Count: 10},
		Control: func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil // a unix socket: no peer to lose
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(deadPeer.Milliseconds()))
			}); err != nil {
				return err
			}
			return serr
		},
	}
}

// Open connects to the database at dbURL (postgres://user:password@host:port/db?…
// or libpq's keyword=value form; PG* environment variables fill in what it
// leaves out) and brings its schema up to date. Servers opening one
// database at once are safe: migrations take a lock. A database whose
// schema is newer than this binary's is refused.
//
// Errors say what was tried (user, host, port, database), never the
// password, and why it failed: a bad URL, a server that cannot be reached,
// a wrong password, a missing database.
func Open(ctx context.Context, dbURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, badURL(err, dbURL)
	}
	where := describe(cfg.ConnConfig.Config)
	fail := func(err error) (*Store, error) {
		return nil, redact(fmt.Errorf("postgres: open %s: %w", where, err), dbURL, cfg.ConnConfig.Password)
	}
	if _, set := cfg.ConnConfig.RuntimeParams["connect_timeout"]; !set && !strings.Contains(dbURL, "connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	cfg.ConnConfig.DialFunc = dialer().DialContext
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	s := &Store{pool: pool}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return fail(explain(err))
	}
	if err := migrate(ctx, pool, migrations); err != nil {
		pool.Close()
		return fail(fmt.Errorf("migrate: %w", s.classify(err)))
	}
	return s, nil
}

// describe names the database cfg connects to: user, host, port and
// database, never the password.
func describe(cfg pgconn.Config) string {
	host := cfg.Host
	if strings.HasPrefix(host, "/") {
		host = "unix:" + host
	}
	return fmt.Sprintf("database %q on %s:%d as user %q", cfg.Database, host, cfg.Port, cfg.User)
}

// explain adds, to a failure to connect, what it most likely means. One
// that may pass by itself (no server there yet, one starting) wraps
// store.ErrUnavailable; a wrong password or a missing database does not.
func explain(err error) error {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pe.Code {
		case "28P01":
			return fmt.Errorf("wrong password: %w", err)
		case "28000":
			return fmt.Errorf("the server refuses this user (pg_hba.conf): %w", err)
		case "3D000":
			return fmt.Errorf("the database does not exist (create it, e.g. createdb): %w", err)
		}
		if why := unavailableCode(pe.Code); why != "" {
			return fmt.Errorf("%w: %s: %w", store.ErrUnavailable, why, err)
		}
		return err
	}
	if isConnect(err) {
		return fmt.Errorf("%w: cannot reach the server (is it running, and listening there?): %w", store.ErrUnavailable, err)
	}
	return err
}

// redactedError is err with its text cleaned of a password: errors.Is and
// As still see err.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact returns err with every appearance of password, and of the URL's
// password, replaced by xxxxx in its text.
func redact(err error, dbURL, password string) error {
	msg := err.Error()
	secrets := []string{password}
	if u, perr := url.Parse(dbURL); perr == nil && u.User != nil {
		p, _ := u.User.Password()
		secrets = append(secrets, p, url.QueryEscape(p), url.PathEscape(p))
	}
	for _, p := range secrets {
		if p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return &redactedError{msg: msg, err: err}
}

// badURL is the error for dbURL, which pgx could not parse with err. Its
// text leaves out the URL (pgx's quotes it, redacted as best it can) and
// whatever in pgx's reason may be part of the password.
func badURL(err error, dbURL string) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "cannot parse `") {
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = msg[i+len("`: "):]
		}
	}
	for _, p := range passwordGuesses(dbURL) {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return &redactedError{msg: "postgres: open: bad database URL: " + msg, err: err}
}

// passwordGuesses returns what, in a database URL that does not parse,
// may be its password or a part of one, longest first: the URL's user
// information after its first ':' up to its last '@', or what follows
// password= in the keyword=value form, and their pieces.
func passwordGuesses(dbURL string) []string {
	var pw string
	if _, rest, ok := strings.Cut(dbURL, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			_, pw, _ = strings.Cut(rest[:at], ":")
		}
	} else {
		_, pw, _ = strings.Cut(dbURL, "password=")
	}
	guesses := []string{pw}
	for _, f := range strings.FieldsFunc(pw, func(r rune) bool { return strings.ContainsRune("@:/ '\"", r) }) {
		if len(f) >= 3 {
			guesses = append(guesses, f)
		}
	}
	slices.SortFunc(guesses, func(a, b string) int { return len(b) - len(a) })
	return slices.DeleteFunc(guesses, func(g string) bool { return g == "" })
}

// Close closes the pool's connections.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// querier is a *pgxpool.Pool or a pgx.Tx.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// exec runs a statement outside a transaction; a done ctx changes nothing.
func (s *Store) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := s.again(ctx, func() (err error) {
		tag, err = s.pool.Exec(ctx, sql, args...)
		return err
	})
	return tag, err
}

// queryRow runs a query of one row outside a transaction, when its Scan
// is called.
func (s *Store) queryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return againRow{s, ctx, sql, args}
}

// againRow is a pgx.Row whose Scan runs its query, through again.
type againRow struct {
	s    *Store
	ctx  context.Context
	sql  string
	args []any
}

func (r againRow) Scan(dest ...any) error {
	return r.s.again(r.ctx, func() error { return r.s.pool.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...) })
}

// query runs a query outside a transaction, through again, and scans
// each row with scan.
func query[T any](ctx context.Context, s *Store, scan func(pgx.Row) (T, error), sql string, args ...any) ([]T, error) {
	var out []T
	err := s.again(ctx, func() (err error) {
		out, err = list(ctx, s.pool, scan, sql, args...)
		return err
	})
	return out, err
}

// list runs a query and scans each row with scan.
func list[T any](ctx context.Context, q querier, scan func(pgx.Row) (T, error), sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// again runs f, a call outside a transaction, unless ctx is done; if f
// fails on a connection that the server had ended, it runs f once more
// on a new one (see reconnect).
func (s *Store) again(ctx context.Context, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := f()
	if s.reconnect(ctx, err) {
		err = f()
	}
	return err
}

// reconnect reports whether a call that failed with err is to be made
// again on a new connection, and if so drops the pool's connections.
//
// That is so when the statement never ran: it was not sent
// (pgconn.SafeToRetry), or the server's answer was that it had ended
// the session (admin_shutdown, crash_shutdown: a fast shutdown or a
// restart, which abort every open transaction, or a server still
// starting). A pooled connection to a server that has restarted since
// its last use fails so; the other pooled ones are as stale, hence the
// reset. A second failure is the call's.
func (s *Store) reconnect(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	pe, ok := errors.AsType[*pgconn.PgError](err)
	if !pgconn.SafeToRetry(err) && !(ok && (pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03")) {
		return false
	}
	s.pool.Reset()
	return true
}

// txRetries is how many times inTx runs a transaction that the server
// aborted for a conflict with another (a deadlock, a serialization
// failure) before it gives up.
const txRetries = 5

// inTx runs f in a transaction, committing if it returns nil and rolling
// back otherwise. A transaction the server aborted for a conflict with
// another is run again, from the start, and so is one that failed as
// again's calls are made again: f must do nothing outside tx.
func (s *Store) inTx(ctx context.Context, f func(tx pgx.Tx) error) error {
	var err error
	reconnected := false
	for range txRetries {
		if err = ctx.Err(); err != nil {
			return err
		}
		err = s.tryTx(ctx, f)
		if pe, ok := errors.AsType[*pgconn.PgError](err); ok && (pe.Code == "40001" || pe.Code == "40P01") {
			continue
		}
		if !reconnected && s.reconnect(ctx, err) {
			reconnected = true
			continue
		}
		return err
	}
	return err
}

func (s *Store) tryTx(ctx context.Context, f func(tx pgx.Tx) error) (err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// oneRow checks the result of a statement that should change one row: it
// returns err if the statement failed, ifNone if no row changed, and nil if
// exactly one did.
func oneRow(tag pgconn.CommandTag, err, ifNone error) error {
	switch {
	case err != nil:
		return err
	case tag.RowsAffected() == 0:
		return ifNone
	case tag.RowsAffected() > 1:
		return fmt.Errorf("%d rows changed, want 1", tag.RowsAffected())
	}
	return nil
}

// notFound turns pgx.ErrNoRows into store.ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	return err
}

const sessionColumns = `id, state, image, memory_mib, cpus, env, accel,
	created_at, updated_at, error, boot_millis, handle,
	idle_timeout_ns, no_auto_wake, template, snapshot, template_version, owner, agent, allow,
	stored_manifest, stored_bytes, node, parent, from_checkpoint, token_gen, tokens_revoked_at, gen`

// CreateSession implements store.Store.
func (s *Store) CreateSession(ctx context.Context, sess *store.Session) error {
	args, err := sessionArgs(*sess)
	if err != nil {
		return s.errorf("postgres: create session %s: %w", sess.ID, err)
	}
	// UpdateSession never writes token_gen or tokens_revoked_at
	// (BumpTokenGen and RevokeSessionTokens do); a create stores them.
	revoked, err := encodeTime(sess.TokensRevokedAt)
	if err != nil {
		return s.errorf("postgres: create session %s: tokens_revoked_at: %w", sess.ID, err)
	}
	args = append(args, int64(sess.TokenGen), revoked)
	insert := `INSERT INTO sessions (` + sessionColumns + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, 1)
		ON CONFLICT (id) DO NOTHING`
	if sess.IdempotencyKey == "" {
		tag, err := s.exec(ctx, insert, args...)
		err = oneRow(tag, err, store.ErrExists)
		if err != nil {
			return s.errorf("postgres: create session %s: %w", sess.ID, err)
		}
	} else {
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `INSERT INTO session_keys (owner, key, session_id, request_hash, created_at)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, key) DO NOTHING`,
				sess.Owner, sess.IdempotencyKey, sess.ID, sess.RequestHash, cmp.Or(sess.CreatedAt, time.Now()).UnixNano())
			if err := oneRow(tag, err, store.ErrKeyUsed); err != nil {
				return err
			}
			tag, err = tx.Exec(ctx, insert, args...)
			return oneRow(tag, err, store.ErrExists)
		})
		if err != nil {
			return s.errorf("postgres: create session %s: %w", sess.ID, err)
		}
	}
	sess.Gen = 1
	return nil
}

// SessionKey implements store.Store.
func (s *Store) SessionKey(ctx context.Context, owner, key string) (store.SessionKey, error) {
	k := store.SessionKey{Owner: owner, Key: key}
	err := s.queryRow(ctx, `SELECT session_id, request_hash FROM session_keys WHERE owner = $1 AND key = $2`,
		owner, key).Scan(&k.SessionID, &k.RequestHash)
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.SessionKey{}, s.errorf("postgres: session key of %s: %w", owner, err)
	}
	return k, nil
}

// DeleteSessionKey implements store.Store.
func (s *Store) DeleteSessionKey(ctx context.Context, owner, key string) error {
	tag, err := s.exec(ctx, `DELETE FROM session_keys WHERE owner = $1 AND key = $2`, owner, key)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete session key of %s: %w", owner, err)
	}
	return nil
}

// ExpireSessionKeys implements store.Store.
func (s *Store) ExpireSessionKeys(ctx context.Context, before time.Time) (int, error) {
	at, err := encodeTime(before)
	if err != nil {
		return 0, s.errorf("postgres: expire session keys: %w", err)
	}
	tag, err := s.exec(ctx, `DELETE FROM session_keys WHERE created_at < $1`, at)
	if err != nil {
		return 0, s.errorf("postgres: expire session keys: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// UpdateSession implements store.Store. The one UPDATE checks and
// advances the generation under the row's lock: of two servers updating
// from the same read, the second waits for the first's commit, then
// finds the generation moved on and changes nothing.
func (s *Store) UpdateSession(ctx context.Context, sess *store.Session) error {
	args, err := sessionArgs(*sess)
	if err != nil {
		return s.errorf("postgres: update session %s: %w", sess.ID, err)
	}
	args = append(args, sess.Gen)
	tag, err := s.exec(ctx, `UPDATE sessions SET
		state = $2, image = $3, memory_mib = $4, cpus = $5, env = $6, accel = $7,
		created_at = $8, updated_at = $9, error = $10, boot_millis = $11, handle = $12,
		idle_timeout_ns = $13, no_auto_wake = $14, template = $15, snapshot = $16, template_version = $17,
		owner = $18, agent = $19, allow = $20, stored_manifest = $21, stored_bytes = $22, node = $23, parent = $24, from_checkpoint = $25,
		gen = gen + 1
		WHERE id = $1 AND gen = $26`, args...)
	if err := oneRow(tag, err, nil); err != nil {
		return s.errorf("postgres: update session %s: %w", sess.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return s.errorf("postgres: update session %s: %w", sess.ID, s.staleOrGone(ctx, s.pool, "sessions", "id", sess.ID, sess.Gen))
	}
	sess.Gen++
	return nil
}

// staleOrGone says why an update of the row of table whose column col is
// key, at generation gen, changed nothing: ErrNotFound if there is no
// such row, else ErrConflict with the generation it has.
func (s *Store) staleOrGone(ctx context.Context, q querier, table, col, key string, gen int64) error {
	var cur int64
	// table and col are constants of this package, never input.
	err := q.QueryRow(ctx, `SELECT gen FROM `+table+` WHERE `+col+` = $1`, key).Scan(&cur)
	if err != nil {
		return notFound(err)
	}
	return fmt.Errorf("%w (generation %d, the copy's %d)", store.ErrConflict, cur, gen)
}

// GetSession implements store.Store.
func (s *Store) GetSession(ctx context.Context, id string) (store.Session, error) {
	sess, err := scanSession(s.queryRow(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = $1`, id))
	if err != nil {
		return store.Session{}, s.errorf("postgres: get session %s: %w", id, notFound(err))
	}
	return sess, nil
}

// BumpTokenGen implements store.Store. The one UPDATE locks the row: two
// servers bumping at once each get a generation of their own.
func (s *Store) BumpTokenGen(ctx context.Context, id string) (uint64, error) {
	var gen int64
	err := s.queryRow(ctx, `UPDATE sessions SET token_gen = token_gen + 1
		WHERE id = $1 RETURNING token_gen`, id).Scan(&gen)
	if err != nil {
		return 0, s.errorf("postgres: bump token generation of session %s: %w", id, notFound(err))
	}
	return uint64(gen), nil
}

// RevokeSessionTokens implements store.Store.
func (s *Store) RevokeSessionTokens(ctx context.Context, id string, at time.Time) (uint64, error) {
	if at.IsZero() {
		return 0, s.errorf("postgres: revoke tokens of session %s: zero time", id)
	}
	revoked, err := encodeTime(at)
	if err != nil {
		return 0, s.errorf("postgres: revoke tokens of session %s: %w", id, err)
	}
	var gen int64
	err = s.queryRow(ctx, `UPDATE sessions SET token_gen = token_gen + 1,
		tokens_revoked_at = COALESCE(tokens_revoked_at, $2)
		WHERE id = $1 RETURNING token_gen`, id, revoked).Scan(&gen)
	if err != nil {
		return 0, s.errorf("postgres: revoke tokens of session %s: %w", id, notFound(err))
	}
	return uint64(gen), nil
}

// ListSessions implements store.Store.
func (s *Store) ListSessions(ctx context.Context) ([]store.Session, error) {
	// NULL, the zero time, sorts first, as the zero time is earliest.
	out, err := query(ctx, s, scanSession, `SELECT `+sessionColumns+` FROM sessions
		ORDER BY created_at NULLS FIRST, id`)
	if err != nil {
		return nil, s.errorf("postgres: list sessions: %w", err)
	}
	return out, nil
}

// ListSessionsAfter implements store.Store.
func (s *Store) ListSessionsAfter(ctx context.Context, after store.SessionCursor, limit int) ([]store.Session, error) {
	if limit <= 0 {
		return []store.Session{}, nil
	}
	const order = ` ORDER BY created_at NULLS FIRST, id LIMIT `
	var out []store.Session
	var err error
	switch {
	case after == store.SessionCursor{}:
		out, err = query(ctx, s, scanSession, `SELECT `+sessionColumns+` FROM sessions`+order+`$1`, limit)
	case after.CreatedAt.IsZero():
		// NULL (the zero time) sorts first: the rest of those, then all
		// the others.
		out, err = query(ctx, s, scanSession, `SELECT `+sessionColumns+` FROM sessions
			WHERE created_at IS NULL AND id > $1 OR created_at IS NOT NULL`+order+`$2`, after.ID, limit)
	default:
		var created any
		if created, err = encodeTime(after.CreatedAt); err != nil {
			return nil, s.errorf("postgres: list sessions: after: %w", err)
		}
		out, err = query(ctx, s, scanSession, `SELECT `+sessionColumns+` FROM sessions
			WHERE (created_at, id) > ($1, $2)`+order+`$3`, created, after.ID, limit)
	}
	if err != nil {
		return nil, s.errorf("postgres: list sessions: %w", err)
	}
	return out, nil
}

// SessionUsage implements store.Store.
func (s *Store) SessionUsage(ctx context.Context) ([]store.SessionUsage, error) {
	out, err := query(ctx, s, func(r pgx.Row) (u store.SessionUsage, err error) {
		err = r.Scan(&u.Node, &u.State, &u.Sessions, &u.MemoryMiB, &u.CPUs)
		return u, err
	}, `SELECT node, state, COUNT(*), SUM(memory_mib)::BIGINT, SUM(cpus)::BIGINT FROM sessions
		GROUP BY node, state ORDER BY node, state`)
	if err != nil {
		return nil, s.errorf("postgres: session usage: %w", err)
	}
	if out == nil {
		out = []store.SessionUsage{}
	}
	return out, nil
}

// DeleteSession implements store.Store.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	tag, err := s.exec(ctx, `DELETE FROM sessions WHERE id = $1`, id)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete session %s: %w", id, err)
	}
	return nil
}

const imageColumns = `name, key, dir, size_bytes, created_at, build_millis, stored_manifest`

// PutImage implements store.Store.
func (s *Store) PutImage(ctx context.Context, im store.Image) error {
	created, err := encodeTime(im.CreatedAt)
	if err != nil {
		return s.errorf("postgres: put image %s: created_at: %w", im.Name, err)
	}
	_, err = s.exec(ctx, `INSERT INTO images (`+imageColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (name) DO UPDATE SET
			key = excluded.key, dir = excluded.dir, size_bytes = excluded.size_bytes,
			created_at = excluded.created_at, build_millis = excluded.build_millis,
			stored_manifest = excluded.stored_manifest`,
		im.Name, im.Key, im.Dir, im.SizeBytes, created, im.BuildMillis, im.StoredManifest)
	if err != nil {
		return s.errorf("postgres: put image %s: %w", im.Name, err)
	}
	return nil
}

// GetImage implements store.Store.
func (s *Store) GetImage(ctx context.Context, name string) (store.Image, error) {
	im, err := scanImage(s.queryRow(ctx, `SELECT `+imageColumns+` FROM images WHERE name = $1`, name))
	if err != nil {
		return store.Image{}, s.errorf("postgres: get image %s: %w", name, notFound(err))
	}
	return im, nil
}

// ListImages implements store.Store.
func (s *Store) ListImages(ctx context.Context) ([]store.Image, error) {
	out, err := query(ctx, s, scanImage, `SELECT `+imageColumns+` FROM images ORDER BY name`)
	if err != nil {
		return nil, s.errorf("postgres: list images: %w", err)
	}
	return out, nil
}

// DeleteImage implements store.Store.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	tag, err := s.exec(ctx, `DELETE FROM images WHERE name = $1`, name)
	if err := oneRow(tag, err, store.ErrNotFound); err != nil {
		return s.errorf("postgres: delete image %s: %w", name, err)
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
		return s.errorf("postgres: create template %s: %w", t.Name, err)
	}
	tag, err := s.exec(ctx, `INSERT INTO templates (`+templateColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, 1)
		ON CONFLICT (name) DO NOTHING`, args...)
	if err := oneRow(tag, err, store.ErrExists); err != nil {
		return s.errorf("postgres: create template %s: %w", t.Name, err)
	}
	t.Gen = 1
	return nil
}

// UpdateTemplate implements store.Store.
func (s *Store) UpdateTemplate(ctx context.Context, t *store.Template) error {
	args, err := templateArgs(*t)
	if err != nil {
		return s.errorf("postgres: update template %s: %w", t.Name, err)
	}
	if err := s.inTx(ctx, func(tx pgx.Tx) error { return updateTemplate(ctx, tx, args, t.Gen) }); err != nil {
		return s.errorf("postgres: update template %s: %w", t.Name, err)
	}
	t.Gen++
	return nil
}

// updateTemplate replaces a template's row by args (templateArgs) if its
// generation is gen, advancing it; else it fails with ErrConflict or
// ErrNotFound.
func updateTemplate(ctx context.Context, q querier, args []any, gen int64) error {
	args = append(args, gen)
	tag, err := q.Exec(ctx, `UPDATE templates SET
		state = $2, image = $3, memory_mib = $4, cpus = $5, env = $6, setup = $7, start = $8,
		pool = $9, error = $10, created_at = $11, updated_at = $12, snapshot = $13,
		repo = $14, branch = $15, repo_dir = $16, version = $17, commit_sha = $18,
		owner = $19, agent = $20, allow = $21, gen = gen + 1
		WHERE name = $1 AND gen = $22`, args...)
	if err := oneRow(tag, err, nil); err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		var cur int64
		if err := q.QueryRow(ctx, `SELECT gen FROM templates WHERE name = $1`, args[0]).Scan(&cur); err != nil {
			return notFound(err)
		}
		return fmt.Errorf("%w (generation %d, the copy's %d)", store.ErrConflict, cur, gen)
	}
	return nil
}

// GetTemplate implements store.Store.
func (s *Store) GetTemplate(ctx context.Context, name string) (store.Template, error) {
	t, err := scanTemplate(s.queryRow(ctx, `SELECT `+templateColumns+` FROM templates WHERE name = $1`, name))
	if err != nil {
		return store.Template{}, s.errorf("postgres: get template %s: %w", name, notFound(err))
	}
	return t, nil
}

// ListTemplates implements store.Store.
func (s *Store) ListTemplates(ctx context.Context) ([]store.Template, error) {
	out, err := query(ctx, s, scanTemplate, `SELECT `+templateColumns+` FROM templates ORDER BY name`)
	if err != nil {
		return nil, s.errorf("postgres: list templates: %w", err)
	}
	return out, nil
}

// DeleteTemplate implements store.Store.
func (s *Store) DeleteTemplate(ctx context.Context, name string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// Its versions go with it (ON DELETE CASCADE); its secrets here.
		tag, err := tx.Exec(ctx, `DELETE FROM templates WHERE name = $1`, name)
		if err := oneRow(tag, err, store.ErrNotFound); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM secrets WHERE owner_kind = $1 AND owner = $2`, store.SecretOwnerTemplate, name)
		return err
	})
	if err != nil {
		return s.errorf("postgres: delete template %s: %w", name, err)
	}
	return nil
}
