package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// Compare-and-swap on generations, and leases.

func (s *suite) runGen(t *testing.T) {
	s.run(t, "GenStartsAtOneAndAdvances", s.genStartsAtOne)
	s.run(t, "StaleUpdateConflicts", s.staleUpdateConflicts)
	s.run(t, "ConcurrentUpdatersOneWins", s.concurrentUpdatersOneWins)
	s.run(t, "TemplateStaleUpdateConflicts", s.templateStaleUpdateConflicts)
	s.run(t, "LeaseOneOwner", s.leaseOneOwner)
	s.run(t, "LeaseConcurrentClaimsOneWins", s.leaseConcurrentClaims)
	s.run(t, "LeaseExpires", s.leaseExpires)
	s.run(t, "LeaseRelease", s.leaseRelease)
	s.run(t, "LeaseOfDeadOwnerExpires", s.leaseOfDeadOwner)
	s.run(t, "LeaseBadArguments", s.leaseBadArguments)
}

func wantGen(t *testing.T, st store.Store, id string, want int64) {
	t.Helper()
	got, err := st.GetSession(t.Context(), id)
	if err != nil {
		t.Fatalf("GetSession(%q): %v", id, err)
	}
	if got.Gen != want {
		t.Fatalf("GetSession(%q).Gen = %d, want %d", id, got.Gen, want)
	}
}

// CreateSession stores generation 1 whatever the copy says, and tells
// the copy; each UpdateSession advances it by one, in the store and in
// the caller's copy; a reopened store keeps it.
func (s *suite) genStartsAtOne(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	sess := fullSession("g")
	sess.Gen = 42
	if err := st.CreateSession(t.Context(), &sess); err != nil {
		st.Close()
		t.Fatalf("CreateSession: %v", err)
	}
	if sess.Gen != 1 {
		t.Errorf("CreateSession left the copy's Gen %d, want 1", sess.Gen)
	}
	wantGen(t, st, "g", 1)
	for want := int64(2); want <= 3; want++ {
		sess.State = fmt.Sprintf("state-%d", want)
		if err := st.UpdateSession(t.Context(), &sess); err != nil {
			st.Close()
			t.Fatalf("UpdateSession #%d: %v", want-1, err)
		}
		if sess.Gen != want {
			t.Errorf("UpdateSession #%d set the copy's Gen to %d, want %d", want-1, sess.Gen, want)
		}
		wantGen(t, st, "g", want)
	}
	// The atomic token calls change only their columns, not the
	// generation: a copy read before them still updates.
	if _, err := st.BumpTokenGen(t.Context(), "g"); err != nil {
		t.Fatalf("BumpTokenGen: %v", err)
	}
	if _, err := st.RevokeSessionTokens(t.Context(), "g", at(9)); err != nil {
		t.Fatalf("RevokeSessionTokens: %v", err)
	}
	wantGen(t, st, "g", 3)
	if err := st.UpdateSession(t.Context(), &sess); err != nil {
		t.Fatalf("UpdateSession after BumpTokenGen: %v", err)
	}
	tm := fullTemplate("t")
	tm.Gen = 7
	if err := st.CreateTemplate(t.Context(), &tm); err != nil {
		t.Fatalf("CreateTemplate: %v", err)
	}
	if got, err := st.GetTemplate(t.Context(), "t"); err != nil || got.Gen != 1 || tm.Gen != 1 {
		t.Fatalf("CreateTemplate: stored Gen %d (%v), copy's %d; want 1 and 1", got.Gen, err, tm.Gen)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantGen(t, s.openIn(t, dir), "g", 4)
}

// An update from a copy read before another update, or from a record
// built without reading (Gen 0), fails with ErrConflict and changes
// nothing; a fresh read then updates.
func (s *suite) staleUpdateConflicts(t *testing.T) {
	st := s.fresh(t)
	orig := fullSession("c")
	mustCreate(t, st, orig)
	a, err := st.GetSession(t.Context(), "c")
	if err != nil {
		t.Fatal(err)
	}
	b := a // the same read, by another writer
	a.State, a.Error = "parking", ""
	if err := st.UpdateSession(t.Context(), &a); err != nil {
		t.Fatalf("first UpdateSession: %v", err)
	}
	b.State, b.Error = "failed", "someone else's idea"
	err = st.UpdateSession(t.Context(), &b)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateSession from a stale copy = %v, want ErrConflict", err)
	}
	if b.Gen != 1 {
		t.Errorf("a failed UpdateSession changed the copy's Gen to %d, want 1", b.Gen)
	}
	wantSession(t, st, a)
	wantGen(t, st, "c", 2)

	blind := fullSession("c") // built, not read: Gen 0
	blind.State = "failed"
	if err := st.UpdateSession(t.Context(), &blind); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateSession from a copy never read = %v, want ErrConflict", err)
	}
	wantSession(t, st, a)

	fresh, err := st.GetSession(t.Context(), "c")
	if err != nil {
		t.Fatal(err)
	}
	fresh.State = "parked"
	if err := st.UpdateSession(t.Context(), &fresh); err != nil {
		t.Fatalf("UpdateSession from a fresh read: %v", err)
	}
	wantSession(t, st, fresh)
	wantGen(t, st, "c", 3)

	// A missing session is still ErrNotFound, whatever the Gen.
	ghost := fullSession("ghost")
	ghost.Gen = 1
	if err := st.UpdateSession(t.Context(), &ghost); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateSession(missing) = %v, want ErrNotFound", err)
	}
}

