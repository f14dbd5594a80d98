package apiserver

import (
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestManagerMetricsCountEveryParkAndWake: cove_park_seconds and
// cove_wake_seconds count the parks and wakes the manager did, whoever
// asked (a wake an exec does counts as one), and no call that changed
// nothing (a park of a parked session, a wake of a running one).
func TestManagerMetricsCountEveryParkAndWake(t *testing.T) {
	e, _, _ := newManagerEnv(t)
	s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 201)
	path := "/v1/sessions/" + s.ID
	decode[api.Session](t, e.do("POST", path+"/park", nil), 200)
	decode[api.Session](t, e.do("POST", path+"/park", nil), 200) // parked already: nothing done
	wantCounts(t, e, 1, 0)
	// An exec on the parked session wakes it: no wake request, one wake.
	x := api.ExecRequest{Argv: []string{"true"}}
	if r := decode[api.ExecResult](t, e.doJSON("POST", path+"/exec", x), 200); r.ExitCode != 0 {
		t.Fatalf("exec on the parked session: %+v", r)
	}
	decode[api.Session](t, e.do("POST", path+"/wake", nil), 200) // running: nothing done
	wantCounts(t, e, 1, 1)
	decode[api.Session](t, e.do("POST", path+"/park", nil), 200)
	decode[api.Session](t, e.do("POST", path+"/wake", nil), 200)
	wantCounts(t, e, 2, 2)
}

func wantCounts(t *testing.T, e *testEnv, parks, wakes int) {
	t.Helper()
	resp := e.do("GET", "/metrics", nil, "Authorization", "")
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		"cove_park_seconds_count " + strconv.Itoa(parks),
		"cove_wake_seconds_count " + strconv.Itoa(wakes),
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}
