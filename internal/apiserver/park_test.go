package apiserver

import (
	"net/http/httptest"
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

	e.fake.mu.Lock()
	e.fake.sessions["f1"] = api.Session{ID: "f1", State: api.StateFailed}
	e.fake.mu.Unlock()
	for _, verb := range []string{"park", "wake"} {
		msg := wantError(t, e.do("POST", "/v1/sessions/f1/"+verb, nil), 409, api.CodeConflict).Message
		if !strings.Contains(msg, "session is failed") {
			t.Errorf("%s: message %q does not pass the manager's through", verb, msg)
		}
	}
	wantError(t, e.do("GET", "/v1/sessions/s1/park", nil), 405, codeMethodNotAllowed)
}

// The park body takes no options yet: anything in it is refused rather
// than ignored, before the manager is called.
func TestParkRefusesUnknownFields(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{`{"until":["exec"]}`, `{"timeout":"6h"}`, `[]`, `{} {}`} {
		for _, verb := range []string{"park", "wake"} {
			wantError(t, e.do("POST", "/v1/sessions/s1/"+verb, strings.NewReader(body), "Content-Type", "application/json"), 400, api.CodeInvalid)
		}
	}
	wantError(t, e.do("POST", "/v1/sessions/s1/park", strings.NewReader(`{}`), "Content-Type", "text/plain"), 415, api.CodeUnsupported)
	if n := e.fake.calls.Load(); n != 0 {
		t.Errorf("session manager called %d times", n)
	}
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