// Two writers, each with its own store over the same data, update from
// the same read at once: exactly one wins, the other gets ErrConflict,
// and the record is the winner's; round after round.
func (s *suite) concurrentUpdatersOneWins(t *testing.T) {
	dir := t.TempDir()
	st1 := s.openIn(t, dir)
	st2 := s.openIn(t, dir) // a second store (a second server) at once
	mustCreate(t, st1, fullSession("race"))
	const rounds = 20
	for round := range rounds {
		read, err := st1.GetSession(t.Context(), "race")
		if err != nil {
			t.Fatal(err)
		}
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  [2]error
			recs  [2]store.Session
		)
		for i, st := range []store.Store{st1, st2} {
			recs[i] = read
			recs[i].Error = fmt.Sprintf("writer %d, round %d", i, round)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = st.UpdateSession(t.Context(), &recs[i])
			}()
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if won >= 0 {
					t.Fatalf("round %d: both writers won from the same read", round)
				}
				won = i
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("round %d: writer %d: %v, want nil or ErrConflict", round, i, err)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: neither writer won: %v", round, errs)
		}
		wantSession(t, st2, recs[won])
		wantGen(t, st1, "race", read.Gen+1)
	}
}

// Templates: UpdateTemplate and SwapTemplateVersion from a stale copy
// fail with ErrConflict; the swap then writes no version either.
func (s *suite) templateStaleUpdateConflicts(t *testing.T) {
	st := s.fresh(t)
	mustCreateTemplate(t, st, fullTemplate("tc"))
	a, err := st.GetTemplate(t.Context(), "tc")
	if err != nil {
		t.Fatal(err)
	}
	b := a
	a.State = "building"
	if err := st.UpdateTemplate(t.Context(), &a); err != nil {
		t.Fatalf("UpdateTemplate: %v", err)
	}
	if a.Gen != 2 {
		t.Errorf("UpdateTemplate set the copy's Gen to %d, want 2", a.Gen)
	}
	b.State = "failed"
	if err := st.UpdateTemplate(t.Context(), &b); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateTemplate from a stale copy = %v, want ErrConflict", err)
	}
	wantTemplate(t, st, a)

	b.Version = 2
	if err := st.SwapTemplateVersion(t.Context(), &b, fullVersion("tc", 2)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("SwapTemplateVersion from a stale copy = %v, want ErrConflict", err)
	}
	wantTemplate(t, st, a)
	wantVersions(t, st, "tc")

	a.Version = 2
	if err := st.SwapTemplateVersion(t.Context(), &a, fullVersion("tc", 2)); err != nil {
		t.Fatalf("SwapTemplateVersion: %v", err)
	}
	if a.Gen != 3 {
		t.Errorf("SwapTemplateVersion set the copy's Gen to %d, want 3", a.Gen)
	}
	wantTemplate(t, st, a)
	wantVersions(t, st, "tc", fullVersion("tc", 2))
	ghost := fullTemplate("ghost")
	ghost.Gen = 1
	if err := st.UpdateTemplate(t.Context(), &ghost); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateTemplate(missing) = %v, want ErrNotFound", err)
	}
}

func claim(t *testing.T, st store.Store, key, owner string, ttl time.Duration) bool {
	t.Helper()
	ok, err := st.Claim(t.Context(), key, owner, ttl)
	if err != nil {
		t.Fatalf("Claim(%q, %q): %v", key, owner, err)
	}
	return ok
}

// One owner holds a lease until it lets go; it renews its own; other keys
// are leases of their own.
func (s *suite) leaseOneOwner(t *testing.T) {
	st := s.fresh(t)
	if !claim(t, st, "build/a", "one", time.Hour) {
		t.Fatal("Claim of a free lease = false")
	}
	if claim(t, st, "build/a", "two", time.Hour) {
		t.Fatal("a second owner claimed a held lease")
	}
	if !claim(t, st, "build/a", "one", time.Hour) {
		t.Fatal("the holder could not renew its lease")
	}
	if !claim(t, st, "build/b", "two", time.Hour) {
		t.Fatal("a lease of another key was refused")
	}
	if claim(t, st, "build/b", "one", time.Hour) {
		t.Fatal("the other key's lease was taken from its holder")
	}
}

