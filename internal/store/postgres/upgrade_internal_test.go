package postgres

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
)

// A database made before generations (schema 2) is brought up to date
// with its sessions and templates at generation 1: a copy read after the
// upgrade updates them, and one that never read them (generation 0) is
// refused.
func TestUpgradeGivesRowsGeneration1(t *testing.T) {
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(t.Context(), pool, migrations[:2]); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	s := &Store{pool: pool}
	old := store.Session{ID: "old", State: "parked"}
	tm := store.Template{Name: "old-tpl", State: "ready"}
	// Written as the schema-2 binary did, without the gen column (nor
	// node, which sessionArgs ends with since schema 5).
	sargs, err := sessionArgs(old)
	if err != nil {
		t.Fatal(err)
	}
	sargs = sargs[:22]
	if _, err := pool.Exec(t.Context(), `INSERT INTO sessions (id, state, image, memory_mib, cpus, env, accel,
		created_at, updated_at, error, boot_millis, handle, idle_timeout_ns, no_auto_wake, template, snapshot,
		template_version, owner, agent, allow, stored_manifest, stored_bytes)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)`, sargs[:22]...); err != nil { // the columns of schema 2
		t.Fatal(err)
	}
	targs, err := templateArgs(tm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `INSERT INTO templates (name, state, image, memory_mib, cpus, env, setup, start,
		pool, error, created_at, updated_at, snapshot, repo, branch, repo_dir, version, commit_sha, owner, agent, allow)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)`, targs...); err != nil {
		t.Fatal(err)
	}
	s.Close()

	st, err := Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.GetSession(t.Context(), "old")
	if err != nil || got.Gen != 1 || got.Node != "" {
		t.Fatalf("upgraded session: gen %d, node %q, %v; want 1, no node", got.Gen, got.Node, err)
	}
	never := got
	never.Gen = 0
	if err := st.UpdateSession(t.Context(), &never); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateSession from a copy never read = %v, want ErrConflict", err)
	}
	got.State = "running"
	if err := st.UpdateSession(t.Context(), &got); err != nil || got.Gen != 2 {
		t.Fatalf("UpdateSession of the upgraded row: %v, gen %d; want nil, 2", err, got.Gen)
	}
	gt, err := st.GetTemplate(t.Context(), "old-tpl")
	if err != nil || gt.Gen != 1 {
		t.Fatalf("upgraded template: gen %d, %v; want 1", gt.Gen, err)
	}
	if err := st.UpdateTemplate(t.Context(), &gt); err != nil {
		t.Fatalf("UpdateTemplate of the upgraded row: %v", err)
	}
	if ok, err := st.Claim(t.Context(), "k", "o", time.Hour); err != nil || !ok {
		t.Fatalf("Claim after the upgrade: %v, %v", ok, err)
	}
}

// A key recorded before keys expired (schema 13) takes its session's
// creation time, or, its session removed, the upgrade's: an expiry
// before that keeps it, one after frees it.
func TestUpgradeGivesKeysTheirCreateTime(t *testing.T) {
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(t.Context(), pool, migrations[:13]); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	made := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := &Store{pool: pool}
	if err := s.CreateSession(t.Context(), &store.Session{ID: "s-kept", State: "running", CreatedAt: made}); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `INSERT INTO session_keys (owner, key, session_id, request_hash)
		VALUES ('u_a', 'k-kept', 's-kept', 'h1'), ('u_a', 'k-gone', 's-gone', 'h2')`); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	s.Close()
	upgraded := time.Now()
	st, err := Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, c := range []struct {
		what   string
		before time.Time
		want   int
	}{
		{"made before the session", made, 0},
		{"made before the session's time and a second", made.Add(time.Second), 1},
		{"made a minute before the upgrade", upgraded.Add(-time.Minute), 0},
		{"made before the upgrade and a minute", upgraded.Add(time.Minute), 1},
	} {
		if n, err := st.ExpireSessionKeys(t.Context(), c.before); err != nil || n != c.want {
			t.Fatalf("expire keys %s = %d, %v; want %d", c.what, n, err, c.want)
		}
	}
}
