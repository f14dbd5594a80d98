package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
)

// The database server goes away and comes back. While it is away every
// kind of call (a statement, a row, a list, a transaction) fails at once
// with ErrUnavailable, saying why, and changes nothing; once it is back
// the next call succeeds with the data intact, the store not reopened.
func TestServerOutage(t *testing.T) {
	srv := pgtest.Fresh(t)
	ctx := t.Context()
	name, err := srv.CreateDatabase(ctx, "t_outage")
	if err != nil {
		t.Fatal(err)
	}
	st := mustOpen(t, srv.URL(name))
	defer st.Close()
	want := store.Session{ID: "s", State: "running", Image: "tiny", CreatedAt: time.Unix(1, 2).UTC()}
	if err := st.CreateSession(ctx, &want); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// Calls fail by themselves; this deadline only catches one that hangs.
	down, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	unavailable := func(op string, err error) {
		t.Helper()
		if down.Err() != nil {
			t.Fatalf("%s hung until the test's deadline: %v", op, err)
		}
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s while the server is down = %v, want ErrUnavailable", op, err)
			return
		}
		t.Logf("%s: %v", op, err)
	}
	_, err = st.GetSession(down, "s")
	unavailable("GetSession", err)
	unavailable("CreateSession", st.CreateSession(down, &store.Session{ID: "t"}))
	_, err = st.ListSessions(down)
	unavailable("ListSessions", err)
	_, _, _, err = st.RecordEvent(down, store.Event{Source: "github", ID: "e"}, []string{"s"})
	unavailable("RecordEvent", err)
	_, err = st.BumpTokenGen(down, "s")
	unavailable("BumpTokenGen", err)

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := st.GetSession(ctx, "s")
	if err != nil {
		t.Fatalf("first call once the server is back: %v", err)
	}
	if got.State != want.State || !got.CreatedAt.Equal(want.CreatedAt) || got.TokenGen != 0 {
		t.Errorf("after the outage: %+v, want %+v", got, want)
	}
	if _, err := st.GetSession(ctx, "t"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the create that failed in the outage left %v, want ErrNotFound", err)
	}
	if _, _, _, err := st.RecordEvent(ctx, store.Event{Source: "github", ID: "e"}, nil); err != nil {
		t.Errorf("the event that failed in the outage: %v, want it new now", err)
	}
}

// A server restarted while the store is idle leaves the pool's
// connections dead: the first call of each kind after it still succeeds.
func TestServerRestartWhileIdle(t *testing.T) {
	srv := pgtest.Fresh(t)
	ctx := t.Context()
	name, err := srv.CreateDatabase(ctx, "t_restart")
	if err != nil {
		t.Fatal(err)
	}
	st := mustOpen(t, srv.URL(name))
	defer st.Close()
	if err := st.CreateSession(ctx, &store.Session{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func() error
	}{
		{"GetSession", func() error { _, err := st.GetSession(ctx, "s"); return err }},
		{"UpdateSession", func() error { return st.UpdateSession(ctx, &store.Session{ID: "s", State: "parked", Gen: 1}) }},
		{"ListSessions", func() error { _, err := st.ListSessions(ctx); return err }},
		{"RecordEvent", func() error {
			_, _, _, err := st.RecordEvent(ctx, store.Event{Source: "github", ID: fmt.Sprint(time.Now().UnixNano())}, []string{"s"})
			return err
		}},
	}
	for _, c := range calls {
		// Connections in the pool, used just now.
		for range 4 {
			if _, err := st.ListSessions(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := srv.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.call(); err != nil {
			t.Errorf("%s, the first call after a restart: %v", c.name, err)
		}
	}
}
