package session

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/cove-dev/cove/api"
)

// Bounds on what a guest asks for itself.
//
// A guest's checkpoint copies its RAM file and a rollback stages one:
// seconds of the host's disk each. The guest is not trusted to ask
// sparingly, so its requests are bounded three ways: a session holds at
// most Config.MaxCheckpoints checkpoints (the API's count too: a guest
// cannot remove any); its guest's checkpoint and rollback requests pass a
// token bucket (Config.GuestCheckpointBurst at once, then one per
// Config.GuestCheckpointEvery), the rest refused with nothing done; and
// at most Config.GuestCheckpointsAtOnce of them run at once on the host,
// the others waiting their turn (a guest's requests are served one at a
// time, so the waiters are at most one per session). API requests are the owner's,
// bounded by policy, and not counted here.

// DefaultMaxCheckpoints is Config.MaxCheckpoints's default.
const DefaultMaxCheckpoints = 32

// Defaults of Config.GuestCheckpointBurst, GuestCheckpointEvery and
// GuestCheckpointsAtOnce.
const (
	DefaultGuestCheckpointBurst   = 8
	DefaultGuestCheckpointEvery   = 15 * time.Second
	DefaultGuestCheckpointsAtOnce = 2
)

func (m *Manager) maxCheckpoints() int {
	if m.cfg.MaxCheckpoints > 0 {
		return m.cfg.MaxCheckpoints
	}
	return DefaultMaxCheckpoints
}

// guestAllowed takes a token of session id's guest request bucket, or
// says why not.
func (m *Manager) guestAllowed(id, kind string) error {
	burst, every := m.cfg.GuestCheckpointBurst, m.cfg.GuestCheckpointEvery
	if burst <= 0 {
		burst = DefaultGuestCheckpointBurst
	}
	if every <= 0 {
		every = DefaultGuestCheckpointEvery
	}
	m.mu.Lock()
	lim := m.guestRate[id]
	if lim == nil {
		lim = rate.NewLimiter(rate.Every(every), burst)
		m.guestRate[id] = lim
	}
	m.mu.Unlock()
	if !lim.Allow() {
		return api.Errorf(api.CodeConflict, "%s: too many checkpoint and rollback requests from the guest: %d at once, then one every %s; nothing done",
			kind, burst, every)
	}
	return nil
}

// guestTurn waits for a slot of the host's guest checkpoint and rollback
// work; done gives it back.
func (m *Manager) guestTurn(ctx context.Context) (done func(), err error) {
	select {
	case m.guestWork <- struct{}{}:
		return func() { <-m.guestWork }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
