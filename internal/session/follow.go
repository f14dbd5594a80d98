package session

import (
	"context"
	"errors"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// A record that follows its VM.
//
// A park, a wake and their roll-backs end by recording what they did to
// the session's VM: parked once its snapshot is complete and its VMM
// gone, running once the woken guest runs, running again after a park
// that was given up. When the store refuses that write because it cannot
// be used for now (a full disk, a database restarting), the VM has moved
// on all the same, and the record must follow it once the store is back,
// not only at the next server start: recordFollows writes it again in the
// background until the store takes it.

// followRetry is the pause between a lagging record's writes, at first;
// it doubles up to followRetryMax.
var (
	followRetry    = 500 * time.Millisecond
	followRetryMax = 10 * time.Second
)

// recordFollows writes rec, which says what was already done to session
// rec.ID's VM, again and again in the background until the store takes
// it, the manager stops, or the write can never succeed: the record
// changed since rec was read (another write won its compare-and-swap:
// the session moved on) or is gone.
func (m *Manager) recordFollows(rec store.Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.stop:
		return // the next server settles it from what it finds
	default:
	}
	m.bg.Add(1) // under mu: never after stopLoops closed stop
	go func() {
		defer m.bg.Done()
		log := m.cfg.Log.With("session", rec.ID, "state", rec.State)
		log.Warn("the session's record lags behind its VM; writing it again until the state store takes it")
		pause := followRetry
		for {
			select {
			case <-m.stop:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, followRetryMax)
			r := rec
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := m.cfg.Store.UpdateSession(ctx, &r)
			cancel()
			switch {
			case err == nil:
				log.Info("the session's record follows its VM again")
				return
			case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
				log.Warn("the session's lagging record was overtaken; left as it is now", "err", err)
				return
			}
		}
	}()
}
