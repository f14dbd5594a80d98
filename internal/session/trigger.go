package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// Triggers.
//
// ParkUntil records the session's subscription (durably, before anything
// else) and parks it. Incoming events reach Accept (the webhook receiver's
// sink): the subscription index names the sessions whose expressions
// match, and the store records the event and a pending delivery for each of
// them in one transaction, removing their subscriptions (an event
// satisfies a subscription once). Only then is the sender answered. A
// deliverer then wakes each session and writes the event into the guest's
// events directory (agent.EventsDir), where 'cove-agent event wait' takes
// it, and marks the delivery delivered. Deliveries are retried after a
// restart; an event that arrives while its session is still parking waits
// for the park (the session's lifecycle lock) and then wakes it.

// timeoutSource names the events cove itself makes when a subscription's
// deadline passes.
const timeoutSource = "cove"

// ParkUntil parks the session until an incoming event matches one of the
// expressions, or until timeout passes (0: no timeout); then it is woken
// and the event is delivered into the guest.
func (m *Manager) ParkUntil(ctx context.Context, id string, until []string, timeout time.Duration) (api.Session, error) {
	return m.parkUntil(ctx, id, until, timeout, CauseAPI)
}

// parkUntil is ParkUntil for cause (see Event).
func (m *Manager) parkUntil(ctx context.Context, id string, until []string, timeout time.Duration, cause Cause) (api.Session, error) {
	var exprs []trigger.Expr
	for _, s := range until {
		e, err := trigger.Parse(s)
		if err != nil {
			return api.Session{}, api.Errorf(api.CodeInvalid, "%s", err.Error())
		}
		exprs = append(exprs, e)
	}
	if len(exprs) == 0 && timeout <= 0 {
		return m.park(ctx, id, cause)
	}
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return api.Session{}, notFound(id, err)
	}
	if rec.State != api.StateRunning && rec.State != api.StateParked {
		return api.Session{}, api.Errorf(api.CodeConflict, "park %s: session is %s", id, rec.State)
	}
	now := time.Now().UTC()
	sub := store.Subscription{SessionID: id, Until: until, CreatedAt: now}
	if timeout > 0 {
		sub.Deadline = now.Add(timeout)
	}
	if err := m.cfg.Store.PutSubscription(ctx, sub); err != nil {
		return api.Session{}, fmt.Errorf("session: park %s: record subscription: %w", id, err)
	}
	m.subscribe(id, exprs, sub.Deadline)
	return m.park(ctx, id, cause)
}

// Accept records an incoming event and the deliveries it causes; it is
// the webhook receiver's sink (trigger.Sink).
func (m *Manager) Accept(ctx context.Context, ev trigger.Event) (bool, error) {
	if m.cfg.Route {
		// Another server's sessions subscribe through it: the index
		// learns theirs from the store first. An entry removed since
		// costs nothing (RecordEvent delivers only to a subscription
		// still stored).
		if err := m.loadSubscriptions(ctx); err != nil {
			return false, err
		}
	}
	sessions := m.index.Match(ev)
	_, delivered, dup, err := m.cfg.Store.RecordEvent(ctx, storeEvent(ev), sessions)
	if err != nil {
		return false, fmt.Errorf("session: record event: %w", err)
	}
	if dup {
		return true, nil
	}
	m.onPush(ev)
	for _, id := range delivered {
		m.unsubscribe(id)
	}
	if len(delivered) > 0 {
		m.kickDeliveries()
	}
	return false, nil
}

func storeEvent(ev trigger.Event) store.Event {
	return store.Event{Source: ev.Source, ID: ev.ID, Name: ev.Name, Fields: ev.Fields, Body: ev.Body, Received: ev.Received.UTC()}
}

// loadSubscriptions fills the index from the store (after a restart).
func (m *Manager) loadSubscriptions(ctx context.Context) error {
	subs, err := m.cfg.Store.ListSubscriptions(ctx)
	if err != nil {
		return fmt.Errorf("session: subscriptions: %w", err)
	}
	for _, s := range subs {
		var exprs []trigger.Expr
		for _, u := range s.Until {
			if e, err := trigger.Parse(u); err == nil {
				exprs = append(exprs, e)
			}
		}
		m.subscribe(s.SessionID, exprs, s.Deadline)
	}
	return nil
}