// Owners claiming one free lease at once, each through its own store
// over the same data: exactly one gets it, round after round.
func (s *suite) leaseConcurrentClaims(t *testing.T) {
	dir := t.TempDir()
	stores := []store.Store{s.openIn(t, dir), s.openIn(t, dir)}
	const owners, rounds = 8, 10
	for round := range rounds {
		key := fmt.Sprintf("deliver/%d", round)
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			got   [owners]bool
			errs  [owners]error
		)
		for i := range owners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				got[i], errs[i] = stores[i%2].Claim(t.Context(), key, fmt.Sprintf("owner-%d", i), time.Hour)
			}()
		}
		close(start)
		wg.Wait()
		n := 0
		for i := range owners {
			if errs[i] != nil {
				t.Fatalf("round %d: owner %d: %v", round, i, errs[i])
			}
			if got[i] {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("round %d: %d owners got the lease, want 1", round, n)
		}
	}
}

// waitClaim claims key for owner until it gets it, failing t after a
// generous deadline.
func waitClaim(t *testing.T, st store.Store, key, owner string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !claim(t, st, key, owner, time.Hour) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never got the lease %q", owner, key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A lease whose ttl passed is free: another owner takes it over, and the
// first cannot renew it then.
func (s *suite) leaseExpires(t *testing.T) {
	st := s.fresh(t)
	if !claim(t, st, "timeout/x", "one", 50*time.Millisecond) {
		t.Fatal("Claim of a free lease = false")
	}
	waitClaim(t, st, "timeout/x", "two")
	if claim(t, st, "timeout/x", "one", time.Hour) {
		t.Fatal("the lease's first owner took it back from the second, whose ttl had not passed")
	}
}

// Release frees the lease at once; releasing one held by another, or
// none, is no error and changes nothing.
func (s *suite) leaseRelease(t *testing.T) {
	st := s.fresh(t)
	if !claim(t, st, "pool/p", "one", time.Hour) {
		t.Fatal("Claim of a free lease = false")
	}
	if err := st.Release(t.Context(), "pool/p", "two"); err != nil {
		t.Fatalf("Release by a non-holder: %v", err)
	}
	if claim(t, st, "pool/p", "two", time.Hour) {
		t.Fatal("a release by a non-holder freed the lease")
	}
	if err := st.Release(t.Context(), "pool/p", "one"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !claim(t, st, "pool/p", "two", time.Hour) {
		t.Fatal("a released lease could not be claimed")
	}
	if err := st.Release(t.Context(), "never/claimed", "one"); err != nil {
		t.Fatalf("Release of a lease never claimed: %v", err)
	}
}

// The holder's store goes away (a server that died holding a lease, never
// releasing it): once its ttl passes, another server takes the lease; the
// lease survives a reopen until then.
func (s *suite) leaseOfDeadOwner(t *testing.T) {
	dir := t.TempDir()
	dead := s.open(t, dir)
	if ok, err := dead.Claim(t.Context(), "build/t", "dead", 200*time.Millisecond); err != nil || !ok {
		dead.Close()
		t.Fatalf("Claim = %v, %v; want true", ok, err)
	}
	if ok, err := dead.Claim(t.Context(), "pool/t", "dead", time.Hour); err != nil || !ok {
		dead.Close()
		t.Fatalf("Claim = %v, %v; want true", ok, err)
	}
	if err := dead.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	other := s.openIn(t, dir)
	if claim(t, other, "pool/t", "alive", time.Hour) {
		t.Fatal("a lease whose ttl had not passed was lost in a reopen")
	}
	waitClaim(t, other, "build/t", "alive")
}

// Empty keys or owners and ttls that are not positive fail.
func (s *suite) leaseBadArguments(t *testing.T) {
	st := s.fresh(t)
	for _, c := range []struct {
		key, owner string
		ttl        time.Duration
	}{{"", "o", time.Second}, {"k", "", time.Second}, {"k", "o", 0}, {"k", "o", -time.Second}} {
		if ok, err := st.Claim(t.Context(), c.key, c.owner, c.ttl); err == nil {
			t.Errorf("Claim(%q, %q, %v) = %v, nil; want an error", c.key, c.owner, c.ttl, ok)
		}
	}
	if !claim(t, st, "k", "o", time.Hour) {
		t.Error("bad claims left the lease taken")
	}
}
