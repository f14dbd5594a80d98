package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
)

// runTriggers runs the subtests for events, subscriptions, deliveries and
// hook secrets.
func (s *suite) runTriggers(t *testing.T) {
	s.run(t, "EventRoundTrip", s.eventRoundTrip)
	s.run(t, "ZeroEventRoundTrip", s.zeroEventRoundTrip)
	s.run(t, "EventDuplicate", s.eventDuplicate)
	s.run(t, "EventSeqOrder", s.eventSeqOrder)
	s.run(t, "GetEventMissing", s.getEventMissing)
	s.run(t, "EventBadTime", s.eventBadTime)
	s.run(t, "RecordEventDelivers", s.recordEventDelivers)
	s.run(t, "DuplicateEventDeliversNothing", s.duplicateEventDeliversNothing)
	s.run(t, "EventCopiesInAndOut", s.eventCopiesInAndOut)
	s.run(t, "ConcurrentDuplicateEvents", s.concurrentDuplicateEvents)
	s.run(t, "EventsRaceForSubscription", s.eventsRaceForSubscription)
	s.run(t, "EventBurst", s.eventBurst)
	s.run(t, "SubscriptionRoundTrip", s.subscriptionRoundTrip)
	s.run(t, "SubscriptionReplace", s.subscriptionReplace)
	s.run(t, "ListSubscriptionsOrder", s.listSubscriptionsOrder)
	s.run(t, "DeleteSubscription", s.deleteSubscription)
	s.run(t, "SubscriptionCopiesInAndOut", s.subscriptionCopiesInAndOut)
	s.run(t, "SubscriptionBadTime", s.subscriptionBadTime)
	s.run(t, "DeliveryUpdate", s.deliveryUpdate)
	s.run(t, "ListDeliveriesOrder", s.listDeliveriesOrder)
	s.run(t, "DeleteSessionTriggers", s.deleteSessionTriggers)
	s.run(t, "HookSecrets", s.hookSecrets)
	s.run(t, "HookSecretCopiesInAndOut", s.hookSecretCopiesInAndOut)
	s.run(t, "TriggersDoneContext", s.triggersDoneContext)
	s.run(t, "TriggersPersistAcrossReopen", s.triggersPersistAcrossReopen)
}

// fullEvent has every field the caller sets to a value that is not the zero
// value.
func fullEvent(source, id string) store.Event {
	return store.Event{
		Source: source,
		ID:     id,
		Name:   "pull_request.opened",
		Fields: map[string]string{
			"repo":   "cove-dev/cove",
			"EMPTY":  "",
			"UTF8":   "héllo ☃",
			"QUOTE":  `"a\b'`,
			"number": "42",
		},
		// Not valid UTF-8 and holding a NUL: the store must keep bytes.
		Body:     []byte("{\"action\":\"opened\"}\x00\xff\xfe"),
		Received: at(7).Add(3),
	}
}

// fullSubscription has every field set to a value that is not the zero
// value.
func fullSubscription(sessionID string) store.Subscription {
	return store.Subscription{
		SessionID: sessionID,
		// Order matters; an empty expression and odd text are kept.
		Until: []string{
			`github:pull_request.closed repo=cove-dev/cove`,
			"",
			"hook:deploy status=\"ok\" ☃\nsecond line",
		},
		Deadline:  at(50).Add(time.Hour + 1),
		CreatedAt: at(8).Add(5),
	}
}

func diffEvent(got, want store.Event) []string {
	var d diffs
	if got.Seq != want.Seq {
		d = append(d, fmt.Sprintf("Seq = %d, want %d", got.Seq, want.Seq))
	}
	d.str("Source", got.Source, want.Source)
	d.str("ID", got.ID, want.ID)
	d.str("Name", got.Name, want.Name)
	if !maps.Equal(got.Fields, want.Fields) {
		d = append(d, fmt.Sprintf("Fields = %q, want %q", got.Fields, want.Fields))
	}
	d.bytes("Body", got.Body, want.Body)
	d = append(d, checkTime("Received", got.Received, want.Received)...)
	return d
}

func diffSubscription(got, want store.Subscription) []string {
	var d diffs
	if got.SessionID != want.SessionID {
		d = append(d, fmt.Sprintf("SessionID = %q, want %q", got.SessionID, want.SessionID))
	}
	if !slices.Equal(got.Until, want.Until) {
		d = append(d, fmt.Sprintf("Until = %q, want %q", got.Until, want.Until))
	}
	d = append(d, checkTime("Deadline", got.Deadline, want.Deadline)...)
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	return d
}

func diffDelivery(got, want store.Delivery) []string {
	var d diffs
	if got.EventSeq != want.EventSeq || got.SessionID != want.SessionID {
		d = append(d, fmt.Sprintf("key = %d/%q, want %d/%q",
			got.EventSeq, got.SessionID, want.EventSeq, want.SessionID))
	}
	if got.State != want.State {
		d = append(d, fmt.Sprintf("State = %q, want %q", got.State, want.State))
	}
	if got.Error != want.Error {
		d = append(d, fmt.Sprintf("Error = %q, want %q", got.Error, want.Error))
	}
	d = append(d, checkTime("CreatedAt", got.CreatedAt, want.CreatedAt)...)
	d = append(d, checkTime("UpdatedAt", got.UpdatedAt, want.UpdatedAt)...)
	return d
}