// subscribe indexes a session's subscription and remembers its deadline
// (zero: none), replacing any earlier one.
func (m *Manager) subscribe(id string, exprs []trigger.Expr, deadline time.Time) {
	m.index.Add(trigger.Subscription{ID: id, Exprs: exprs})
	m.mu.Lock()
	defer m.mu.Unlock()
	if deadline.IsZero() {
		delete(m.deadlines, id)
	} else {
		m.deadlines[id] = deadline
	}
}

// unsubscribe forgets a session's subscription (satisfied or removed).
func (m *Manager) unsubscribe(id string) {
	m.index.Remove(id)
	m.mu.Lock()
	delete(m.deadlines, id)
	m.mu.Unlock()
}

func (m *Manager) kickDeliveries() {
	select {
	case m.deliver <- struct{}{}:
	default:
	}
}

// deliverLoop delivers pending events and fires timeouts, on every kick
// and once a second.
func (m *Manager) deliverLoop() {
	defer m.bg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var mu sync.Mutex
	busy := map[string]bool{} // guarded by mu: sessions being delivered to
	for {
		select {
		case <-m.stop:
			return
		case <-m.deliver:
		case <-tick.C:
			m.fireTimeouts()
		}
		ds, err := m.cfg.Store.ListDeliveries(context.Background(), store.DeliveryPending)
		if err != nil {
			m.cfg.Log.Warn("list deliveries", "err", err)
			continue
		}
		// The sessions with pending deliveries, in the order of their
		// first; deliverTo reads each one's deliveries again.
		seen := map[string]bool{}
		var order []string
		for _, d := range ds {
			if !seen[d.SessionID] {
				seen[d.SessionID] = true
				order = append(order, d.SessionID)
			}
		}
		for _, id := range order {
			mu.Lock()
			if busy[id] {
				mu.Unlock()
				continue
			}
			busy[id] = true
			mu.Unlock()
			m.bg.Add(1)
			go func(id string) {
				defer m.bg.Done()
				defer func() { mu.Lock(); delete(busy, id); mu.Unlock() }()
				m.deliverTo(id)
			}(id)
		}
	}
}

// deliverTo delivers the pending deliveries of session id, in arrival
// order, under the claim deliver/ID (see claim.go): another server
// holding it is delivering them. They are read again once claimed: a
// list read before may name deliveries that server has made since.
func (m *Manager) deliverTo(id string) {
	if !m.deliversFor(context.Background(), id) {
		return // the server of the node that holds it delivers
	}
	ctx, release, ok := m.lease(context.Background(), "deliver/"+id)
	if !ok {
		return
	}
	defer release()
	m.crashPoint("deliver.claimed")
	ds, err := m.cfg.Store.ListDeliveries(ctx, store.DeliveryPending)
	if err != nil {
		m.cfg.Log.Warn("list deliveries", "session", id, "err", err)
		return
	}
	for _, d := range ds {
		if d.SessionID != id {
			continue
		}
		if ctx.Err() != nil {
			return // the claim was lost: the next holder delivers the rest
		}
		m.deliverOne(ctx, d)
	}
}

// fireTimeouts records a timeout event for every subscription whose
// deadline passed. The deadlines are kept in memory (see subscribe), so a
// tick costs no store query while none is due.
func (m *Manager) fireTimeouts() {
	ctx := context.Background()
	now := time.Now()
	var due []string
	m.mu.Lock()
	for id, d := range m.deadlines {
		if !now.Before(d) {
			due = append(due, id)
		}
	}
	m.mu.Unlock()
	for _, id := range due {
		m.fireTimeout(ctx, id, now)
	}
}

