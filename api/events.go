package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Delivery states of a SessionEvent.
const (
	DeliveryPending   = "pending"   // due, not yet written into the guest
	DeliveryDelivered = "delivered" // written into the guest's event directory
	DeliveryFailed    = "failed"    // given up; Error says why
)

// SessionEvent is one incoming event due to a session (a webhook delivery
// that matched what the session parked until, or its timeout), with the
// state of its delivery (GET /v1/sessions/{id}/events). Seq, Source, Name,
// ID, Fields, Received and Body are what the guest reads from its event
// file.
type SessionEvent struct {
	// Seq is cove's number of the event: increasing in arrival order,
	// never reused, shared by all sessions.
	Seq    int64  `json:"seq"`
	Source string `json:"source"` // "github", a hook's name, or "cove" for a timeout
	Name   string `json:"name"`   // e.g. "check_suite.completed"
	// ID is the sender's delivery id, unique per Source.
	ID       string            `json:"id"`
	Fields   map[string]string `json:"fields,omitempty"`
	Received time.Time         `json:"received"`
	// Body is the payload as received; absent when it was not JSON (the
	// guest is not given it either).
	Body json.RawMessage `json:"body,omitempty"`

	// State is DeliveryPending, DeliveryDelivered or DeliveryFailed.
	State string `json:"state"`
	// Error says why a failed delivery failed.
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at"` // when the event became due to the session
	UpdatedAt time.Time `json:"updated_at"` // when State last changed
}

// SessionEventPage is one answer of GET /v1/sessions/{id}/events: the
// session's events after the asked Seq, oldest first.
type SessionEventPage struct {
	Events []SessionEvent `json:"events"`
	// More is true when events follow the last one here: ask again with
	// after set to its Seq.
	More bool `json:"more"`
}

// SessionEvents returns one page of the events due to session id whose
// Seq is above after (0: from the first), oldest first. An unknown id is
// an *Error with CodeNotFound.
func (c *Client) SessionEvents(ctx context.Context, id string, after int64) (SessionEventPage, error) {
	var q url.Values
	if after > 0 {
		q = url.Values{"after": {strconv.FormatInt(after, 10)}}
	}
	var p SessionEventPage
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, "/events"), q, nil, &p)
	return p, err
}

// AllSessionEvents returns every event due to session id, oldest first,
// reading page after page.
func (c *Client) AllSessionEvents(ctx context.Context, id string) ([]SessionEvent, error) {
	var all []SessionEvent
	var after int64
	for {
		p, err := c.SessionEvents(ctx, id, after)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Events...)
		if !p.More || len(p.Events) == 0 {
			return all, nil
		}
		after = p.Events[len(p.Events)-1].Seq
	}
}