// record records ev, wanting it new, and returns it and the sessions that
// got a delivery.
func record(t *testing.T, st store.Store, ev store.Event, sessions ...string) (store.Event, []string) {
	t.Helper()
	rec, delivered, dup, err := st.RecordEvent(t.Context(), ev, sessions)
	if err != nil {
		t.Fatalf("RecordEvent(%s/%s): %v", ev.Source, ev.ID, err)
	}
	if dup {
		t.Fatalf("RecordEvent(%s/%s) is a duplicate, want new", ev.Source, ev.ID)
	}
	if rec.Seq <= 0 {
		t.Fatalf("RecordEvent(%s/%s) Seq = %d, want > 0", ev.Source, ev.ID, rec.Seq)
	}
	want := ev
	want.Seq = rec.Seq
	for _, d := range diffEvent(rec, want) {
		t.Errorf("RecordEvent(%s/%s) returned: %s", ev.Source, ev.ID, d)
	}
	return rec, delivered
}

func wantEvent(t *testing.T, st store.Store, want store.Event) {
	t.Helper()
	got, err := st.GetEvent(t.Context(), want.Seq)
	if err != nil {
		t.Fatalf("GetEvent(%d): %v", want.Seq, err)
	}
	for _, d := range diffEvent(got, want) {
		t.Errorf("GetEvent(%d): %s", want.Seq, d)
	}
}

func mustSubscribe(t *testing.T, st store.Store, sub store.Subscription) {
	t.Helper()
	if err := st.PutSubscription(t.Context(), sub); err != nil {
		t.Fatalf("PutSubscription(%q): %v", sub.SessionID, err)
	}
}

func wantSubscription(t *testing.T, st store.Store, want store.Subscription) {
	t.Helper()
	got, err := st.GetSubscription(t.Context(), want.SessionID)
	if err != nil {
		t.Fatalf("GetSubscription(%q): %v", want.SessionID, err)
	}
	for _, d := range diffSubscription(got, want) {
		t.Errorf("GetSubscription(%q): %s", want.SessionID, d)
	}
}

func wantNoSubscription(t *testing.T, st store.Store, sessionID string) {
	t.Helper()
	if _, err := st.GetSubscription(t.Context(), sessionID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSubscription(%q) = %v, want ErrNotFound", sessionID, err)
	}
}

func wantSubscriptionIDs(t *testing.T, st store.Store, want ...string) []store.Subscription {
	t.Helper()
	list, err := st.ListSubscriptions(t.Context())
	if err != nil {
		t.Fatalf("ListSubscriptions: %v", err)
	}
	var got []string
	for _, sub := range list {
		got = append(got, sub.SessionID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListSubscriptions session IDs = %q, want %q", got, want)
	}
	return list
}

// wantDeliveries checks ListDeliveries(state) against want, field by field.
func wantDeliveries(t *testing.T, st store.Store, state string, want ...store.Delivery) {
	t.Helper()
	got, err := st.ListDeliveries(t.Context(), state)
	if err != nil {
		t.Fatalf("ListDeliveries(%q): %v", state, err)
	}
	if len(got) != len(want) {
		t.Fatalf("ListDeliveries(%q) = %+v, want %+v", state, got, want)
	}
	for i := range got {
		for _, d := range diffDelivery(got[i], want[i]) {
			t.Errorf("ListDeliveries(%q)[%d]: %s", state, i, d)
		}
	}
}

func pending(seq int64, sessionID string, at time.Time) store.Delivery {
	return store.Delivery{
		EventSeq: seq, SessionID: sessionID, State: store.DeliveryPending,
		CreatedAt: at, UpdatedAt: at,
	}
}

// Every event field comes back exactly, in UTC, from RecordEvent and from
// GetEvent.
func (s *suite) eventRoundTrip(t *testing.T) {
	st := s.fresh(t)
	ev := fullEvent("github", "d-1")
	ev.Seq = 12345 // ignored
	rec, delivered := record(t, st, ev)
	if len(delivered) != 0 {
		t.Errorf("delivered = %q, want none", delivered)
	}
	want := fullEvent("github", "d-1")
	want.Seq = rec.Seq
	wantEvent(t, st, want)
}

// An event of zero values (zero time, nil or empty Fields and Body)
// round-trips, the empty ones as length zero.
func (s *suite) zeroEventRoundTrip(t *testing.T) {
	st := s.fresh(t)
	rec, _ := record(t, st, store.Event{})
	wantEvent(t, st, store.Event{Seq: rec.Seq})

	empty := store.Event{Source: "github", ID: "empty", Fields: map[string]string{}, Body: []byte{}}
	rec, _, dup, err := st.RecordEvent(t.Context(), empty, nil)
	if err != nil || dup {
		t.Fatalf("RecordEvent(empty) = %v, %v", dup, err)
	}
	got, err := st.GetEvent(t.Context(), rec.Seq)
	if err != nil {
		t.Fatalf("GetEvent: %v", err)
	}
	for _, ev := range []store.Event{rec, got} {
		if len(ev.Fields) != 0 || len(ev.Body) != 0 || ev.Source != "github" || ev.ID != "empty" {
			t.Errorf("empty event came back as %+v", ev)
		}
	}
}

// Recording an event whose Source and ID were seen before returns the
// first one, Seq included, and changes nothing; the same ID from another
// Source is another event.
func (s *suite) eventDuplicate(t *testing.T) {
	st := s.fresh(t)
	first, _ := record(t, st, fullEvent("github", "d-1"))

	again := fullEvent("github", "d-1")
	again.Name = "push"
	again.Fields = map[string]string{"other": "x"}
	again.Body = nil
	again.Received = at(40)
	rec, delivered, dup, err := st.RecordEvent(t.Context(), again, nil)
	if err != nil {
		t.Fatalf("second RecordEvent: %v", err)
	}
	if !dup {
		t.Fatalf("second RecordEvent dup = false, want true")
	}
	if len(delivered) != 0 {
		t.Errorf("second RecordEvent delivered = %q, want none", delivered)
	}
	for _, d := range diffEvent(rec, first) {
		t.Errorf("second RecordEvent returned: %s", d)
	}
	wantEvent(t, st, first)

	other, _ := record(t, st, fullEvent("deploy", "d-1"))
	if other.Seq == first.Seq {
		t.Errorf("events from two sources share Seq %d", first.Seq)
	}
	wantEvent(t, st, first)
	wantEvent(t, st, other)
}

// Seq increases in the order events are recorded, whatever their Received
// times.
func (s *suite) eventSeqOrder(t *testing.T) {
	st := s.fresh(t)
	var last int64
	for i := range 5 {
		ev := fullEvent("github", fmt.Sprintf("d-%d", 5-i))
		ev.Received = at(0).Add(-time.Duration(i) * time.Hour)
		rec, _ := record(t, st, ev)
		if rec.Seq <= last {
			t.Errorf("event %d Seq = %d, not after %d", i, rec.Seq, last)
		}
		last = rec.Seq
	}
}

// Getting a missing event fails with ErrNotFound.
func (s *suite) getEventMissing(t *testing.T) {
	st := s.fresh(t)
	for _, seq := range []int64{0, 1, -1, 1 << 40} {
		if _, err := st.GetEvent(t.Context(), seq); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetEvent(%d) = %v, want ErrNotFound", seq, err)
		}
	}
}

