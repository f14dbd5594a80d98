package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func userVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Each step runs once: migrating again applies nothing, and a later step
// added to the list applies only itself.
func TestMigrateAppliesEachStepOnce(t *testing.T) {
	db := rawDB(t, filepath.Join(t.TempDir(), "m.db"))
	// Re-running either step would fail (the table exists) or show (a second row).
	steps := []string{
		"CREATE TABLE t (x INTEGER) STRICT",
		"INSERT INTO t VALUES (1)",
	}
	for i := range 3 {
		if err := migrate(t.Context(), db, steps); err != nil {
			t.Fatalf("migrate #%d: %v", i+1, err)
		}
	}
	if v := userVersion(t, db); v != 2 {
		t.Errorf("user_version = %d, want 2", v)
	}
	if n := count(t, db, "t"); n != 1 {
		t.Errorf("rows = %d, want 1", n)
	}

	steps = append(steps, "INSERT INTO t VALUES (2)")
	if err := migrate(t.Context(), db, steps); err != nil {
		t.Fatalf("migrate with a new step: %v", err)
	}
	if v := userVersion(t, db); v != 3 {
		t.Errorf("user_version = %d, want 3", v)
	}
	if n := count(t, db, "t"); n != 2 {
		t.Errorf("rows = %d, want 2", n)
	}
}

// A failing step leaves the database as it was: no half-applied steps, no
// version bump.
func TestMigrateFailureRollsBack(t *testing.T) {
	db := rawDB(t, filepath.Join(t.TempDir(), "m.db"))
	steps := []string{
		"CREATE TABLE t (x INTEGER) STRICT",
		"INSERT INTO t VALUES (1)",
		"THIS IS NOT SQL",
	}
	err := migrate(t.Context(), db, steps)
	if err == nil || !strings.Contains(err.Error(), "migration 3") {
		t.Fatalf("migrate = %v, want an error naming migration 3", err)
	}
	if v := userVersion(t, db); v != 0 {
		t.Errorf("user_version = %d, want 0", v)
	}
	var n int
	err = db.QueryRowContext(t.Context(), "SELECT count(*) FROM sqlite_schema WHERE name = 't'").Scan(&n)
	if err != nil || n != 0 {
		t.Errorf("table t exists after failed migration (n=%d, err=%v)", n, err)
	}
}

// Opening a store twice keeps its data and leaves the schema at the
// current version.
func TestOpenTwiceDoesNotReapply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	for i := range 2 {
		st, err := Open(t.Context(), path)
		if err != nil {
			t.Fatalf("Open #%d: %v", i+1, err)
		}
		if i == 0 {
			if _, err := st.db.ExecContext(t.Context(),
				`INSERT INTO images (name, key, dir, size_bytes, build_millis) VALUES ('a', 'k', 'd', 1, 2)`); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db := rawDB(t, path)
	if v := userVersion(t, db); v != len(migrations) {
		t.Errorf("user_version = %d, want %d", v, len(migrations))
	}
	if n := count(t, db, "images"); n != 1 {
		t.Errorf("images = %d, want 1", n)
	}
}

// A database from a newer cove is refused, not migrated or damaged.
func TestOpenNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	newer := len(migrations) + 1
	if _, err := st.db.ExecContext(t.Context(), fmt.Sprintf("PRAGMA user_version = %d", newer)); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st, err = Open(t.Context(), path)
	if err == nil {
		st.Close()
		t.Fatal("Open of a newer database succeeded")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error %q does not say the database is newer", err)
	}
	if v := userVersion(t, rawDB(t, path)); v != newer {
		t.Errorf("user_version = %d, want %d", v, newer)
	}
}

// Every connection has the settings durability depends on.
func TestConnectionSettings(t *testing.T) {
	st, err := Open(t.Context(), filepath.Join(t.TempDir(), "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"synchronous":  "2",
		"foreign_keys": "1",
		"busy_timeout": fmt.Sprint(busyTimeoutMillis),
	} {
		var got string
		if err := st.db.QueryRowContext(context.Background(), "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", pragma, err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
}
