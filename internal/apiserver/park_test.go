package apiserver

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestParkAndWake protects the park and wake routes: their answers, that
// repeating one is harmless, and that the manager's errors pass through.
func TestParkAndWake(t *testing.T) {
	e := newEnv(t)
	s := decode[api.Session](t, e.do("POST", "/v1/sessions/s1/park", nil), 200)
	if s.ID != "s1" || s.State != api.StateParked || s.Snapshot == nil || s.Snapshot.DiskBytes == 0 {
		t.Fatalf("park: %+v", s)
	}
	// Parking a parked session answers it as it is; {} is an empty body.
	if s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions/s1/park", struct{}{}), 200); s.State != api.StateParked {
		t.Fatalf("park again: %+v", s)
	}
	if s := decode[api.Session](t, e.do("GET", "/v1/sessions/s1", nil), 200); s.State != api.StateParked {
		t.Fatalf("get after park: %+v", s)
	}
	s = decode[api.Session](t, e.doJSON("POST", "/v1/sessions/s1/wake", struct{}{}), 200)
	if s.State != api.StateRunning || s.Snapshot != nil {
		t.Fatalf("wake: %+v", s)
	}
	if s := decode[api.Session](t, e.do("POST", "/v1/sessions/s1/wake", nil), 200); s.State != api.StateRunning {
		t.Fatalf("wake again: %+v", s)
	}

	wantError(t, e.do("POST", "/v1/sessions/nope/park", nil), 404, api.CodeNotFound)
	wantError(t, e.do("POST", "/v1/sessions/nope/wake", nil), 404, api.CodeNotFound)

	// A conflict passes through as 409 with the Sessions' message as it
	// is. The message here is the fake's; the manager's own conflicts are
	// TestManagerConflicts'.
	e.fake.mu.Lock()
	e.fake.sessions["f1"] = api.Session{ID: "f1", State: api.StateFailed}
	e.fake.mu.Unlock()
	for verb, call := range map[string]func(context.Context, string) (api.Session, error){"park": e.fake.Park, "wake": e.fake.Wake} {
		msg := wantError(t, e.do("POST", "/v1/sessions/f1/"+verb, nil), 409, api.CodeConflict).Message
		if _, want := call(context.Background(), "f1"); want == nil || msg != want.Error() {
			t.Errorf("%s: message %q, want the Sessions' %v as it is", verb, msg, want)
		}
	}
	wantError(t, e.do("GET", "/v1/sessions/s1/park", nil), 405, codeMethodNotAllowed)
}

// Park and wake bodies refuse what they do not know rather than ignore
// it, before the manager is called: wake takes no options, park only
// until and timeout.
func TestParkRefusesUnknownFields(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{`{"wait":"6h"}`, `{"until":"github:push"}`, `[]`, `{} {}`} {
		for _, verb := range []string{"park", "wake"} {
			wantError(t, e.do("POST", "/v1/sessions/s1/"+verb, strings.NewReader(body), "Content-Type", "application/json"), 400, api.CodeInvalid)
		}
	}
	for _, body := range []string{`{"until":["github:push"]}`, `{"timeout":"6h"}`} {
		wantError(t, e.do("POST", "/v1/sessions/s1/wake", strings.NewReader(body), "Content-Type", "application/json"), 400, api.CodeInvalid)
	}
	wantError(t, e.do("POST", "/v1/sessions/s1/park", strings.NewReader(`{}`), "Content-Type", "text/plain"), 415, api.CodeUnsupported)
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("session manager called %d times", n)
	}
}

