package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// eventSessions serves one session, s1, whose events come in pages of
// two, as the real manager's come in pages of MaxEventsPage.
type eventSessions struct {
	noSessions
	events []api.SessionEvent
}

func (s eventSessions) Events(_ context.Context, id string, after int64) (api.SessionEventPage, error) {
	if id != "s1" {
		return api.SessionEventPage{}, api.Errorf(api.CodeNotFound, "session %q not found", id)
	}
	page := api.SessionEventPage{Events: []api.SessionEvent{}}
	for _, e := range s.events {
		if e.Seq <= after {
			continue
		}
		if len(page.Events) == 2 {
			page.More = true
			break
		}
		page.Events = append(page.Events, e)
	}
	return page, nil
}

// TestSessionEventsCommand protects 'cove session events' against the
// real API server: it reads every page, oldest first, into one table (a
// failed delivery's error on one line) or one JSON array with the bodies;
// an unknown session is the server's 404 message, a missing id a usage
// error.
func TestSessionEventsCommand(t *testing.T) {
	at := testNow.Add(-3 * time.Minute)
	evs := []api.SessionEvent{
		{Seq: 3, Source: "github", Name: "check_suite.completed", ID: "g1", Received: at, Body: json.RawMessage(`{"a":1}`), State: api.DeliveryDelivered},
		{Seq: 7, Source: "deploys", Name: "deploy-done", ID: "d1", Received: at, State: api.DeliveryFailed, Error: "wake: no room\non the host"},
		{Seq: 9, Source: "cove", Name: "timeout", ID: "t1", Received: at, State: api.DeliveryPending},
	}
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(apiserver.New(apiserver.Config{Sessions: eventSessions{events: evs}, Token: testToken,
		Identities: &identity.Directory{Store: st}, Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})}).Handler())
	t.Cleanup(srv.Close)
	token := adminUserToken(t, srv.URL)

	code, out, errOut := runAs(t, srv.URL, token, "session", "events", "s1")
	want := "SEQ   EVENT                          ID   STATE       AGE   ERROR\n" +
		"3     github:check_suite.completed   g1   delivered   3m    -\n" +
		"7     deploys:deploy-done            d1   failed      3m    wake: no room on the host\n" +
		"9     cove:timeout                   t1   pending     3m    -\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("session events: exit %d, stderr %q, stdout\n%s\nwant\n%s", code, errOut, out, want)
	}

	code, out, _ = runAs(t, srv.URL, token, "session", "events", "s1", "--json")
	var got []api.SessionEvent
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("session events --json: exit %d, %v: %s", code, err, out)
	}
	var body bytes.Buffer
	if len(got) == 3 {
		_ = json.Compact(&body, got[0].Body)
	}
	if len(got) != 3 || got[0].Seq != 3 || body.String() != `{"a":1}` || got[2].Seq != 9 || got[1].Error != evs[1].Error {
		t.Errorf("session events --json: %+v", got)
	}

	if code, out, errOut := runAs(t, srv.URL, token, "session", "events", "nope"); code != 1 || out != "" || !strings.Contains(errOut, `session "nope" not found`) {
		t.Errorf("unknown session: exit %d, %q, %q", code, out, errOut)
	}
	if code, _, errOut := runAs(t, srv.URL, token, "session", "events"); code != 2 || !strings.Contains(errOut, "Run 'cove session events --help' for usage.") {
		t.Errorf("no id: exit %d, %q", code, errOut)
	}
}
