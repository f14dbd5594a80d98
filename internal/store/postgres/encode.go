package postgres

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

// The encodings below are the SQLite store's (see migrations).

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
func decodeTime(n *int64) time.Time {
	if n == nil {
		return time.Time{}
	}
	return time.Unix(0, *n).UTC()
}

// encodeMap is m as a JSON object, or NULL if it is empty. JSON would
// silently replace bytes that are not UTF-8, so those are refused; what
// names a key in the error ("variable", "field").
func encodeMap(what string, m map[string]string) (any, error) {
	if len(m) == 0 {
		return nil, nil
	}
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("%s %q is not valid UTF-8", what, k)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// decodeMap undoes encodeMap.
func decodeMap(s *string) (map[string]string, error) {
	if s == nil {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(*s), &m); err != nil {
		return nil, err
	}
	return m, nil
}

// encodeStrings is ss as a JSON array, or NULL if it is empty. As with
// encodeMap, strings that are not UTF-8 are refused; what names one in
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
func decodeStrings(s *string) ([]string, error) {
	if s == nil {
		return nil, nil
	}
	var ss []string
	if err := json.Unmarshal([]byte(*s), &ss); err != nil {
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

// errorText is s, an Error field, as PostgreSQL's text can hold it. An
// error may quote what a guest printed, and text holds neither NUL nor
// bytes that are not UTF-8 (SQLite keeps them): those become U+FFFD, as
// the API's JSON shows them anyway, rather than fail the write of, say,
// a session's failure. Any other s is kept exactly.
func errorText(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// nullString is s, or NULL if it is empty.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// sessionArgs are sess's column values, in sessionColumns order, but for
// token_gen and tokens_revoked_at, which only CreateSession,
// BumpTokenGen and RevokeSessionTokens write.
func sessionArgs(sess store.Session) ([]any, error) {
	env, err := encodeMap("variable", sess.Env)
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
		created, updated, errorText(sess.Error), sess.BootMillis, encodeBlob(sess.Handle),
		int64(sess.IdleTimeout), sess.NoAutoWake, sess.Template, encodeBlob(sess.Snapshot), sess.TemplateVersion,
		sess.Owner, sess.Agent, allow, sess.StoredManifest, sess.StoredBytes, sess.Node, sess.Parent, sess.FromCheckpoint,
	}, nil
}

func scanSession(sc pgx.Row) (store.Session, error) {
	var (
		sess                      store.Session
		env, allow                *string
		created, updated, revoked *int64
		idle, gen                 int64
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
	if sess.Env, err = decodeMap(env); err != nil {
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
	env, err := encodeMap("variable", t.Env)
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
		t.Pool, errorText(t.Error), created, updated, encodeBlob(t.Snapshot),
		t.Repo, t.Branch, t.RepoDir, t.Version, t.Commit,
		t.Owner, t.Agent, allow,
	}, nil
}

func scanTemplate(sc pgx.Row) (store.Template, error) {
	var (
		t                 store.Template
		env, setup, allow *string
		created, updated  *int64
	)
	err := sc.Scan(&t.Name, &t.State, &t.Image, &t.MemoryMiB, &t.CPUs, &env, &setup, &t.Start,
		&t.Pool, &t.Error, &created, &updated, &t.Snapshot,
		&t.Repo, &t.Branch, &t.RepoDir, &t.Version, &t.Commit,
		&t.Owner, &t.Agent, &allow, &t.Gen)
	if err != nil {
		return store.Template{}, err
	}
	if t.Env, err = decodeMap(env); err != nil {
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

func scanImage(sc pgx.Row) (store.Image, error) {
	var (
		im      store.Image
		created *int64
	)
	if err := sc.Scan(&im.Name, &im.Key, &im.Dir, &im.SizeBytes, &created, &im.BuildMillis, &im.StoredManifest); err != nil {
		return store.Image{}, err
	}
	im.CreatedAt = decodeTime(created)
	return im, nil
}
