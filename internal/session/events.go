package session

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Bounds of one page of Events. A page holds at least one event, however
// large its body (a webhook body is at most trigger.DefaultMaxBody by
// default, 25 MiB).
const (
	// MaxEventsPage is the most events one page holds.
	MaxEventsPage = 100
	// MaxEventsPageBytes is the most body bytes one page holds, unless
	// its first event alone has more.
	MaxEventsPageBytes = 8 << 20
)

// Events returns the events due to session id whose Seq is above after,
// oldest first, each with its delivery's state: one page, bounded by
// MaxEventsPage and MaxEventsPageBytes, whose More says whether more
// follow. An event's body is shown as the guest is given it: absent when
// it is not JSON. An unknown id is CodeNotFound.
//
// It filters the store's deliveries in Go: they are kept only while their
// session is (store.DeleteSessionTriggers), so they number the live
// sessions' events.
func (m *Manager) Events(ctx context.Context, id string, after int64) (api.SessionEventPage, error) {
	if _, err := m.cfg.Store.GetSession(ctx, id); err != nil {
		return api.SessionEventPage{}, notFound(id, err)
	}
	all, err := m.cfg.Store.ListDeliveries(ctx, "")
	if err != nil {
		return api.SessionEventPage{}, fmt.Errorf("session: events of %s: %w", id, err)
	}
	var due []store.Delivery
	for _, d := range all { // ordered by EventSeq
		if d.SessionID == id && d.EventSeq > after {
			due = append(due, d)
		}
	}
	page := api.SessionEventPage{Events: []api.SessionEvent{}}
	size := 0
	for i, d := range due {
		if i == MaxEventsPage {
			page.More = true
			break
		}
		ev, err := m.cfg.Store.GetEvent(ctx, d.EventSeq)
		if err != nil {
			return api.SessionEventPage{}, fmt.Errorf("session: events of %s: event %d: %w", id, d.EventSeq, err)
		}
		if i > 0 && size+len(ev.Body) > MaxEventsPageBytes {
			page.More = true
			break
		}
		size += len(ev.Body)
		page.Events = append(page.Events, sessionEvent(ev, d))
	}
	return page, nil
}

// sessionEvent is ev, due as d, for the API.
func sessionEvent(ev store.Event, d store.Delivery) api.SessionEvent {
	body := json.RawMessage(ev.Body)
	if !json.Valid(body) {
		body = nil
	}
	return api.SessionEvent{Seq: ev.Seq, Source: ev.Source, Name: ev.Name, ID: ev.ID, Fields: ev.Fields,
		Received: ev.Received, Body: body,
		State: d.State, Error: d.Error, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}