// An event with a time the store cannot hold is refused, changing nothing:
// no event, no delivery, the subscription still there.
func (s *suite) eventBadTime(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("s"))
	ev := fullEvent("github", "far")
	ev.Received = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, _, _, err := st.RecordEvent(t.Context(), ev, []string{"s"}); err == nil {
		t.Fatal("RecordEvent with a year-3000 time succeeded")
	}
	wantSubscription(t, st, fullSubscription("s"))
	wantDeliveries(t, st, "")
	// The (source, id) is still free.
	ev.Received = at(1)
	record(t, st, ev, "s")
}

// RecordEvent delivers to the listed sessions that have a subscription, in
// the order given and once each, and deletes their subscriptions; other
// sessions' subscriptions stay.
func (s *suite) recordEventDelivers(t *testing.T) {
	st := s.fresh(t)
	for _, id := range []string{"s1", "s2", "s3", "unlisted"} {
		mustSubscribe(t, st, fullSubscription(id))
	}
	ev := fullEvent("github", "d-1")
	rec, delivered := record(t, st, ev, "s3", "nosub", "s1", "s1")
	if !slices.Equal(delivered, []string{"s3", "s1"}) {
		t.Errorf("delivered = %q, want [s3 s1]", delivered)
	}
	wantNoSubscription(t, st, "s1")
	wantNoSubscription(t, st, "s3")
	wantSubscription(t, st, fullSubscription("s2"))
	wantSubscriptionIDs(t, st, "s2", "unlisted")
	wantDeliveries(t, st, "",
		pending(rec.Seq, "s1", ev.Received),
		pending(rec.Seq, "s3", ev.Received))

	// An event satisfies a subscription once: the next one reaches only
	// the sessions still waiting.
	ev2 := fullEvent("github", "d-2")
	ev2.Received = at(9)
	rec2, delivered := record(t, st, ev2, "s1", "s2", "s3")
	if !slices.Equal(delivered, []string{"s2"}) {
		t.Errorf("second delivered = %q, want [s2]", delivered)
	}
	wantSubscriptionIDs(t, st, "unlisted")
	wantDeliveries(t, st, store.DeliveryPending,
		pending(rec.Seq, "s1", ev.Received),
		pending(rec.Seq, "s3", ev.Received),
		pending(rec2.Seq, "s2", ev2.Received))

	// With no sessions listed, nothing is delivered.
	_, delivered = record(t, st, fullEvent("github", "d-3"))
	if len(delivered) != 0 {
		t.Errorf("third delivered = %q, want none", delivered)
	}
	wantSubscriptionIDs(t, st, "unlisted")
}