// fireTimeout records the timeout event of session id's subscription if
// its deadline passed, under the claim timeout/ID (see claim.go).
func (m *Manager) fireTimeout(ctx context.Context, id string, now time.Time) {
	ctx, release, ok := m.lease(ctx, "timeout/"+id)
	if !ok {
		return
	}
	defer release()
	s, err := m.cfg.Store.GetSubscription(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		m.unsubscribe(id)
		return
	}
	if err != nil || s.Deadline.IsZero() || now.Before(s.Deadline) {
		return
	}
	body, _ := json.Marshal(map[string]any{"session": s.SessionID, "until": s.Until, "deadline": s.Deadline})
	ev := trigger.Event{Source: timeoutSource, Name: "timeout", ID: "timeout:" + s.SessionID + ":" + s.CreatedAt.Format(time.RFC3339Nano),
		Fields: map[string]string{"session": s.SessionID}, Body: body, Received: now}
	_, delivered, _, err := m.cfg.Store.RecordEvent(ctx, storeEvent(ev), []string{s.SessionID})
	if err != nil {
		m.cfg.Log.Warn("record timeout", "session", s.SessionID, "err", err)
		return
	}
	for _, id := range delivered {
		m.unsubscribe(id)
	}
	m.kickDeliveries()
}

// guestEvent is what the guest finds in its events directory.
type guestEvent struct {
	Seq      int64             `json:"seq"`
	Source   string            `json:"source"`
	Name     string            `json:"name"`
	ID       string            `json:"id"`
	Fields   map[string]string `json:"fields,omitempty"`
	Received time.Time         `json:"received"`
	Body     json.RawMessage   `json:"body,omitempty"`
}

// deliverOne wakes the session and writes the event into the guest. A
// session that cannot be woken fails the delivery (the wake has already
// marked the session failed with the reason).
func (m *Manager) deliverOne(parent context.Context, d store.Delivery) {
	ctx, cancel := context.WithTimeout(parent, m.cfg.DefaultBootTimeout)
	defer cancel()
	finish := func(state, msg string) {
		d.State, d.Error, d.UpdatedAt = state, msg, time.Now().UTC()
		if err := m.cfg.Store.UpdateDelivery(context.Background(), d); err != nil {
			m.cfg.Log.Error("record delivery", "session", d.SessionID, "event", d.EventSeq, "err", err)
		}
	}
	// A store that cannot answer for now (a database restarting) fails
	// no delivery: it is tried again on the next round.
	ev, err := m.cfg.Store.GetEvent(ctx, d.EventSeq)
	if errors.Is(err, store.ErrUnavailable) {
		return
	}
	if err != nil {
		finish(store.DeliveryFailed, "event: "+err.Error())
		return
	}
	rec, err := m.cfg.Store.GetSession(ctx, d.SessionID)
	if errors.Is(err, store.ErrUnavailable) {
		return
	}
	if err != nil {
		finish(store.DeliveryFailed, "session: "+err.Error())
		return
	}
	if rec.State == api.StateParking {
		// Not woken from here: the wake would wait for the park's end
		// within this delivery's time, and a park can take longer. The
		// next round finds it parked.
		return
	}
	if rec.State == api.StateParked {
		if _, err := m.wake(ctx, d.SessionID, CauseEvent, fmt.Sprintf("event %d", d.EventSeq)); err != nil && !api.IsCode(err, api.CodeConflict) {
			if isHostFull(err) || errors.Is(err, ErrRefused) || errors.Is(err, store.ErrUnavailable) {
				return // no room on the host, the audit log cannot record the wake or the store cannot be used, now: retried on the next round
			}
			if ctx.Err() != nil {
				if r, gerr := m.cfg.Store.GetSession(context.Background(), d.SessionID); gerr == nil && !cannotServe(r.State) {
					return // out of time, the session intact: retried on the next round
				}
			}
			finish(store.DeliveryFailed, "wake: "+err.Error())
			return
		}
	}
	m.crashPoint("deliver.woken")
	m.mu.Lock()
	l := m.live[d.SessionID]
	m.mu.Unlock()
	if l == nil {
		r, _ := m.cfg.Store.GetSession(ctx, d.SessionID)
		if cannotServe(r.State) {
			finish(store.DeliveryFailed, "session is "+r.State+": "+r.Error)
		}
		return // not running yet (still parking): retried on the next round
	}
	name := fmt.Sprintf("%020d.json", ev.Seq)
	// Delivered already (a crash after the write, before the record)?
	for _, p := range []string{path.Join(agent.EventsDir, name), path.Join(agent.EventsDir, "taken", name)} {
		if _, err := l.client().Stat(ctx, p); err == nil {
			finish(store.DeliveryDelivered, "")
			return
		}
	}
	body := json.RawMessage(ev.Body)
	if !json.Valid(body) {
		body = nil
	}
	b, _ := json.MarshalIndent(guestEvent{Seq: ev.Seq, Source: ev.Source, Name: ev.Name, ID: ev.ID, Fields: ev.Fields, Received: ev.Received, Body: body}, "", "  ")
	// The agent writes to a dot-file and renames it into place: a waiter
	// never reads half an event.
	if err := l.client().Write(ctx, path.Join(agent.EventsDir, name), 0o644, bytes.NewReader(append(b, '\n'))); err != nil {
		m.cfg.Log.Warn("deliver event", "session", d.SessionID, "event", ev.Seq, "err", err)
		return // retried on the next round
	}
	m.crashPoint("deliver.written")
	l.touch()
	finish(store.DeliveryDelivered, "")
	m.cfg.Log.Info("event delivered", "session", d.SessionID, "event", ev.Seq, "name", ev.Source+":"+ev.Name)
}

