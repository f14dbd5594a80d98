package session

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"time"
)

// Work claimed in the store.
//
// Several servers may share one store. Work that one of them must do
// alone is claimed first, as a lease in the store (store.Store.Claim)
// whose owner is this manager's ServerID: a server that finds the lease
// held by another skips the work, and one that dies holding it lets go
// when the lease expires, so the next round of another server does it.
// The holder renews its lease while the work lasts; a lease it loses
// (a renewal refused, or failing for a whole ttl) cancels the work's
// context. The kinds of work, by key:
//
//   - deliver/SESSION: the pending deliveries of a session, in order. The
//     work is a queue of rows, but delivering one wakes a VM (seconds):
//     a lease, not a row lock held by an open transaction, so that no
//     transaction spans a wake and SQLite has the same contract.
//   - timeout/SESSION: recording a subscription's timeout event.
//   - park/SESSION: an idle park.
//   - build/TEMPLATE: a template's build (create, rebuild), and the
//     restart's clean-up of builds cut short: a server starting while
//     another builds leaves that build alone.
//   - gc: a garbage collection of the object store (gc.go).
//   - pool/TEMPLATE: keeping the template's warm pool. The holder keeps
//     it (renewing the lease for as long as its pool runs); the other
//     servers keep none, and take over once the lease is free.
//
// Every kind is safe to do again after a holder died midway: deliveries
// check the guest for the event first, timeout events are recorded once
// by their id, and the records' writes are compare-and-swap on their
// generation, so a holder that lost its lease cannot overwrite what the
// next one wrote.

// defaultLeaseTTL is how long a claim lasts unless renewed.
const defaultLeaseTTL = 30 * time.Second

// errLeaseLost is the cause of a lease's context when the lease is lost.
var errLeaseLost = errors.New("the claim of this work was lost to another server")

// newServerID is a random id for a manager that was given none.
func newServerID() string { return "srv-" + rand.Text()[:12] }

// leaseTTL is how long this manager's claims last unless renewed.
func (m *Manager) leaseTTL() time.Duration {
	if m.cfg.LeaseTTL > 0 {
		return m.cfg.LeaseTTL
	}
	return defaultLeaseTTL
}

// lease claims the work named key for this manager and renews the claim
// in the background until release is called. ok is false when another
// server holds it, or when the store cannot say (logged): the work is
// skipped, and tried again on its next round. The returned context,
// derived from ctx, is done when the lease is lost. release ends the
// renewal and frees the lease; it must be called once ok is true.
func (m *Manager) lease(ctx context.Context, key string) (lctx context.Context, release func(), ok bool) {
	// This manager's own claims are not taken twice: the store would
	// renew the first for the second, whose release would end both.
	m.mu.Lock()
	mine := m.leases[key]
	m.leases[key] = true
	m.mu.Unlock()
	if mine {
		m.cfg.Log.Debug("work under way here; skipped", "key", key, "server", m.cfg.ServerID)
		return ctx, func() {}, false
	}
	forget := func() {
		m.mu.Lock()
		delete(m.leases, key)
		m.mu.Unlock()
	}
	ttl := m.leaseTTL()
	ok, err := m.cfg.Store.Claim(ctx, key, m.cfg.ServerID, ttl)
	if err != nil {
		forget()
		m.cfg.Log.Warn("claim work", "key", key, "err", err)
		return ctx, func() {}, false
	}
	if !ok {
		forget()
		m.cfg.Log.Debug("work held by another server; skipped", "key", key, "server", m.cfg.ServerID)
		return ctx, func() {}, false
	}
	lctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.renew(lctx, key, ttl, stop, cancel)
	}()
	var once sync.Once
	return lctx, func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			rctx, done := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer done()
			if err := m.cfg.Store.Release(rctx, key, m.cfg.ServerID); err != nil {
				m.cfg.Log.Warn("release claimed work; it is free once its claim expires", "key", key, "err", err)
			}
			forget()
			cancel(nil)
		})
	}, true
}

// renew claims key again every third of ttl until stop is closed or ctx
// is done, and cancels ctx with errLeaseLost once another server holds
// it, or no renewal succeeded for a whole ttl.
func (m *Manager) renew(ctx context.Context, key string, ttl time.Duration, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ok, err := m.cfg.Store.Claim(ctx, key, m.cfg.ServerID, ttl)
		switch {
		case err == nil && ok:
			last = time.Now()
			continue
		case err == nil:
			m.cfg.Log.Warn("claimed work taken over by another server; stopping it", "key", key)
		case time.Since(last) < ttl:
			m.cfg.Log.Warn("renew claimed work; trying again", "key", key, "err", err)
			continue
		default:
			m.cfg.Log.Warn("claimed work not renewed for its whole claim; stopping it", "key", key, "err", err)
		}
		cancel(errLeaseLost)
		return
	}
}
