package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
)

// follow runs st's session feed until the test ends, and returns the
// channel its calls signal on.
func follow(t *testing.T, st interface {
	FollowSessions(context.Context, func()) error
}) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	ch := make(chan struct{}, 1)
	go func() {
		defer close(done)
		_ = st.FollowSessions(ctx, func() {
			select {
			case ch <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

// signalled waits for a signal on ch; the deadline only catches a feed
// that never tells.
func signalled(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("%s: no signal from the session feed", what)
	}
}

// drain empties ch of signals already sent.
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

// Two servers share a database: each one's feed tells of the session
// records the other creates, updates and removes; and after the database
// server restarts, the feed listens again by itself, tells once that
// changes may have been missed, and goes on telling.
func TestSessionFeed(t *testing.T) {
	srv := pgtest.Fresh(t)
	ctx := t.Context()
	name, err := srv.CreateDatabase(ctx, "t_feed")
	if err != nil {
		t.Fatal(err)
	}
	a := mustOpen(t, srv.URL(name))
	defer a.Close()
	b := mustOpen(t, srv.URL(name))
	defer b.Close()
	ch := follow(t, a)
	// The feed listens once it has connected: a create is written until
	// one is seen.
	rec := store.Session{ID: "s", State: "running", Image: "tiny", CreatedAt: time.Unix(1, 0).UTC()}
	if err := b.CreateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	for seen := false; !seen; {
		select {
		case <-ch:
			seen = true
		case <-time.After(100 * time.Millisecond):
			n := store.Session{ID: "n" + time.Now().Format("150405.000000"), State: "running", Image: "tiny", CreatedAt: time.Unix(2, 0).UTC()}
			if err := b.CreateSession(ctx, &n); err != nil {
				t.Fatal(err)
			}
		}
	}
	drain(ch)

	rec.State = "parked"
	if err := b.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	signalled(t, ch, "another server's update")
	if err := b.DeleteSession(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	signalled(t, ch, "another server's delete")
	drain(ch)

	// Writes that touch no session record tell nothing.
	if err := b.CreateNode(ctx, &store.Node{ID: "nd", Name: "nd"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("a node's record written: the session feed told of it")
	case <-time.After(500 * time.Millisecond):
	}

	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	signalled(t, ch, "the feed listening again after the database server restarted")
	drain(ch)
	again := store.Session{ID: "after", State: "running", Image: "tiny", CreatedAt: time.Unix(3, 0).UTC()}
	for {
		err := b.CreateSession(ctx, &again)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the pool reconnecting
	}
	signalled(t, ch, "a create after the restart")
}
