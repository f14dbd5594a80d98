package apiserver

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/trigger"
)

// cove server serves the route from its session manager.
var _ SessionEvents = (*session.Manager)(nil)

// TestSessionEventsOnTheAPI: alice's session, parked until a deploy
// event, is woken by one; GET /v1/sessions/{id}/events shows her the
// event as the guest got it, delivered. The session's own identity token
// (minted after the wake, for alice) reads the same; on alice's other
// session it gets 403 with the reason, as bob does on hers. An unknown
// session is 404, a bad after 400, and after the last seq there is
// nothing more.
func TestSessionEventsOnTheAPI(t *testing.T) {
	e := newIssuerEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	mine := e.createSession(t, alice, api.CreateSessionRequest{Agent: "review-bot"})
	other := e.createSession(t, alice, api.CreateSessionRequest{})
	base := "/v1/sessions/" + mine.ID + "/events"

	if got := decode[api.SessionEventPage](t, e.do("GET", base, nil, alice.auth()...), 200); len(got.Events) != 0 || got.More || got.Events == nil {
		t.Fatalf("events before any: %+v; want an empty list", got)
	}
	parked := decode[api.Session](t, e.doJSON("POST", "/v1/sessions/"+mine.ID+"/park",
		api.ParkRequest{Until: []string{"deploys:deploy-done env=staging"}}, alice.auth()...), 200)
	if parked.State != api.StateParked {
		t.Fatalf("park --until: %s", parked.State)
	}
	body := `{"event":"deploy-done","env":"staging"}`
	ev, err := trigger.GenericEvent("deploys", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if dup, err := e.mgr.Accept(t.Context(), ev); err != nil || dup {
		t.Fatalf("accept: dup %v, %v", dup, err)
	}

	// The deliverer wakes the session and writes the event into it.
	var page api.SessionEventPage
	for deadline := time.Now().Add(time.Minute); ; {
		page = decode[api.SessionEventPage](t, e.do("GET", base, nil, alice.auth()...), 200)
		if len(page.Events) == 1 && page.Events[0].State != api.DeliveryPending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event was not delivered within a minute: %+v", page)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := page.Events[0]
	if page.More || got.Source != "deploys" || got.Name != "deploy-done" || got.ID != "d1" || got.Seq <= 0 ||
		got.State != api.DeliveryDelivered || got.Error != "" ||
		got.Received.IsZero() || got.CreatedAt.IsZero() || got.UpdatedAt.Before(got.CreatedAt) {
		t.Errorf("alice reads %+v (more %v); want deploys:deploy-done d1, delivered", got, page.More)
	}
	var gotBody, wantBody any
	if err := json.Unmarshal(got.Body, &gotBody); err != nil {
		t.Errorf("body %q: %v", got.Body, err)
	}
	_ = json.Unmarshal([]byte(body), &wantBody)
	if b1, b2 := mustJSON(t, gotBody), mustJSON(t, wantBody); b1 != b2 {
		t.Errorf("body %s, want %s", b1, b2)
	}
	if s := decode[api.Session](t, e.do("GET", "/v1/sessions/"+mine.ID, nil, alice.auth()...), 200); s.State != api.StateRunning || s.Owner != alice.ID {
		t.Fatalf("after the event: %s, owner %s; want running, alice's", s.State, s.Owner)
	}

	// The session's own token, minted after the event woke it: it acts
	// for alice, and reads its own events only.
	as := authAs(e.token(t, mine.ID, e.srv.URL))
	own := decode[api.SessionEventPage](t, e.do("GET", base, nil, as...), 200)
	if len(own.Events) != 1 || own.Events[0].Seq != got.Seq || own.Events[0].State != api.DeliveryDelivered {
		t.Errorf("the session's token reads %+v; want the delivered event %d", own, got.Seq)
	}
	denied := wantError(t, e.do("GET", "/v1/sessions/"+other.ID+"/events", nil, as...), http.StatusForbidden, api.CodeForbidden)
	if !strings.Contains(denied.Message, "no policy permits session.events on Session "+other.ID) {
		t.Errorf("the session's token on another session's events: 403 %q; want the policy's reason", denied.Message)
	}
	wantDenied(t, e.do("GET", base, nil, bob.auth()...), policy.SessionEvents, "Session "+mine.ID, "User "+bob.ID)

	wantError(t, e.do("GET", "/v1/sessions/nope/events", nil, alice.auth()...), http.StatusNotFound, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/sessions/nope/events", nil), http.StatusNotFound, api.CodeNotFound) // the admin token
	for _, bad := range []string{"-1", "x", "1.5"} {
		wantError(t, e.do("GET", base+"?after="+bad, nil, alice.auth()...), http.StatusBadRequest, api.CodeInvalid)
	}
	if rest := decode[api.SessionEventPage](t, e.do("GET", base+"?after="+strconv.FormatInt(got.Seq, 10), nil, alice.auth()...), 200); len(rest.Events) != 0 || rest.More {
		t.Errorf("after the last seq: %+v; want nothing", rest)
	}
	if prev := decode[api.SessionEventPage](t, e.do("GET", base+"?after="+strconv.FormatInt(got.Seq-1, 10), nil, alice.auth()...), 200); len(prev.Events) != 1 {
		t.Errorf("after the seq before it: %+v; want the event", prev)
	}
	if theirs := decode[api.SessionEventPage](t, e.do("GET", "/v1/sessions/"+other.ID+"/events", nil, alice.auth()...), 200); len(theirs.Events) != 0 {
		t.Errorf("alice's other session, which waited for nothing: %+v", theirs)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
