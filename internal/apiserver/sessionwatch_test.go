package apiserver

import (
	"bufio"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestWatchSessionsPushesOnlyOwn: GET /v1/sessions/watch, in front of the
// real manager on the fake VMM and the default policy, sends an engineer
// her list at once and again after each change — her session created,
// parked, removed — without a poll; another engineer's sessions, created,
// parked and removed meanwhile, are in none of the lists she receives,
// and each list is GET /v1/sessions' answer for her. No token is 401.
func TestWatchSessionsPushesOnlyOwn(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	bobs := e.createSession(t, bob, api.CreateSessionRequest{})

	wantError(t, e.do("GET", "/v1/sessions/watch", nil, "Authorization", ""), 401, api.CodeUnauthorized)

	resp := e.do("GET", "/v1/sessions/watch", nil, alice.auth()...)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lists := make(chan []api.Session, 64)
	go func() {
		defer close(lists)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l sessionList
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("a line that is not a list: %q: %v", sc.Text(), err)
				return
			}
			lists <- l.Sessions
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	bobsSeen := []string{bobs.ID}
	// next waits for a list that satisfies ok, failing on any list that
	// holds one of bob's sessions.
	next := func(what string, ok func([]api.Session) bool) []api.Session {
		t.Helper()
		timeout := time.After(time.Minute)
		for {
			select {
			case l, open := <-lists:
				if !open {
					t.Fatalf("the stream ended waiting for %s", what)
				}
				for _, s := range l {
					if slices.Contains(bobsSeen, s.ID) || s.Owner != alice.ID {
						t.Fatalf("alice's stream carries %s (owner %s), not hers", s.ID, s.Owner)
					}
				}
				if ok(l) {
					return l
				}
			case <-timeout:
				t.Fatalf("no list with %s within a minute", what)
			}
		}
	}
	state := func(id string) func([]api.Session) string {
		return func(l []api.Session) string {
			for _, s := range l {
				if s.ID == id {
					return s.State
				}
			}
			return ""
		}
	}
	next("the first list, empty", func(l []api.Session) bool { return len(l) == 0 })

	mine := e.createSession(t, alice, api.CreateSessionRequest{})
	next("her new session running", func(l []api.Session) bool { return state(mine.ID)(l) == api.StateRunning })
	bobs2 := e.createSession(t, bob, api.CreateSessionRequest{})
	bobsSeen = append(bobsSeen, bobs2.ID)
	decode[api.Session](t, e.do("POST", "/v1/sessions/"+bobs.ID+"/park", nil, bob.auth()...), 200)
	decode[api.Session](t, e.do("POST", "/v1/sessions/"+mine.ID+"/park", nil, alice.auth()...), 200)
	got := next("her session parked", func(l []api.Session) bool { return state(mine.ID)(l) == api.StateParked })
	listed := decode[sessionList](t, e.do("GET", "/v1/sessions", nil, alice.auth()...), 200).Sessions
	if len(got) != 1 || len(listed) != 1 || got[0].ID != listed[0].ID || got[0].State != listed[0].State {
		t.Errorf("the pushed list %+v is not GET /v1/sessions' %+v", got, listed)
	}
	if r := e.do("DELETE", "/v1/sessions/"+bobs2.ID, nil, bob.auth()...); r.StatusCode != 204 {
		t.Fatalf("bob removes his: %d", r.StatusCode)
	}
	if r := e.do("DELETE", "/v1/sessions/"+mine.ID, nil, alice.auth()...); r.StatusCode != 204 {
		t.Fatalf("alice removes hers: %d", r.StatusCode)
	}
	next("her session gone", func(l []api.Session) bool { return len(l) == 0 })
}