// A duplicate event neither delivers nor consumes subscriptions.
func (s *suite) duplicateEventDeliversNothing(t *testing.T) {
	st := s.fresh(t)
	ev := fullEvent("github", "d-1")
	first, _ := record(t, st, ev)
	mustSubscribe(t, st, fullSubscription("s"))
	rec, delivered, dup, err := st.RecordEvent(t.Context(), ev, []string{"s"})
	if err != nil || !dup || len(delivered) != 0 || rec.Seq != first.Seq {
		t.Fatalf("duplicate RecordEvent = %d, %q, %v, %v; want %d, none, true, nil",
			rec.Seq, delivered, dup, err, first.Seq)
	}
	wantSubscription(t, st, fullSubscription("s"))
	wantDeliveries(t, st, "")
}

// The store keeps its own copies of an event's Fields and Body, on the way
// in and on the way out.
func (s *suite) eventCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := fullEvent("github", "copy")
	rec, _ := record(t, st, in)
	want := fullEvent("github", "copy")
	want.Seq = rec.Seq
	in.Fields["repo"] = "changed"
	in.Fields["NEW"] = "x"
	in.Body[0] = 'X'
	wantEvent(t, st, want)

	rec.Fields["repo"] = "changed"
	rec.Body[0] = 'X'
	wantEvent(t, st, want)

	got, err := st.GetEvent(t.Context(), rec.Seq)
	if err != nil {
		t.Fatalf("GetEvent: %v", err)
	}
	got.Fields["repo"] = "changed"
	got.Body[0] = 'X'
	dupRec, _, dup, err := st.RecordEvent(t.Context(), fullEvent("github", "copy"), nil)
	if err != nil || !dup {
		t.Fatalf("duplicate RecordEvent = %v, %v", dup, err)
	}
	dupRec.Fields["repo"] = "changed"
	dupRec.Body[0] = 'X'
	wantEvent(t, st, want)
}

// Ten goroutines recording the same event: exactly one records it, and all
// get its Seq.
func (s *suite) concurrentDuplicateEvents(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("s"))
	const n = 10
	type result struct {
		seq       int64
		delivered []string
		dup       bool
		err       error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			rec, delivered, dup, err := st.RecordEvent(t.Context(), fullEvent("github", "same"), []string{"s"})
			results[i] = result{rec.Seq, delivered, dup, err}
		})
	}
	wg.Wait()
	fresh := 0
	for i, r := range results {
		if r.err != nil {
			t.Errorf("RecordEvent #%d: %v", i, r.err)
			continue
		}
		if r.seq != results[0].seq {
			t.Errorf("RecordEvent #%d Seq = %d, want %d like #0", i, r.seq, results[0].seq)
		}
		if !r.dup {
			fresh++
			if !slices.Equal(r.delivered, []string{"s"}) {
				t.Errorf("new RecordEvent delivered = %q, want [s]", r.delivered)
			}
		} else if len(r.delivered) != 0 {
			t.Errorf("duplicate RecordEvent delivered = %q, want none", r.delivered)
		}
	}
	if fresh != 1 {
		t.Fatalf("%d of %d RecordEvents were not duplicates, want 1", fresh, n)
	}
	want := fullEvent("github", "same")
	want.Seq = results[0].seq
	wantEvent(t, st, want)
	wantDeliveries(t, st, "", pending(want.Seq, "s", want.Received))
	wantSubscriptionIDs(t, st)
}

// A burst of concurrent events (as webhooks arrive): distinct events,
// pairs of one delivery sent twice, events for sessions that each have a
// subscription, and callers that gave up before the call. Each event is
// recorded once with a Seq of its own and claims its own session's
// subscription; the duplicates are duplicates of it; the abandoned calls
// fail and change nothing; and all of it survives a reopen.
func (s *suite) eventBurst(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	const n = 48
	for i := range n {
		if i%3 == 0 {
			mustSubscribe(t, st, fullSubscription(fmt.Sprintf("s-%d", i)))
		}
	}
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	type result struct {
		rec       store.Event
		delivered []string
		dup       bool
		err       error
	}
	var (
		wg      sync.WaitGroup
		results [n][2]result // [i][0] first sender, [i][1] a second one for even i, or an abandoned call for i%4 == 1
	)
	for i := range n {
		ev := fullEvent("github", fmt.Sprintf("burst-%d", i))
		sessions := []string{fmt.Sprintf("s-%d", i)}
		wg.Go(func() {
			r := &results[i][0]
			r.rec, r.delivered, r.dup, r.err = st.RecordEvent(t.Context(), ev, sessions)
		})
		switch {
		case i%2 == 0:
			wg.Go(func() {
				r := &results[i][1]
				r.rec, r.delivered, r.dup, r.err = st.RecordEvent(t.Context(), ev, sessions)
			})
		case i%4 == 1:
			gone := fullEvent("github", fmt.Sprintf("gone-%d", i))
			wg.Go(func() {
				r := &results[i][1]
				r.rec, r.delivered, r.dup, r.err = st.RecordEvent(canceled, gone, sessions)
			})
		}
	}
	wg.Wait()

	seqs := map[int64]int{}
	for i := range n {
		first, second := results[i][0], results[i][1]
		if i%2 == 0 {
			if first.err != nil || second.err != nil {
				t.Fatalf("event %d sent twice: errors %v, %v", i, first.err, second.err)
			}
			if first.dup == second.dup {
				t.Fatalf("event %d sent twice: dup = %v and %v, want one new and one duplicate", i, first.dup, second.dup)
			}
			if first.dup {
				first, second = second, first
			}
			if second.rec.Seq != first.rec.Seq || len(second.delivered) != 0 {
				t.Fatalf("event %d: duplicate has Seq %d and delivered %q, want Seq %d and none",
					i, second.rec.Seq, second.delivered, first.rec.Seq)
			}
		} else {
			if first.err != nil || first.dup {
				t.Fatalf("event %d: dup %v, err %v; want new", i, first.dup, first.err)
			}
			if i%4 == 1 && !errors.Is(second.err, context.Canceled) {
				t.Fatalf("event %d: abandoned call = %v, want context.Canceled", i, second.err)
			}
		}
		if j, ok := seqs[first.rec.Seq]; ok {
			t.Fatalf("events %d and %d share Seq %d", j, i, first.rec.Seq)
		}
		seqs[first.rec.Seq] = i
		var want []string
		if i%3 == 0 {
			want = []string{fmt.Sprintf("s-%d", i)}
		}
		if !slices.Equal(first.delivered, want) {
			t.Fatalf("event %d delivered %q, want %q", i, first.delivered, want)
		}
	}

	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st = s.open(t, dir)
	defer st.Close()
	for seq, i := range seqs {
		want := fullEvent("github", fmt.Sprintf("burst-%d", i))
		want.Seq = seq
		wantEvent(t, st, want)
	}
	for i := range n {
		if i%4 != 1 {
			continue
		}
		_, _, dup, err := st.RecordEvent(t.Context(), fullEvent("github", fmt.Sprintf("gone-%d", i)), nil)
		if err != nil || dup {
			t.Fatalf("event abandoned before the call: recording it now gives dup %v, err %v; want new", dup, err)
		}
	}
	ds, err := st.ListDeliveries(t.Context(), "")
	if err != nil {
		t.Fatalf("ListDeliveries: %v", err)
	}
	if want := (n + 2) / 3; len(ds) != want {
		t.Fatalf("%d deliveries after reopen, want %d", len(ds), want)
	}
	wantSubscriptionIDs(t, st)
}

