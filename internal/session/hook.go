package session

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cove-dev/cove/api"
)

// Event is something the session layer does, whoever asked for it: the
// API, or the server on its own (idle parks, wakes on events, pool
// refills, restart recovery) or a guest (cove-agent park, cove-agent
// token). Config.OnEvent is told each one: metrics and the audit log
// consume the same events, so what no API call asked for is neither
// uncounted nor unlogged.
type Event struct {
	Kind  EventKind
	Phase Phase
	// Seq is the same in an action's Begin and Done events.
	Seq   uint64
	Cause Cause
	// Session and Template are what it was done to.
	Session  string
	Template string
	// Trigger is, for a wake on an event, the event's sequence number in
	// the store ("event 12").
	Trigger string
	// Audience is a token's (EventToken).
	Audience string
	// Duration is how long it took (Done).
	Duration time.Duration
	// Bytes is what an EventStore added to the object store, or what an
	// EventEvict freed on this host (Done).
	Bytes int64
	// Err is why it failed (Done); nil if it was done.
	Err error
}

// EventKind says what was done.
type EventKind string

// The kinds of event.
const (
	EventPark    EventKind = "session.park"
	EventWake    EventKind = "session.wake"
	EventToken   EventKind = "token.mint"       // a session identity token for its guest
	EventRecover EventKind = "session.recover"  // a session found at a restart: adopted, or failed (Err)
	EventRefill  EventKind = "template.refill"  // a pool clone made ahead
	EventRebuild EventKind = "template.rebuild" // a template's next version built (a push, the API, a restart)
	EventStore   EventKind = "session.store"    // a parked session's snapshot uploaded to the object store (after its park, or at a restart)
	EventEvict   EventKind = "session.evict"    // a stored parked session's snapshot files removed from this host's cache (Config.CacheSize)
	// A checkpoint taken, and a rollback, that the guest asked for
	// ('cove-agent checkpoint', 'cove-agent rollback'; the API server
	// logs the API's own).
	EventCheckpoint EventKind = "session.checkpoint"
	EventRollback   EventKind = "session.rollback"
)

// Phase says whether an action is about to happen or has ended.
type Phase string

// The phases. A Begin event is told before the action takes effect; an
// OnEvent that returns an error for it refuses the action. A Done event's
// error is only logged: the action has happened.
const (
	Begin Phase = "begin"
	Done  Phase = "done"
)

// Cause says who asked.
type Cause string

// The causes.
const (
	CauseAPI     Cause = "api"     // an API call (the API server logs its own)
	CauseIdle    Cause = "idle"    // idle parking
	CauseEvent   Cause = "event"   // a webhook event or a park --until timeout, delivered
	CauseExec    Cause = "exec"    // an exec into a parked session woke it
	CauseGuest   Cause = "guest"   // a tool in the guest (cove-agent park, token, checkpoint, rollback)
	CauseRestart Cause = "restart" // the server's restart
	CausePool    Cause = "pool"    // a template's warm pool
	CausePark    Cause = "park"    // a park done: its snapshot's upload follows it
	CauseCache   Cause = "cache"   // the node cache over its bound (Config.CacheSize)
	CauseRetry   Cause = "retry"   // a failed upload, tried again
	CauseDrain   Cause = "drain"   // an operator's drain of the session's node
)

// ErrRefused is wrapped by the error of an action that Config.OnEvent
// refused before it took effect (an audit log that cannot record it);
// such an error is also an *api.Error with CodeUnavailable.
var ErrRefused = errors.New("refused by the event hook")

type refusedError struct{ api, hook error }

func (e *refusedError) Error() string   { return e.api.Error() }
func (e *refusedError) Unwrap() []error { return []error{e.api, ErrRefused, e.hook} }

var eventSeq atomic.Uint64

// begin tells Config.OnEvent that ev is about to happen; an error refuses
// it. It returns ev with its Seq, for done.
func (m *Manager) beginEvent(ctx context.Context, ev Event) (Event, error) {
	ev.Phase, ev.Seq = Begin, eventSeq.Add(1)
	if m.cfg.OnEvent == nil {
		return ev, nil
	}
	if err := m.cfg.OnEvent(ctx, ev); err != nil {
		what := string(ev.Kind) + " " + ev.Session + ev.Template
		return ev, &refusedError{api.Errorf(api.CodeUnavailable, "audit log unavailable: %s refused, as it cannot be recorded: %v", what, err), err}
	}
	return ev, nil
}

// doneEvent tells Config.OnEvent that ev ended, after d, with err.
func (m *Manager) doneEvent(ctx context.Context, ev Event, start time.Time, err error) {
	if m.cfg.OnEvent == nil {
		return
	}
	ev.Phase, ev.Duration, ev.Err = Done, time.Since(start), err
	if herr := m.cfg.OnEvent(context.WithoutCancel(ctx), ev); herr != nil {
		m.cfg.Log.Warn("event hook: an action's end not recorded", "event", ev.Kind, "session", ev.Session, "err", herr)
	}
}

// ObserveDurations is an OnEvent that tells park and wake the duration of
// each park and wake done (the metrics' histograms), whatever caused it.
func ObserveDurations(park, wake func(time.Duration)) func(context.Context, Event) error {
	return func(_ context.Context, ev Event) error {
		if ev.Phase != Done || ev.Err != nil {
			return nil
		}
		switch ev.Kind {
		case EventPark:
			park(ev.Duration)
		case EventWake:
			wake(ev.Duration)
		}
		return nil
	}
}

// ObserveStores is an OnEvent that tells store the duration of each
// snapshot upload done (EventStore) and the bytes it added to the object
// store.
func ObserveStores(store func(time.Duration, int64)) func(context.Context, Event) error {
	return func(_ context.Context, ev Event) error {
		if ev.Phase == Done && ev.Err == nil && ev.Kind == EventStore {
			store(ev.Duration, ev.Bytes)
		}
		return nil
	}
}

// ObserveEvictions is an OnEvent that tells evict the bytes each eviction
// from the node cache freed (EventEvict, done).
func ObserveEvictions(evict func(bytes int64)) func(context.Context, Event) error {
	return func(_ context.Context, ev Event) error {
		if ev.Phase == Done && ev.Err == nil && ev.Kind == EventEvict {
			evict(ev.Bytes)
		}
		return nil
	}
}

// Hooks is an OnEvent that tells each of hooks, in order; the first error
// is returned, and a Begin refused by one is not told to the rest.
func Hooks(hooks ...func(context.Context, Event) error) func(context.Context, Event) error {
	return func(ctx context.Context, ev Event) error {
		var errs []error
		for _, h := range hooks {
			if err := h(ctx, ev); err != nil {
				if ev.Phase == Begin {
					return err
				}
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("event hooks: %w", errors.Join(errs...))
		}
		return nil
	}
}
