package session

import (
	"context"
	"sync"

	"github.com/cove-dev/cove/internal/store"
)

// changes tells subscribers that a session's record changed on this
// manager (created, its state or anything else written, removed): the
// dashboard's list is pushed by it (GET /v1/sessions/watch) instead of
// polled. A signal says only "something changed"; a subscriber that is
// behind gets one for many, and reads the list again.
type changes struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default: // one pending signal stands for this one too
		}
	}
}

// Changes implements apiserver.SessionChanges: a channel that receives a
// signal after the session records this manager writes change, and a
// func that ends the subscription. Changes made by another server
// sharing the store are told too where the store has a feed of them
// (store.SessionFeed: PostgreSQL's LISTEN/NOTIFY), within a round trip
// of their commit; with none (SQLite, one server's) only this
// manager's own are.
func (m *Manager) Changes() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c := &m.changes
	c.mu.Lock()
	if c.subs == nil {
		c.subs = map[chan struct{}]struct{}{}
	}
	c.subs[ch] = struct{}{}
	c.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			c.mu.Lock()
			delete(c.subs, ch)
			c.mu.Unlock()
		})
	}
}

// changeStore is the manager's store, telling changes after each write
// of a session record: every path that changes a session goes through
// one of these three, so none is missed.
type changeStore struct {
	store.Store
	c *changes
}

func (s changeStore) CreateSession(ctx context.Context, rec *store.Session) error {
	err := s.Store.CreateSession(ctx, rec)
	if err == nil {
		s.c.notify()
	}
	return err
}

func (s changeStore) UpdateSession(ctx context.Context, rec *store.Session) error {
	err := s.Store.UpdateSession(ctx, rec)
	if err == nil {
		s.c.notify()
	}
	return err
}

func (s changeStore) DeleteSession(ctx context.Context, id string) error {
	err := s.Store.DeleteSession(ctx, id)
	if err == nil {
		s.c.notify()
	}
	return err
}

// followOthers tells the subscribers of Changes of the session records
// other servers sharing the store write, where the store has a feed of
// them (store.SessionFeed: PostgreSQL), until the manager stops.
func (m *Manager) followOthers(feed store.SessionFeed) {
	defer m.bg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-m.stop
		cancel()
	}()
	_ = feed.FollowSessions(ctx, m.changes.notify) // returns when the manager stops
}