// Two different events racing for one subscription: exactly one of them
// gets the delivery.
func (s *suite) eventsRaceForSubscription(t *testing.T) {
	for range 5 {
		st := s.fresh(t)
		mustSubscribe(t, st, fullSubscription("s"))
		var (
			wg        sync.WaitGroup
			recs      [2]store.Event
			delivered [2][]string
			errs      [2]error
		)
		for i := range 2 {
			wg.Go(func() {
				var dup bool
				recs[i], delivered[i], dup, errs[i] = st.RecordEvent(t.Context(),
					fullEvent("github", fmt.Sprintf("d-%d", i)), []string{"s"})
				if dup {
					errs[i] = errors.New("duplicate")
				}
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("RecordEvent #%d: %v", i, err)
			}
		}
		winner := -1
		for i := range 2 {
			switch {
			case slices.Equal(delivered[i], []string{"s"}):
				if winner >= 0 {
					t.Fatalf("both events were delivered to s")
				}
				winner = i
			case len(delivered[i]) != 0:
				t.Fatalf("RecordEvent #%d delivered = %q", i, delivered[i])
			}
		}
		if winner < 0 {
			t.Fatalf("neither event was delivered to s")
		}
		wantDeliveries(t, st, "", pending(recs[winner].Seq, "s", recs[winner].Received))
		wantSubscriptionIDs(t, st)
	}
}

// Every subscription field comes back exactly, in UTC; so does one of zero
// values.
func (s *suite) subscriptionRoundTrip(t *testing.T) {
	st := s.fresh(t)
	want := fullSubscription("s")
	mustSubscribe(t, st, want)
	wantSubscription(t, st, want)
	list := wantSubscriptionIDs(t, st, "s")
	for _, d := range diffSubscription(list[0], want) {
		t.Errorf("ListSubscriptions[0]: %s", d)
	}

	zero := store.Subscription{SessionID: "zero"}
	mustSubscribe(t, st, zero)
	wantSubscription(t, st, zero)
	empty := store.Subscription{SessionID: "empty", Until: []string{}}
	mustSubscribe(t, st, empty)
	got, err := st.GetSubscription(t.Context(), "empty")
	if err != nil || len(got.Until) != 0 {
		t.Errorf("GetSubscription(empty) = %+v, %v; want no Until", got, err)
	}
	wantNoSubscription(t, st, "missing")
}

// PutSubscription on a session that has one replaces every field.
func (s *suite) subscriptionReplace(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("s"))
	mustSubscribe(t, st, fullSubscription("other"))
	repl := store.Subscription{
		SessionID: "s",
		Until:     []string{"cove:timeout"},
		CreatedAt: at(20).Add(1),
	}
	mustSubscribe(t, st, repl)
	wantSubscription(t, st, repl)
	wantSubscription(t, st, fullSubscription("other"))
	wantSubscriptionIDs(t, st, "other", "s")
}

