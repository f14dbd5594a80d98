package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
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

// A version-1 database, from before parking and templates, upgrades to the
// current schema: its sessions keep every field, read the new ones as zero,
// and take the new ones on update; templates work.
func TestUpgradeFromVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:1]); err != nil {
		t.Fatalf("migrate to 1: %v", err)
	}
	if v := userVersion(t, db); v != 1 {
		t.Fatalf("user_version = %d, want 1", v)
	}
	created := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	updated := created.Add(time.Minute + 1)
	// The row as version 1's code wrote it.
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, env, accel, created_at, updated_at, error, boot_millis, handle)
		VALUES ('old', 'running', 'tiny', 512, 2, '{"HOME":"/root"}', 'kvm', ?, ?, 'e', 1234, ?)`,
		created.UnixNano(), updated.UnixNano(), []byte("{\"v\":1}\x00\xff")); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, accel, error, boot_millis)
		VALUES ('bare', '', '', 0, 0, '', '', 0)`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-1 database: %v", err)
	}
	defer st.Close()
	var v int
	if err := st.db.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != len(migrations) || v < 2 {
		t.Errorf("user_version = %d, want %d (at least 2)", v, len(migrations))
	}

	want := store.Session{
		ID: "old", State: "running", Image: "tiny", MemoryMiB: 512, CPUs: 2,
		Env: map[string]string{"HOME": "/root"}, Accel: "kvm",
		CreatedAt: created, UpdatedAt: updated, Error: "e", BootMillis: 1234,
		Handle: []byte("{\"v\":1}\x00\xff"),
	}
	got, err := st.GetSession(t.Context(), "old")
	if err != nil {
		t.Fatalf("GetSession(old): %v", err)
	}
	checkUpgraded(t, got, want)
	bare, err := st.GetSession(t.Context(), "bare")
	if err != nil {
		t.Fatalf("GetSession(bare): %v", err)
	}
	checkUpgraded(t, bare, store.Session{ID: "bare"})
	list, err := st.ListSessions(t.Context())
	if err != nil || len(list) != 2 || list[0].ID != "bare" || list[1].ID != "old" {
		t.Fatalf("ListSessions = %v, %v; want bare, old", list, err)
	}

	// The upgraded row takes the new fields.
	want.IdleTimeout = time.Hour
	want.NoAutoWake = true
	want.Template = "py"
	want.Snapshot = []byte(`{"v":1}`)
	want.Gen = 1 // rows from before start at generation 1
	if err := st.UpdateSession(t.Context(), &want); err != nil {
		t.Fatalf("UpdateSession: %v", err)
	}
	if got, err = st.GetSession(t.Context(), "old"); err != nil {
		t.Fatalf("GetSession(old) after update: %v", err)
	}
	checkUpgraded(t, got, want)

	tm := store.Template{Name: "py", State: "ready", Setup: []string{"true"}, CreatedAt: created}
	if err := st.CreateTemplate(t.Context(), &tm); err != nil {
		t.Fatalf("CreateTemplate: %v", err)
	}
	if gt, err := st.GetTemplate(t.Context(), "py"); err != nil || gt.State != "ready" ||
		len(gt.Setup) != 1 || !gt.CreatedAt.Equal(created) {
		t.Errorf("GetTemplate = %+v, %v; want %+v", gt, err, tm)
	}
}

