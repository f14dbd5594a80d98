package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/store"
)

// sessionsChannel is the channel migration 15's trigger notifies after
// each statement that writes session records.
const sessionsChannel = "cove_sessions"

var _ store.SessionFeed = (*Store)(nil)

// Bounds of the wait between attempts to listen again after the feed's
// connection was lost.
const (
	feedRetryFirst = 500 * time.Millisecond
	feedRetryMost  = 30 * time.Second
)

// FollowSessions implements store.SessionFeed: it listens on a
// connection of its own, outside the pool (a LISTEN holds its
// connection for as long as it lasts, and the pool's are few), with the
// pool's settings, dead-peer detection included. A lost connection is
// made again, 0.5 s doubling to 30 s apart, and changed is called once
// it listens again.
func (s *Store) FollowSessions(ctx context.Context, changed func()) error {
	wait := feedRetryFirst
	for again := false; ; again = true {
		listening, err := s.listen(ctx, changed, again)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if listening {
			wait = feedRetryFirst
		}
		_ = err // the next attempt tells; a store that stays away is told by every query
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, feedRetryMost)
	}
}

// listen connects, listens on sessionsChannel and calls changed for
// each notification until the connection fails or ctx ends; again says
// that an earlier connection was lost (changed is called once this one
// listens). listening reports whether it got as far as listening.
func (s *Store) listen(ctx context.Context, changed func(), again bool) (listening bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return false, fmt.Errorf("postgres: session feed: connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+sessionsChannel); err != nil {
		return false, fmt.Errorf("postgres: session feed: listen: %w", err)
	}
	if again {
		changed()
	}
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return true, fmt.Errorf("postgres: session feed: %w", err)
		}
		changed()
	}
}