// ListSubscriptions orders by CreatedAt, then SessionID, whatever the
// insertion order and the times' locations.
func (s *suite) listSubscriptionsOrder(t *testing.T) {
	st := s.fresh(t)
	wantSubscriptionIDs(t, st) // empty
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ny := time.FixedZone("UTC-5", -5*3600)
	add := func(id string, created time.Time) {
		mustSubscribe(t, st, store.Subscription{SessionID: id, Until: []string{"x"}, CreatedAt: created})
	}
	add("c", base.Add(2*time.Second))
	add("b", base.Add(time.Nanosecond))
	add("z", base)
	add("a", base.Add(2*time.Second))
	add("B", base.Add(2*time.Second))
	add("y", base.Add(time.Nanosecond).In(ny))
	add("zero", time.Time{})
	wantSubscriptionIDs(t, st, "zero", "z", "b", "y", "B", "a", "c")
}

// A deleted subscription is gone; deleting a missing one fails with
// ErrNotFound.
func (s *suite) deleteSubscription(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("keep"))
	mustSubscribe(t, st, fullSubscription("drop"))
	if err := st.DeleteSubscription(t.Context(), "drop"); err != nil {
		t.Fatalf("DeleteSubscription: %v", err)
	}
	wantNoSubscription(t, st, "drop")
	wantSubscriptionIDs(t, st, "keep")
	if err := st.DeleteSubscription(t.Context(), "drop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteSubscription = %v, want ErrNotFound", err)
	}
	if err := st.DeleteSubscription(t.Context(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteSubscription(missing) = %v, want ErrNotFound", err)
	}
}

// The store keeps its own copy of a subscription's Until.
func (s *suite) subscriptionCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := fullSubscription("copy")
	mustSubscribe(t, st, in)
	in.Until[0] = "changed"
	wantSubscription(t, st, fullSubscription("copy"))

	got, err := st.GetSubscription(t.Context(), "copy")
	if err != nil {
		t.Fatalf("GetSubscription: %v", err)
	}
	got.Until[0] = "changed"
	list := wantSubscriptionIDs(t, st, "copy")
	list[0].Until[0] = "changed"
	wantSubscription(t, st, fullSubscription("copy"))
}

// A subscription with a time the store cannot hold is refused, changing
// nothing.
func (s *suite) subscriptionBadTime(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("s"))
	bad := fullSubscription("s")
	bad.Until = []string{"other"}
	bad.Deadline = time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := st.PutSubscription(t.Context(), bad); err == nil {
		t.Fatal("PutSubscription with a year-1000 deadline succeeded")
	}
	wantSubscription(t, st, fullSubscription("s"))
	bad.SessionID = "new"
	if err := st.PutSubscription(t.Context(), bad); err == nil {
		t.Fatal("PutSubscription(new) with a year-1000 deadline succeeded")
	}
	wantSubscriptionIDs(t, st, "s")
}

// UpdateDelivery replaces State, Error and UpdatedAt, keeps CreatedAt, and
// fails with ErrNotFound for a missing delivery, creating nothing.
func (s *suite) deliveryUpdate(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("a"))
	mustSubscribe(t, st, fullSubscription("b"))
	ev := fullEvent("github", "d-1")
	rec, _ := record(t, st, ev, "a", "b")

	upd := store.Delivery{
		EventSeq: rec.Seq, SessionID: "a", State: store.DeliveryFailed,
		Error: "session gone", CreatedAt: at(59), UpdatedAt: at(30).Add(9),
	}
	if err := st.UpdateDelivery(t.Context(), upd); err != nil {
		t.Fatalf("UpdateDelivery: %v", err)
	}
	upd.CreatedAt = ev.Received // not replaced
	wantDeliveries(t, st, "", upd, pending(rec.Seq, "b", ev.Received))
	wantDeliveries(t, st, store.DeliveryFailed, upd)
	wantDeliveries(t, st, store.DeliveryPending, pending(rec.Seq, "b", ev.Received))
	wantDeliveries(t, st, store.DeliveryDelivered)

	// Clearing sticks; writing the same values again is not "not found".
	upd.State = store.DeliveryDelivered
	upd.Error = ""
	upd.UpdatedAt = time.Time{}
	for range 2 {
		if err := st.UpdateDelivery(t.Context(), upd); err != nil {
			t.Fatalf("UpdateDelivery(cleared): %v", err)
		}
	}
	wantDeliveries(t, st, store.DeliveryDelivered, upd)

	for _, d := range []store.Delivery{
		{EventSeq: rec.Seq, SessionID: "c", State: store.DeliveryFailed},
		{EventSeq: rec.Seq + 1, SessionID: "a", State: store.DeliveryFailed},
	} {
		if err := st.UpdateDelivery(t.Context(), d); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UpdateDelivery(%d/%s) = %v, want ErrNotFound", d.EventSeq, d.SessionID, err)
		}
	}
	wantDeliveries(t, st, "", upd, pending(rec.Seq, "b", ev.Received))

	bad := upd
	bad.State = store.DeliveryFailed
	bad.UpdatedAt = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := st.UpdateDelivery(t.Context(), bad); err == nil {
		t.Fatal("UpdateDelivery with a year-3000 time succeeded")
	}
	wantDeliveries(t, st, "", upd, pending(rec.Seq, "b", ev.Received))
}

