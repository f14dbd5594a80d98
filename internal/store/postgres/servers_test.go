package postgres_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
)

// Tests of two servers sharing one database: each has a Store of its
// own, with its own pool of connections, as two processes would.

// twoServers opens two stores on one fresh database.
func twoServers(t *testing.T) [2]*postgres.Store {
	t.Helper()
	url := pgtest.NewDatabase(t)
	var st [2]*postgres.Store
	for i := range st {
		st[i] = mustOpen(t, url)
		t.Cleanup(func() { st[i].Close() })
	}
	return st
}

// Bumps of one session's token generation from two servers at once are
// each counted once: N bumps end at N, and each got a generation of its
// own.
func TestBumpTokenGenAcrossServers(t *testing.T) {
	st := twoServers(t)
	if err := st[0].CreateSession(t.Context(), &store.Session{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25 // per server
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		gens []uint64
	)
	errs := make(chan error, 2*workers*each)
	for i := range 2 * workers {
		wg.Go(func() {
			for range each {
				gen, err := st[i%2].BumpTokenGen(t.Context(), "s")
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				gens = append(gens, gen)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const n = 2 * workers * each
	slices.Sort(gens)
	for i, g := range gens {
		if g != uint64(i+1) {
			t.Fatalf("generations handed out: %d at %d, want 1..%d each once", g, i, n)
		}
	}
	for i := range st {
		sess, err := st[i].GetSession(t.Context(), "s")
		if err != nil || sess.TokenGen != n {
			t.Fatalf("server %d: TokenGen = %d, %v; want %d", i, sess.TokenGen, err, n)
		}
	}
}

// A token put on one server while another deletes its user is either
// refused (the user is gone) or revoked by the delete: no deleted user
// keeps a live token.
func TestPutTokenRacesDeleteUser(t *testing.T) {
	st := twoServers(t)
	ctx := t.Context()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	put, refused := 0, 0
	for i := range 100 {
		uid, tid := fmt.Sprintf("u-%d", i), fmt.Sprintf("t-%d", i)
		if err := st[0].PutUser(ctx, store.User{ID: uid, Name: uid, Kind: store.UserEngineer}); err != nil {
			t.Fatal(err)
		}
		var (
			wg             sync.WaitGroup
			putErr, delErr error
		)
		wg.Go(func() {
			putErr = st[0].PutToken(ctx, store.Token{ID: tid, UserID: uid, Hash: [32]byte{byte(i), byte(i >> 8)}, CreatedAt: at})
		})
		wg.Go(func() { delErr = st[1].DeleteUser(ctx, uid, at) })
		wg.Wait()
		if delErr != nil {
			t.Fatalf("DeleteUser: %v", delErr)
		}
		tok, err := st[1].GetToken(ctx, tid)
		switch {
		case putErr == nil && err != nil:
			t.Fatalf("PutToken succeeded, GetToken: %v", err)
		case putErr == nil && tok.RevokedAt.IsZero():
			t.Fatalf("round %d: token %s of deleted user %s is live", i, tid, uid)
		case putErr == nil:
			put++
		default:
			refused++
			if err == nil {
				t.Fatalf("PutToken failed (%v), yet the token is there", putErr)
			}
		}
	}
	t.Logf("%d tokens put then revoked, %d refused", put, refused)
}

// Two events on two servers claiming one subscription: exactly one gets
// the delivery. A third client holds the subscription's row locked until
// both events are waiting, so that the two claims meet every round.
func TestEventsRaceAcrossServers(t *testing.T) {
	url := pgtest.NewDatabase(t)
	st := [2]*postgres.Store{mustOpen(t, url), mustOpen(t, url)}
	defer st[0].Close()
	defer st[1].Close()
	ctx := t.Context()
	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.WithoutCancel(ctx))
	for round := range 5 {
		sid := fmt.Sprintf("s-%d", round)
		if err := st[0].PutSubscription(ctx, store.Subscription{SessionID: sid, Until: []string{"x"}}); err != nil {
			t.Fatal(err)
		}
		tx, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM subscriptions WHERE session_id = $1 FOR UPDATE`, sid); err != nil {
			t.Fatal(err)
		}
		var (
			wg        sync.WaitGroup
			delivered [2][]string
			errs      [2]error
		)
		for i := range 2 {
			wg.Go(func() {
				ev := store.Event{Source: "github", ID: fmt.Sprintf("%d-%d", round, i), Received: time.Unix(int64(round), 0)}
				_, delivered[i], _, errs[i] = st[i].RecordEvent(ctx, ev, []string{sid})
			})
		}
		waitLockWaiters(t, holder, 2)
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("RecordEvent: %v, %v", errs[0], errs[1])
		}
		if n := len(delivered[0]) + len(delivered[1]); n != 1 {
			t.Fatalf("round %d: %d deliveries (%q, %q), want 1", round, n, delivered[0], delivered[1])
		}
	}
	ds, err := st[1].ListDeliveries(ctx, "")
	if err != nil || len(ds) != 5 {
		t.Fatalf("ListDeliveries = %d, %v; want 5", len(ds), err)
	}
}

// waitLockWaiters returns once n sessions of conn's database wait for a
// lock, or fails t after a minute.
func waitLockWaiters(t *testing.T, conn *pgx.Conn, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var waiting int
		err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions wait for a lock after a minute, want %d", waiting, n)
		}
		<-tick.C
	}
}

// The same event sent to two servers at once is recorded once; both get
// its Seq.
func TestDuplicateEventAcrossServers(t *testing.T) {
	st := twoServers(t)
	ctx := t.Context()
	for round := range 20 {
		var (
			wg   sync.WaitGroup
			recs [2]store.Event
			dups [2]bool
			errs [2]error
		)
		for i := range 2 {
			wg.Go(func() {
				ev := store.Event{Source: "github", ID: fmt.Sprint(round), Name: "push"}
				recs[i], _, dups[i], errs[i] = st[i].RecordEvent(ctx, ev, nil)
			})
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("RecordEvent: %v, %v", errs[0], errs[1])
		}
		if dups[0] == dups[1] || recs[0].Seq != recs[1].Seq {
			t.Fatalf("round %d: dup %v, %v and Seq %d, %d; want one new, one duplicate, one Seq",
				round, dups[0], dups[1], recs[0].Seq, recs[1].Seq)
		}
	}
}

// Seq follows commit order across servers: when RecordEvent returns an
// event, every event with a lower Seq is already recorded. Event A takes
// a Seq and then waits (a third client holds the subscription it claims)
// while event B, on another server, is recorded; what B's caller could
// see below B's Seq then must be all there ever is below it.
func TestEventSeqFollowsCommitsAcrossServers(t *testing.T) {
	url := pgtest.NewDatabase(t)
	st := [2]*postgres.Store{mustOpen(t, url), mustOpen(t, url)}
	defer st[0].Close()
	defer st[1].Close()
	ctx := t.Context()
	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.WithoutCancel(ctx))
	below := func(seq int64) string {
		var seqs []int64
		if err := holder.QueryRow(ctx, `SELECT coalesce(array_agg(seq ORDER BY seq), '{}') FROM events WHERE seq < $1`, seq).Scan(&seqs); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(seqs)
	}
	if err := st[0].PutSubscription(ctx, store.Subscription{SessionID: "s"}); err != nil {
		t.Fatal(err)
	}
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM subscriptions WHERE session_id = 's' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var errA error
	wg.Go(func() { _, _, _, errA = st[0].RecordEvent(ctx, store.Event{Source: "github", ID: "a"}, []string{"s"}) })
	waitLockWaiters(t, holder, 1)

	type result struct {
		seq  int64
		seen string
		err  error
	}
	done := make(chan result, 1)
	wg.Go(func() {
		rec, _, _, err := st[1].RecordEvent(ctx, store.Event{Source: "github", ID: "b"}, nil)
		r := result{seq: rec.Seq, err: err}
		if err == nil {
			conn, cerr := pgx.Connect(ctx, url)
			if cerr != nil {
				r.err = cerr
			} else {
				conn.QueryRow(ctx, `SELECT coalesce(array_agg(seq ORDER BY seq), '{}')::text FROM events WHERE seq < $1`, rec.Seq).Scan(&r.seen)
				conn.Close(ctx)
			}
		}
		done <- r
	})
	// B either waits for A (a second lock waiter) or is done.
	deadline := time.Now().Add(time.Minute)
	var r result
	got := false
	for !got {
		var waiting int
		if err := holder.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= 2 {
			break
		}
		select {
		case r = <-done:
			got = true
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("event b neither waited nor was recorded in a minute")
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !got {
		r = <-done
	}
	wg.Wait()
	if errA != nil || r.err != nil {
		t.Fatalf("RecordEvent: %v, %v", errA, r.err)
	}
	// seen is Postgres's text form of the array; below's is Go's.
	seen := "[" + strings.ReplaceAll(strings.Trim(r.seen, "{}"), ",", " ") + "]"
	if all := below(r.seq); seen != all {
		t.Errorf("when event b (Seq %d) was recorded, Seqs below it were %s; later %s", r.seq, seen, all)
	}
}
