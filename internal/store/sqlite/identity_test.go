package sqlite

import (
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// TestUpgradeFromVersion4 protects a database from before identities: it
// opens with its sessions as they were, and gains working users, teams
// and tokens.
func TestUpgradeFromVersion4(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:4]); err != nil {
		t.Fatalf("migrate to 4: %v", err)
	}
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, accel, created_at, updated_at, error, boot_millis)
		VALUES ('old', 'running', 'tiny', 512, 1, 'tcg', ?, ?, '', 0)`, created.UnixNano(), created.UnixNano()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-4 database: %v", err)
	}
	defer st.Close()
	if v := userVersion(t, st.db); v < 5 || v != len(migrations) {
		t.Errorf("user_version = %d, want %d (at least 5)", v, len(migrations))
	}
	if s, err := st.GetSession(t.Context(), "old"); err != nil || s.State != "running" || !s.CreatedAt.Equal(created) {
		t.Errorf("GetSession(old) = %+v, %v", s, err)
	}

	ctx := t.Context()
	u := store.User{ID: "u-1", Name: "alice", Kind: store.UserAdmin, CreatedAt: created}
	tok := store.Token{ID: "t-1", Name: "ci", UserID: "u-1", Hash: sha256.Sum256([]byte("cove_x")), CreatedAt: created}
	if err := errors.Join(st.PutUser(ctx, u), st.AddTeamMember(ctx, "u-1", "platform"), st.PutToken(ctx, tok)); err != nil {
		t.Fatal(err)
	}
	if got, err := st.GetTokenByHash(ctx, tok.Hash); err != nil || got.UserID != "u-1" {
		t.Errorf("GetTokenByHash = %+v, %v", got, err)
	}
	if teams, err := st.TeamsOf(ctx, "u-1"); err != nil || len(teams) != 1 || teams[0] != "platform" {
		t.Errorf("TeamsOf = %q, %v", teams, err)
	}
}