// ListDeliveries orders by EventSeq, then SessionID (bytewise).
func (s *suite) listDeliveriesOrder(t *testing.T) {
	st := s.fresh(t)
	wantDeliveries(t, st, "")
	var want []store.Delivery
	for i := range 3 {
		ids := []string{"z", "B", "a"}
		for _, id := range ids {
			mustSubscribe(t, st, store.Subscription{SessionID: id})
		}
		ev := fullEvent("github", fmt.Sprintf("d-%d", i))
		ev.Received = at(10 - i)
		rec, _ := record(t, st, ev, ids...)
		for _, id := range []string{"B", "a", "z"} {
			want = append(want, pending(rec.Seq, id, ev.Received))
		}
	}
	wantDeliveries(t, st, "", want...)
	wantDeliveries(t, st, store.DeliveryPending, want...)
}

// DeleteSessionTriggers removes a session's subscription and deliveries,
// and no one else's; it is no error when there is nothing to remove.
func (s *suite) deleteSessionTriggers(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("gone"))
	mustSubscribe(t, st, fullSubscription("kept"))
	ev := fullEvent("github", "d-1")
	rec, _ := record(t, st, ev, "gone", "kept")
	mustSubscribe(t, st, fullSubscription("gone"))
	mustSubscribe(t, st, fullSubscription("kept"))

	if err := st.DeleteSessionTriggers(t.Context(), "gone"); err != nil {
		t.Fatalf("DeleteSessionTriggers: %v", err)
	}
	wantNoSubscription(t, st, "gone")
	wantSubscription(t, st, fullSubscription("kept"))
	wantDeliveries(t, st, "", pending(rec.Seq, "kept", ev.Received))
	want := ev
	want.Seq = rec.Seq
	wantEvent(t, st, want)

	for _, id := range []string{"gone", "never"} {
		if err := st.DeleteSessionTriggers(t.Context(), id); err != nil {
			t.Errorf("DeleteSessionTriggers(%s) with nothing left = %v", id, err)
		}
	}
	// Only a subscription, or only deliveries.
	mustSubscribe(t, st, fullSubscription("only-sub"))
	if err := st.DeleteSessionTriggers(t.Context(), "only-sub"); err != nil {
		t.Fatalf("DeleteSessionTriggers(only-sub): %v", err)
	}
	wantNoSubscription(t, st, "only-sub")
	if err := st.DeleteSessionTriggers(t.Context(), "kept"); err != nil {
		t.Fatalf("DeleteSessionTriggers(kept): %v", err)
	}
	wantDeliveries(t, st, "")
	wantSubscriptionIDs(t, st)
}