// checkUpgraded compares the fields of a session read back after an
// upgrade; storetest's conformance suite covers the rest.
func checkUpgraded(t *testing.T, got, want store.Session) {
	t.Helper()
	if got.ID != want.ID || got.State != want.State || got.Image != want.Image ||
		got.MemoryMiB != want.MemoryMiB || got.CPUs != want.CPUs || got.Accel != want.Accel ||
		got.Error != want.Error || got.BootMillis != want.BootMillis {
		t.Errorf("session %s = %+v, want %+v", want.ID, got, want)
	}
	if !maps.Equal(got.Env, want.Env) {
		t.Errorf("session %s Env = %q, want %q", want.ID, got.Env, want.Env)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Errorf("session %s times = %v, %v; want %v, %v", want.ID,
			got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
	}
	if !bytes.Equal(got.Handle, want.Handle) {
		t.Errorf("session %s Handle = %q, want %q", want.ID, got.Handle, want.Handle)
	}
	if got.IdleTimeout != want.IdleTimeout || got.NoAutoWake != want.NoAutoWake ||
		got.Template != want.Template || !bytes.Equal(got.Snapshot, want.Snapshot) {
		t.Errorf("session %s new fields = %v, %v, %q, %q; want %v, %v, %q, %q", want.ID,
			got.IdleTimeout, got.NoAutoWake, got.Template, got.Snapshot,
			want.IdleTimeout, want.NoAutoWake, want.Template, want.Snapshot)
	}
	if got.TemplateVersion != want.TemplateVersion {
		t.Errorf("session %s TemplateVersion = %d, want %d", want.ID, got.TemplateVersion, want.TemplateVersion)
	}
}

// A version-2 database, from before triggers, upgrades to the current
// schema: its sessions, templates and images keep every field, and the
// trigger tables work, deleting a session's triggers leaving the session.
func TestUpgradeFromVersion2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:2]); err != nil {
		t.Fatalf("migrate to 2: %v", err)
	}
	if v := userVersion(t, db); v != 2 {
		t.Fatalf("user_version = %d, want 2", v)
	}
	created := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	updated := created.Add(time.Minute + 1)
	// The rows as version 2's code wrote them.
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, env, accel, created_at, updated_at, error, boot_millis, handle,
		 idle_timeout_ns, no_auto_wake, template, snapshot)
		VALUES ('old', 'parked', 'tiny', 512, 2, '{"HOME":"/root"}', 'kvm', ?, ?, 'e', 1234, ?,
		 3600000000007, 1, 'py', ?)`,
		created.UnixNano(), updated.UnixNano(), []byte("{\"v\":1}\x00\xff"), []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO templates
		(name, state, image, memory_mib, cpus, env, setup, start, pool, error, created_at, updated_at, snapshot)
		VALUES ('py', 'ready', 'tiny', 1024, 4, '{"A":"b"}', '["true","echo hi"]', 'sleep 1', 3, '', ?, NULL, ?)`,
		created.UnixNano(), []byte("snap")); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(),
		`INSERT INTO images (name, key, dir, size_bytes, created_at, build_millis) VALUES ('tiny', 'k', 'd', 1, ?, 2)`,
		created.UnixNano()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-2 database: %v", err)
	}
	defer st.Close()
	var v int
	if err := st.db.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != len(migrations) || v < 3 {
		t.Errorf("user_version = %d, want %d (at least 3)", v, len(migrations))
	}

	want := store.Session{
		ID: "old", State: "parked", Image: "tiny", MemoryMiB: 512, CPUs: 2,
		Env: map[string]string{"HOME": "/root"}, Accel: "kvm",
		CreatedAt: created, UpdatedAt: updated, Error: "e", BootMillis: 1234,
		Handle:      []byte("{\"v\":1}\x00\xff"),
		IdleTimeout: time.Hour + 7, NoAutoWake: true, Template: "py",
		Snapshot: []byte(`{"v":1}`), TemplateVersion: 1,
	}
	got, err := st.GetSession(t.Context(), "old")
	if err != nil {
		t.Fatalf("GetSession(old): %v", err)
	}
	checkUpgraded(t, got, want)
	tm, err := st.GetTemplate(t.Context(), "py")
	if err != nil || tm.State != "ready" || tm.Image != "tiny" || tm.MemoryMiB != 1024 ||
		tm.CPUs != 4 || !maps.Equal(tm.Env, map[string]string{"A": "b"}) ||
		!slices.Equal(tm.Setup, []string{"true", "echo hi"}) || tm.Start != "sleep 1" ||
		tm.Pool != 3 || !tm.CreatedAt.Equal(created) || !tm.UpdatedAt.IsZero() ||
		string(tm.Snapshot) != "snap" || tm.Version != 1 || tm.Repo != "" || tm.Commit != "" {
		t.Errorf("GetTemplate(py) = %+v, %v", tm, err)
	}
	// The template from before versions has its version 1, as it was.
	vs, err := st.ListTemplateVersions(t.Context(), "py")
	if err != nil || len(vs) != 1 || vs[0].Version != 1 || vs[0].State != "ready" ||
		string(vs[0].Snapshot) != "snap" || !vs[0].CreatedAt.Equal(created) || vs[0].Reason != "create" {
		t.Errorf("ListTemplateVersions(py) = %+v, %v; want its version 1", vs, err)
	}
	im, err := st.GetImage(t.Context(), "tiny")
	if err != nil || im.Key != "k" || im.Dir != "d" || im.SizeBytes != 1 ||
		!im.CreatedAt.Equal(created) || im.BuildMillis != 2 {
		t.Errorf("GetImage(tiny) = %+v, %v", im, err)
	}

	// The trigger tables are there and work.
	if err := st.PutSubscription(t.Context(), store.Subscription{
		SessionID: "old", Until: []string{"github:push"}, CreatedAt: created,
	}); err != nil {
		t.Fatalf("PutSubscription: %v", err)
	}
	rec, delivered, dup, err := st.RecordEvent(t.Context(), store.Event{
		Source: "github", ID: "d-1", Name: "push", Received: updated,
	}, []string{"old"})
	if err != nil || dup || rec.Seq <= 0 || !slices.Equal(delivered, []string{"old"}) {
		t.Fatalf("RecordEvent = %+v, %q, %v, %v", rec, delivered, dup, err)
	}
	if err := st.PutHookSecret(t.Context(), "deploy", []byte("s")); err != nil {
		t.Fatalf("PutHookSecret: %v", err)
	}
	if err := st.DeleteSessionTriggers(t.Context(), "old"); err != nil {
		t.Fatalf("DeleteSessionTriggers: %v", err)
	}
	if ds, err := st.ListDeliveries(t.Context(), ""); err != nil || len(ds) != 0 {
		t.Errorf("ListDeliveries after DeleteSessionTriggers = %+v, %v; want none", ds, err)
	}
	// Sessions and triggers are independent: no foreign key ties them.
	if _, err := st.GetSession(t.Context(), "old"); err != nil {
		t.Errorf("GetSession(old) after DeleteSessionTriggers: %v", err)
	}
	if err := st.PutSubscription(t.Context(), store.Subscription{SessionID: "no-such-session"}); err != nil {
		t.Errorf("PutSubscription for a missing session: %v", err)
	}
	if err := st.DeleteSession(t.Context(), "old"); err != nil {
		t.Errorf("DeleteSession(old): %v", err)
	}
}

