package apiserver

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// TestStoreUnavailableIs503 protects the answer to a state store that
// cannot be used for now, here a real SQLite store whose database another
// connection holds locked: 503 "unavailable" with the store's reason, not
// 500 with a log reference; and once the lock is gone the same server
// answers as usual.
func TestStoreUnavailableIs503(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "cove.db")
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnv(t, func(c *Config) { c.HookSecrets = st })

	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	// The store waits out its busy timeout (5 s) before it gives up.
	body := wantError(t, e.doJSON("PUT", "/v1/hook-secrets/ci", api.HookSecretRequest{Secret: "s"}), 503, api.CodeUnavailable)
	if want := "state store unavailable: the database is locked by another process"; !strings.Contains(body.Message, want) {
		t.Errorf("message %q does not say %q", body.Message, want)
	}

	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if resp := e.doJSON("PUT", "/v1/hook-secrets/ci", api.HookSecretRequest{Secret: "s"}); resp.StatusCode != 204 {
		t.Fatalf("put once the lock is gone: %d", resp.StatusCode)
	}
	if got, err := st.GetHookSecret(ctx, "ci"); err != nil || string(got) != "s" {
		t.Errorf("hook secret = %q, %v; want it written", got, err)
	}
}