// Hook secrets round-trip as bytes, are replaced by a second put, list
// sorted, and delete; missing hooks are ErrNotFound.
func (s *suite) hookSecrets(t *testing.T) {
	st := s.fresh(t)
	list := func(want ...string) {
		t.Helper()
		got, err := st.ListHooks(t.Context())
		if err != nil {
			t.Fatalf("ListHooks: %v", err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ListHooks = %q, want %q", got, want)
		}
	}
	get := func(name string, want []byte) {
		t.Helper()
		got, err := st.GetHookSecret(t.Context(), name)
		if err != nil {
			t.Fatalf("GetHookSecret(%s): %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("GetHookSecret(%s) = %q, want %q", name, got, want)
		}
	}
	put := func(name string, secret []byte) {
		t.Helper()
		if err := st.PutHookSecret(t.Context(), name, secret); err != nil {
			t.Fatalf("PutHookSecret(%s): %v", name, err)
		}
	}
	list()
	secret := []byte("s3cr3t\x00\xff\xfe")
	for _, n := range []string{"tiny", "Zeta", "deploy", "b", "deploy-2"} {
		put(n, secret)
	}
	list("Zeta", "b", "deploy", "deploy-2", "tiny")
	get("deploy", secret)
	put("deploy", []byte("rotated"))
	get("deploy", []byte("rotated"))
	get("b", secret)
	put("empty", nil)
	get("empty", nil)
	list("Zeta", "b", "deploy", "deploy-2", "empty", "tiny")

	if err := st.DeleteHook(t.Context(), "deploy"); err != nil {
		t.Fatalf("DeleteHook: %v", err)
	}
	if _, err := st.GetHookSecret(t.Context(), "deploy"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetHookSecret(deleted) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteHook(t.Context(), "deploy"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteHook = %v, want ErrNotFound", err)
	}
	if err := st.DeleteHook(t.Context(), "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteHook(missing) = %v, want ErrNotFound", err)
	}
	list("Zeta", "b", "deploy-2", "empty", "tiny")
	put("deploy", secret)
	get("deploy", secret)
}

// The store keeps its own copy of a hook secret.
func (s *suite) hookSecretCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	in := []byte("secret")
	if err := st.PutHookSecret(t.Context(), "h", in); err != nil {
		t.Fatalf("PutHookSecret: %v", err)
	}
	in[0] = 'X'
	got, err := st.GetHookSecret(t.Context(), "h")
	if err != nil || string(got) != "secret" {
		t.Fatalf("GetHookSecret = %q, %v; want %q", got, err, "secret")
	}
	got[0] = 'X'
	if got, err = st.GetHookSecret(t.Context(), "h"); err != nil || string(got) != "secret" {
		t.Fatalf("GetHookSecret after changing a copy = %q, %v; want %q", got, err, "secret")
	}
}

// The trigger methods, called with a done context, fail with ctx's error
// and change nothing.
func (s *suite) triggersDoneContext(t *testing.T) {
	st := s.fresh(t)
	mustSubscribe(t, st, fullSubscription("there"))
	mustSubscribe(t, st, fullSubscription("other"))
	ev := fullEvent("github", "there")
	rec, _ := record(t, st, ev, "other")
	if err := st.PutHookSecret(t.Context(), "there", []byte("secret")); err != nil {
		t.Fatal(err)
	}

	ctx, check := canceled(t)
	_, _, _, err := st.RecordEvent(ctx, fullEvent("github", "new"), []string{"there"})
	check("RecordEvent", err)
	_, _, _, err = st.RecordEvent(ctx, ev, nil)
	check("RecordEvent(duplicate)", err)
	_, err = st.GetEvent(ctx, rec.Seq)
	check("GetEvent", err)
	changed := fullSubscription("there")
	changed.Until = []string{"changed"}
	check("PutSubscription", st.PutSubscription(ctx, changed))
	_, err = st.GetSubscription(ctx, "there")
	check("GetSubscription", err)
	check("DeleteSubscription", st.DeleteSubscription(ctx, "there"))
	_, err = st.ListSubscriptions(ctx)
	check("ListSubscriptions", err)
	_, err = st.ListDeliveries(ctx, "")
	check("ListDeliveries", err)
	check("UpdateDelivery", st.UpdateDelivery(ctx, store.Delivery{
		EventSeq: rec.Seq, SessionID: "other", State: store.DeliveryFailed}))
	check("DeleteSessionTriggers", st.DeleteSessionTriggers(ctx, "other"))
	check("PutHookSecret", st.PutHookSecret(ctx, "there", []byte("changed")))
	_, err = st.GetHookSecret(ctx, "there")
	check("GetHookSecret", err)
	_, err = st.ListHooks(ctx)
	check("ListHooks", err)
	check("DeleteHook", st.DeleteHook(ctx, "there"))

	want := ev
	want.Seq = rec.Seq
	wantEvent(t, st, want)
	if _, _, dup, err := st.RecordEvent(t.Context(), fullEvent("github", "new"), nil); err != nil || dup {
		t.Errorf("RecordEvent(new) after canceled one = %v, %v; want new", dup, err)
	}
	wantSubscriptionIDs(t, st, "there")
	wantSubscription(t, st, fullSubscription("there"))
	wantDeliveries(t, st, "", pending(rec.Seq, "other", ev.Received))
	if got, err := st.GetHookSecret(t.Context(), "there"); err != nil || string(got) != "secret" {
		t.Errorf("GetHookSecret = %q, %v; want %q", got, err, "secret")
	}
}

// Events, subscriptions, deliveries and hooks written before Close are
// there after reopening; Seq keeps increasing and duplicates are still
// caught.
func (s *suite) triggersPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	fail := func(format string, args ...any) {
		t.Helper()
		st.Close()
		t.Fatalf(format, args...)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := st.PutSubscription(t.Context(), fullSubscription(id)); err != nil {
			fail("PutSubscription(%s): %v", id, err)
		}
	}
	ev := fullEvent("github", "d-1")
	rec, delivered, dup, err := st.RecordEvent(t.Context(), ev, []string{"a", "b"})
	if err != nil || dup || len(delivered) != 2 {
		fail("RecordEvent = %q, %v, %v", delivered, dup, err)
	}
	upd := store.Delivery{EventSeq: rec.Seq, SessionID: "b", State: store.DeliveryDelivered, UpdatedAt: at(33)}
	steps := []error{
		st.UpdateDelivery(t.Context(), upd),
		st.DeleteSubscription(t.Context(), "c"),
		st.PutSubscription(t.Context(), fullSubscription("d")),
		st.PutHookSecret(t.Context(), "deploy", []byte("secret")),
		st.PutHookSecret(t.Context(), "gone", []byte("x")),
		st.DeleteHook(t.Context(), "gone"),
	}
	closeAfterWrites(t, st, steps)

	st = s.openIn(t, dir)
	want := ev
	want.Seq = rec.Seq
	wantEvent(t, st, want)
	wantSubscriptionIDs(t, st, "d")
	wantSubscription(t, st, fullSubscription("d"))
	upd.CreatedAt = ev.Received
	wantDeliveries(t, st, "", pending(rec.Seq, "a", ev.Received), upd)
	hooks, err := st.ListHooks(t.Context())
	if err != nil || !slices.Equal(hooks, []string{"deploy"}) {
		t.Errorf("ListHooks = %q, %v; want [deploy]", hooks, err)
	}
	if got, err := st.GetHookSecret(t.Context(), "deploy"); err != nil || string(got) != "secret" {
		t.Errorf("GetHookSecret = %q, %v; want %q", got, err, "secret")
	}

	again, _, dup, err := st.RecordEvent(t.Context(), ev, nil)
	if err != nil || !dup || again.Seq != rec.Seq {
		t.Errorf("RecordEvent(recorded before reopen) = %d, %v, %v; want %d, dup", again.Seq, dup, err, rec.Seq)
	}
	next, _ := record(t, st, fullEvent("github", "d-2"))
	if next.Seq <= rec.Seq {
		t.Errorf("Seq after reopen = %d, not after %d", next.Seq, rec.Seq)
	}
}