// A version-5 database, from before owners, upgrades to the current
// schema: its sessions and templates keep every field and become the
// admin's (store.OwnerAdmin), with no agent, since the admin token made
// them; new ones keep the owner and agent they are given, and a rebuild's
// swap keeps the template's.
func TestUpgradeFromVersion5(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:5]); err != nil {
		t.Fatalf("migrate to 5: %v", err)
	}
	created := time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)
	// The rows as version 5's code wrote them.
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, accel, created_at, error, boot_millis,
		 idle_timeout_ns, no_auto_wake, template, template_version)
		VALUES ('old', 'parked', 'tiny', 512, 2, 'kvm', ?, '', 1234, 0, 0, 'py', 3)`,
		created.UnixNano()); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO templates
		(name, state, image, memory_mib, cpus, start, pool, error, created_at, version)
		VALUES ('py', 'ready', 'tiny', 1024, 4, '', 2, '', ?, 3)`, created.UnixNano()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-5 database: %v", err)
	}
	defer st.Close()
	if v := userVersion(t, st.db); v != len(migrations) || v < 6 {
		t.Errorf("user_version = %d, want %d (at least 6)", v, len(migrations))
	}
	got, err := st.GetSession(t.Context(), "old")
	if err != nil {
		t.Fatalf("GetSession(old): %v", err)
	}
	if got.Owner != store.OwnerAdmin || got.Agent != "" {
		t.Errorf("upgraded session: owner %q, agent %q; want %q and none", got.Owner, got.Agent, store.OwnerAdmin)
	}
	checkUpgraded(t, got, store.Session{ID: "old", State: "parked", Image: "tiny", MemoryMiB: 512, CPUs: 2,
		Accel: "kvm", CreatedAt: created, BootMillis: 1234, Template: "py", TemplateVersion: 3})
	tm, err := st.GetTemplate(t.Context(), "py")
	if err != nil || tm.Owner != store.OwnerAdmin || tm.Agent != "" || tm.Version != 3 || tm.Pool != 2 {
		t.Errorf("upgraded template = %+v, %v; want the admin's, version 3, pool 2", tm, err)
	}

	// New rows keep their own owner and agent, apart from the old ones.
	mine := store.Session{ID: "new", State: "running", Owner: "u_alice", Agent: "review-bot", CreatedAt: created.Add(time.Second)}
	if err := st.CreateSession(t.Context(), &mine); err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	list, err := st.ListSessions(t.Context())
	if err != nil || len(list) != 2 {
		t.Fatalf("ListSessions = %+v, %v", list, err)
	}
	if list[0].Owner != store.OwnerAdmin || list[1].Owner != "u_alice" || list[1].Agent != "review-bot" {
		t.Errorf("owners, agents listed: %q/%q, %q/%q", list[0].Owner, list[0].Agent, list[1].Owner, list[1].Agent)
	}
	tm.Owner, tm.Agent = "u_bob", "builder"
	if err := st.UpdateTemplate(t.Context(), &tm); err != nil {
		t.Fatalf("UpdateTemplate: %v", err)
	}
	tm.Version++
	if err := st.SwapTemplateVersion(t.Context(), &tm, store.TemplateVersion{Template: "py", Version: tm.Version, State: store.VersionReady}); err != nil {
		t.Fatalf("SwapTemplateVersion: %v", err)
	}
	if got, err := st.GetTemplate(t.Context(), "py"); err != nil || got.Owner != "u_bob" || got.Agent != "builder" || got.Version != 4 {
		t.Errorf("template after update and swap = %+v, %v; want u_bob's, agent builder, version 4", got, err)
	}
}