// waiting returns the session's pending subscription for the API.
func (m *Manager) waiting(ctx context.Context, id string) *api.Waiting {
	s, err := m.cfg.Store.GetSubscription(ctx, id)
	if err != nil {
		return nil
	}
	return waitingOf(s)
}

// waitingOf is the API's view of a subscription.
func waitingOf(s store.Subscription) *api.Waiting {
	w := &api.Waiting{Until: s.Until}
	if !s.Deadline.IsZero() {
		d := s.Deadline
		w.Deadline = &d
	}
	return w
}

// dropTriggers forgets a removed session's subscription and deliveries.
func (m *Manager) dropTriggers(ctx context.Context, id string) {
	m.unsubscribe(id)
	if err := m.cfg.Store.DeleteSessionTriggers(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.cfg.Log.Warn("remove triggers", "session", id, "err", err)
	}
}

// serveGuest answers requests from tools inside the guest ('cove-agent
// park --until …', 'cove-agent token', 'cove-agent checkpoint',
// 'cove-agent rollback') for as long as the connection to its agent
// lasts. A guest restored from a checkpoint one of its tools asked for is
// told so first (see guestckpt.go).
func (m *Manager) serveGuest(id string, l *live) {
	c := l.client()
	go m.serveEgress(id, c)
	m.tellRestored(id, l, c)
	_ = c.Listen(context.Background(), func(req agentproto.GuestRequest) (*agentproto.GuestReply, error) {
		switch req.Kind {
		case agentproto.GuestPark:
			var timeout time.Duration
			if req.Timeout != "" {
				d, err := time.ParseDuration(req.Timeout)
				if err != nil || d <= 0 {
					return nil, fmt.Errorf("timeout %q: want a positive duration like 6h", req.Timeout)
				}
				timeout = d
			}
			m.cfg.Log.Info("guest asks to park", "session", id, "until", req.Until, "timeout", req.Timeout)
			// On success the guest is frozen and the connection gone: the
			// tool's answer is the event that wakes it.
			_, err := m.parkUntil(context.Background(), id, req.Until, timeout, CauseGuest)
			return nil, err
		case agentproto.GuestToken:
			tok, err := m.guestToken(id, req)
			if err != nil {
				return nil, err
			}
			return &agentproto.GuestReply{Token: tok}, nil
		case agentproto.GuestCheckpoint:
			name, err := m.guestCheckpoint(id, req)
			if err != nil {
				return nil, err
			}
			return &agentproto.GuestReply{Checkpoint: name}, nil
		case agentproto.GuestRollback:
			// On success this guest is gone: nothing to answer.
			return nil, m.guestRollback(id, req)
		default:
			return nil, fmt.Errorf("unknown request %q", req.Kind)
		}
	})
}