// TestParkUntil protects park with a body: the expressions and the parsed
// timeout reach ParkUntil as sent, the answer shows what the session waits
// for, and an empty body or {} or {"until":[]} is still a plain park.
func TestParkUntil(t *testing.T) {
	e := newEnv(t)
	until := []string{"github:check_suite.completed repo=acme/api", "ci:done env=prod"}
	s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions/s1/park", api.ParkRequest{Until: until, Timeout: "6h"}), 200)
	if s.State != api.StateParked || s.Waiting == nil || !slices.Equal(s.Waiting.Until, until) || s.Waiting.Deadline == nil {
		t.Fatalf("park until: %+v (waiting %+v)", s, s.Waiting)
	}
	e.doJSON("POST", "/v1/sessions/s1/wake", struct{}{})
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions/s1/park", api.ParkRequest{Timeout: "30m"}), 200)
	e.doJSON("POST", "/v1/sessions/s1/wake", struct{}{})
	// Plain parks do not call ParkUntil.
	for _, body := range []string{``, `{}`, `{"until":[]}`, `{"until":null,"timeout":""}`} {
		if s := decode[api.Session](t, e.do("POST", "/v1/sessions/s1/park", strings.NewReader(body)), 200); s.Waiting != nil {
			t.Errorf("park with %q: waiting %+v", body, s.Waiting)
		}
		e.doJSON("POST", "/v1/sessions/s1/wake", struct{}{})
	}
	// The manager's errors pass through.
	wantError(t, e.doJSON("POST", "/v1/sessions/nope/park", api.ParkRequest{Timeout: "1h"}), 404, api.CodeNotFound)

	e.fake.mu.Lock()
	got := e.fake.parkUntil
	e.fake.mu.Unlock()
	want := []parkUntilCall{{"s1", until, 6 * time.Hour}, {"s1", nil, 30 * time.Minute}}
	if len(got) != len(want) {
		t.Fatalf("ParkUntil calls %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].id != want[i].id || !slices.Equal(got[i].until, want[i].until) || got[i].timeout != want[i].timeout {
			t.Errorf("ParkUntil call %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A bad park body is refused before the manager is called, and a bad
// expression's message points at the fault with a caret.
func TestParkUntilValidation(t *testing.T) {
	e := newEnv(t)
	msg := wantError(t, e.doJSON("POST", "/v1/sessions/s1/park", api.ParkRequest{Until: []string{"github:push", "github:check_suite.completed repo"}}), 400, api.CodeInvalid).Message
	if !strings.Contains(msg, "until[1]") || !strings.Contains(msg, "\n    github:check_suite.completed repo\n") || !strings.HasSuffix(msg, "^") {
		t.Errorf("message %q: want the index, the expression and a caret", msg)
	}
	tooMany := make([]string, 33)
	for i := range tooMany {
		tooMany[i] = "github:push"
	}
	for name, req := range map[string]api.ParkRequest{
		"empty expression": {Until: []string{""}},
		"no source":        {Until: []string{"push"}},
		"too many":         {Until: tooMany},
		"bad timeout":      {Timeout: "soon"},
		"zero timeout":     {Timeout: "0s"},
		"negative timeout": {Timeout: "-1h"},
		"timeout too long": {Timeout: "721h"},
	} {
		t.Run(name, func(t *testing.T) {
			wantError(t, e.with(t).doJSON("POST", "/v1/sessions/s1/park", req), 400, api.CodeInvalid)
		})
	}
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("session manager called %d times", n)
	}
	// The limits themselves pass.
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions/s1/park", api.ParkRequest{Until: tooMany[:32], Timeout: "720h"}), 200)
}

// Parks, wakes and template builds may outlast the http.Server's
// timeouts; the answer must still arrive.
func TestLongCallsOutliveServerTimeouts(t *testing.T) {
	e := newEnv(t)
	ts := httptest.NewUnstartedServer(e.server.Handler())
	ts.Config.ReadTimeout = 200 * time.Millisecond
	ts.Config.WriteTimeout = 200 * time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	e.srv = ts
	e.fake.setSlow(500 * time.Millisecond)

	if s := decode[api.Session](t, e.do("POST", "/v1/sessions/s1/park", nil), 200); s.State != api.StateParked {
		t.Fatalf("park: %+v", s)
	}
	if s := decode[api.Session](t, e.do("POST", "/v1/sessions/s1/wake", nil), 200); s.State != api.StateRunning {
		t.Fatalf("wake: %+v", s)
	}
	if tp := decode[api.Template](t, e.doJSON("POST", "/v1/templates", api.CreateTemplateRequest{Name: "py"}), 201); tp.Name != "py" {
		t.Fatalf("template: %+v", tp)
	}
}
