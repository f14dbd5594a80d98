package session_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// TestFakeSessionEventsPages: Events lists the events due to one session
// only, oldest first, in pages of at most MaxEventsPage events and
// MaxEventsPageBytes of bodies (a larger body alone makes a page of its
// own), each page's More saying whether another follows; a body that is
// not JSON is left out, as the guest's event file leaves it; an unknown
// session is CodeNotFound.
func TestFakeSessionEventsPages(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	mine, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	// record records an event with body due to each of ids, as
	// Accept does for the sessions subscribed to it.
	record := func(body []byte, ids ...string) int64 {
		t.Helper()
		for _, id := range ids {
			if err := r.store.PutSubscription(ctx, store.Subscription{SessionID: id, Until: []string{"deploys:x"}, CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		n++
		ev, _, _, err := r.store.RecordEvent(ctx, store.Event{Source: "deploys", ID: fmt.Sprint("d", n), Name: "x",
			Body: body, Received: time.Now()}, ids)
		if err != nil {
			t.Fatal(err)
		}
		return ev.Seq
	}
	var want []int64 // mine's, oldest first
	for i := range session.MaxEventsPage + 1 {
		if i%10 == 0 {
			record([]byte(`{}`), theirs.ID)
		}
		want = append(want, record([]byte(`{"i":`+fmt.Sprint(i)+`}`), mine.ID))
	}
	notJSON := record([]byte("not json"), mine.ID, theirs.ID)
	want = append(want, notJSON)

	p1, err := r.mgr.Events(ctx, mine.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Events) != session.MaxEventsPage || !p1.More {
		t.Fatalf("first page: %d events, more %v; want %d and more", len(p1.Events), p1.More, session.MaxEventsPage)
	}
	p2, err := r.mgr.Events(ctx, mine.ID, p1.Events[len(p1.Events)-1].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if p2.More {
		t.Errorf("second page: more; want the last")
	}
	var got []int64
	for _, e := range append(p1.Events, p2.Events...) {
		got = append(got, e.Seq)
		if e.State == "" || e.CreatedAt.IsZero() || e.Source != "deploys" || e.Name != "x" {
			t.Errorf("event %d: %+v; want its source, name and delivery", e.Seq, e)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("mine's events %v, want %v", got, want)
	}
	if last := p2.Events[len(p2.Events)-1]; last.Seq != notJSON || last.Body != nil {
		t.Errorf("the event whose body is not JSON: %+v; want no body", last)
	}
	if first := p1.Events[0]; string(first.Body) != `{"i":0}` {
		t.Errorf("first event's body %q", first.Body)
	}

	// Bytes: 3, 3, 3 and 9 MiB make pages [3 3] [3] [9].
	big := func(mib int) []byte {
		return []byte(`"` + strings.Repeat("a", mib<<20-2) + `"`)
	}
	var sizes [][]int
	after := notJSON
	for _, mib := range []int{3, 3, 3, 9} {
		record(big(mib), mine.ID)
	}
	for more := true; more; {
		p, err := r.mgr.Events(ctx, mine.ID, after)
		if err != nil {
			t.Fatal(err)
		}
		var page []int
		for _, e := range p.Events {
			page = append(page, len(e.Body)>>20)
		}
		sizes = append(sizes, page)
		if len(p.Events) == 0 || len(sizes) > 4 {
			break
		}
		more, after = p.More, p.Events[len(p.Events)-1].Seq
	}
	if fmt.Sprint(sizes) != "[[3 3] [3] [9]]" {
		t.Errorf("pages of MiB bodies %v, want [[3 3] [3] [9]]", sizes)
	}
	if session.MaxEventsPageBytes != 8<<20 {
		t.Errorf("MaxEventsPageBytes %d: the byte pages above assume 8 MiB", session.MaxEventsPageBytes)
	}

	if _, err := r.mgr.Events(ctx, "nope", 0); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("unknown session: %v; want not found", err)
	}
	// The delivery states are the store's.
	for a, s := range map[string]string{api.DeliveryPending: store.DeliveryPending, api.DeliveryDelivered: store.DeliveryDelivered, api.DeliveryFailed: store.DeliveryFailed} {
		if a != s {
			t.Errorf("api delivery state %q, store's %q", a, s)
		}
	}
}