// TestUpgradeFromVersion8 protects databases made before secrets: a
// version-8 database with a user and a template opens, gains the secrets
// table with none in it, and then keeps secrets, which go with the user
// and the template that own them.
func TestUpgradeFromVersion8(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:8]); err != nil {
		t.Fatalf("migrate to 8: %v", err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO users (id, name, kind) VALUES ('u_a', 'alice', 'engineer')`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO templates
		(name, state, image, memory_mib, cpus, start, pool, error, version, owner)
		VALUES ('py', 'ready', 'tiny', 1024, 4, '', 0, '', 1, 'u_a')`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-8 database: %v", err)
	}
	defer st.Close()
	if v := userVersion(t, st.db); v != len(migrations) || v < 9 {
		t.Errorf("user_version = %d, want %d (at least 9)", v, len(migrations))
	}
	if list, err := st.ListSecrets(t.Context(), "", ""); err != nil || len(list) != 0 {
		t.Fatalf("secrets of an upgraded database: %+v, %v; want none", list, err)
	}
	if u, err := st.GetUser(t.Context(), "u_a"); err != nil || u.Name != "alice" {
		t.Errorf("upgraded user: %+v, %v", u, err)
	}
	for _, sec := range []store.Secret{
		{Name: "gh", OwnerKind: store.SecretOwnerUser, Owner: "u_a", Header: "Authorization: Bearer {{value}}", Sealed: []byte{1, 2}},
		{Name: "pypi", OwnerKind: store.SecretOwnerTemplate, Owner: "py", Header: "Authorization: Basic {{value}}", Sealed: []byte{3}},
	} {
		if err := st.PutSecret(t.Context(), sec); err != nil {
			t.Fatalf("PutSecret(%s): %v", sec.Name, err)
		}
	}
	if err := st.DeleteUser(t.Context(), "u_a", time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteTemplate(t.Context(), "py"); err != nil {
		t.Fatal(err)
	}
	if list, err := st.ListSecrets(t.Context(), "", ""); err != nil || len(list) != 0 {
		t.Errorf("secrets after their user and template went: %+v, %v; want none", list, err)
	}
}

// A key recorded before keys expired (version 22) takes its session's
// creation time, or, its session removed, the upgrade's: an expiry
// before that frees it, one before that keeps it.
func TestUpgradeFromVersion22(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	db := rawDB(t, path)
	if err := migrate(t.Context(), db, migrations[:22]); err != nil {
		t.Fatalf("migrate to 22: %v", err)
	}
	made := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := db.ExecContext(t.Context(), `INSERT INTO sessions
		(id, state, image, memory_mib, cpus, accel, created_at, error, boot_millis, idle_timeout_ns, no_auto_wake, template, template_version, owner, agent)
		VALUES ('s-kept', 'running', 'tiny', 512, 1, 'tcg', ?, '', 0, 0, 0, '', 0, 'u_a', '')`, made.UnixNano()); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `INSERT INTO session_keys (owner, key, session_id, request_hash)
		VALUES ('u_a', 'k-kept', 's-kept', 'h1'), ('u_a', 'k-gone', 's-gone', 'h2')`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	upgraded := time.Now()
	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open of a version-22 database: %v", err)
	}
	defer st.Close()
	if n, err := st.ExpireSessionKeys(t.Context(), made); err != nil || n != 0 {
		t.Fatalf("expire keys made before the session = %d, %v; want none", n, err)
	}
	if n, err := st.ExpireSessionKeys(t.Context(), made.Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("expire keys made before the session's time and a second = %d, %v; want its key", n, err)
	}
	if _, err := st.SessionKey(t.Context(), "u_a", "k-gone"); err != nil {
		t.Fatalf("the removed session's key: %v; want kept until the upgrade's time", err)
	}
	if n, err := st.ExpireSessionKeys(t.Context(), upgraded.Add(-time.Minute)); err != nil || n != 0 {
		t.Fatalf("expire keys made a minute before the upgrade = %d, %v; want none", n, err)
	}
	if n, err := st.ExpireSessionKeys(t.Context(), upgraded.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("expire keys made before the upgrade and a minute = %d, %v; want the removed session's", n, err)
	}
}
