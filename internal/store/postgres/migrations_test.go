package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
)

// sql runs statements on the database at url, as the test's own client.
func sql(t *testing.T, url, stmt string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(t.Context()))
	if _, err := conn.Exec(t.Context(), stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// Servers starting at once on a fresh database all open it: migrations
// take turns under their lock, the first applies the schema and the
// others find it up to date.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	for round := range 3 {
		url := pgtest.NewDatabase(t)
		const n = 8
		var (
			wg     sync.WaitGroup
			stores [n]*postgres.Store
			errs   [n]error
		)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				stores[i], errs[i] = postgres.Open(t.Context(), url)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: Open #%d of %d at once: %v", round, i, n, err)
			}
			defer stores[i].Close()
		}
		// One schema, one version row, and every store uses it.
		conn, err := pgx.Connect(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		var rows, version int
		err = conn.QueryRow(t.Context(), `SELECT count(*), max(version) FROM schema_version`).Scan(&rows, &version)
		conn.Close(t.Context())
		if err != nil || rows != 1 || version < 1 {
			t.Fatalf("round %d: schema_version has %d rows, version %d (%v); want one row", round, rows, version, err)
		}
		if err := stores[0].CreateSession(t.Context(), &store.Session{ID: "s"}); err != nil {
			t.Fatal(err)
		}
		for i, st := range stores {
			if _, err := st.GetSession(t.Context(), "s"); err != nil {
				t.Errorf("round %d: store #%d: %v", round, i, err)
			}
		}
	}
}

// A store reopened on its database keeps its data and migrates nothing
// again; a database whose schema is newer than the binary is refused
// and left as it is.
func TestReopenAndNewerSchema(t *testing.T) {
	url := pgtest.NewDatabase(t)
	st := mustOpen(t, url)
	if err := st.CreateSession(t.Context(), &store.Session{ID: "kept"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = mustOpen(t, url)
	if _, err := st.GetSession(t.Context(), "kept"); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	st.Close()

	sql(t, url, `CREATE TABLE saved_version AS SELECT version FROM schema_version;
		UPDATE schema_version SET version = 999`)
	st, err := postgres.Open(t.Context(), url)
	if err == nil {
		st.Close()
		t.Fatal("Open of a database with schema version 999 succeeded")
	}
	if !strings.Contains(err.Error(), "999") || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open error = %v, want it to say the schema (999) is newer", err)
	}
	t.Log(err)
	sql(t, url, `UPDATE schema_version SET version = (SELECT version FROM saved_version)`)
	st = mustOpen(t, url)
	defer st.Close()
	if _, err := st.GetSession(t.Context(), "kept"); err != nil {
		t.Fatalf("after a refused open: %v", err)
	}
}

// The schema's keys sort bytewise in a database whose own collation
// would not (ICU's en-US puts "a" before "B"): the keys are COLLATE "C".
func TestBytewiseOrderInAnyLocale(t *testing.T) {
	srv := pgtest.Shared(t)
	name, err := srv.CreateDatabase(t.Context(), "t_icu_template")
	if err != nil {
		t.Fatal(err)
	}
	// CreateDatabase's databases take the cluster's C locale; this one
	// is made again with ICU's.
	sql(t, srv.URL("postgres"), `DROP DATABASE `+name)
	sql(t, srv.URL("postgres"), `CREATE DATABASE `+name+` TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`)
	check := func(what, q string, want ...string) {
		t.Helper()
		conn, err := pgx.Connect(t.Context(), srv.URL(name))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.WithoutCancel(t.Context()))
		var got []string
		if err := conn.QueryRow(t.Context(), q).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %q, want %q", what, got, want)
		}
	}
	check("the database's own order", `SELECT array_agg(x ORDER BY x) FROM unnest(ARRAY['a', 'B']) x`, "a", "B")

	st := mustOpen(t, srv.URL(name))
	defer st.Close()
	for _, n := range []string{"a", "B", "_", "é", "Z"} {
		if err := st.PutImage(t.Context(), store.Image{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	ims, err := st.ListImages(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, im := range ims {
		got = append(got, im.Name)
	}
	if want := []string{"B", "Z", "_", "a", "é"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ListImages = %q, want %q (bytewise)", got, want)
	}
}
