package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// --db picks the store: sqlite (the default, and "") is HOME/state.db; a
// postgres:// URL is that database; anything else is refused, saying
// what is wanted, and a bad password is never shown.
func TestOpenStore(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, db := range []string{"", "sqlite"} {
		home := t.TempDir()
		st, err := openStore(t.Context(), db, home, log)
		if err != nil {
			t.Fatalf("--db %q: %v", db, err)
		}
		if _, ok := st.(*sqlite.Store); !ok {
			t.Errorf("--db %q: a %T, want *sqlite.Store", db, st)
		}
		st.Close()
		if _, err := os.Stat(filepath.Join(home, "state.db")); err != nil {
			t.Errorf("--db %q: %v", db, err)
		}
	}

	srv := pgtest.Fresh(t)
	name, err := srv.CreateDatabase(t.Context(), "t_cove_db")
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(t.Context(), srv.URL(name), t.TempDir(), log)
	if err != nil {
		t.Fatalf("--db %s: %v", srv.URL(name), err)
	}
	if _, ok := st.(*postgres.Store); !ok {
		t.Errorf("--db postgres://…: a %T, want *postgres.Store", st)
	}
	if err := st.CreateSession(t.Context(), &store.Session{ID: "s"}); err != nil {
		t.Error(err)
	}
	st.Close()

	for _, db := range []string{"mysql://x", "state.db", "postgres://cove:Hunter2-pw@127.0.0.1:1/x", "postgress://cove:Hunter2-pw@127.0.0.1/x"} {
		st, err := openStore(t.Context(), db, t.TempDir(), log)
		if err == nil {
			st.Close()
			t.Fatalf("--db %q succeeded", db)
		}
		if strings.Contains(err.Error(), "Hunter2-pw") || !strings.Contains(err.Error(), "--db") {
			t.Errorf("--db %q: %v", db, err)
		}
		t.Log(err)
	}
}

// A server's node freezes its VMs after half the grace without a
// heartbeat where the store is shared (PostgreSQL); on SQLite, no other
// node can take its sessions over, and it never does.
func TestFenceAfter(t *testing.T) {
	for db, want := range map[string]time.Duration{
		"": 0, "sqlite": 0,
		"postgres://cove@db:5432/cove": 15 * time.Second, "postgresql://cove@db/cove": 15 * time.Second,
	} {
		if got := fenceAfter(db, 30*time.Second); got != want {
			t.Errorf("--db %q, --node-grace 30s: fence after %v, want %v", db, got, want)
		}
	}
}
