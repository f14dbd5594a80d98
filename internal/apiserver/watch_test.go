package apiserver

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestManagerWatch: GET /v1/sessions/{id}/files/watch in front of the
// real manager over the fake guest, through api.Client.Watch: the events
// of writes, recursive and not, the stream's clean end when the session
// parks, and bad input.
func TestManagerWatch(t *testing.T) {
	e, mgr, _ := newManagerEnv(t)
	ctx := context.Background()
	cl := &api.Client{BaseURL: e.srv.URL, Token: e.userToken(), HTTP: e.srv.Client()}
	s, err := cl.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Mkdir(ctx, s.ID, "/tmp/w/sub"); err != nil {
		t.Fatal(err)
	}
	write := func(p string) {
		t.Helper()
		if err := cl.WriteFile(ctx, s.ID, p, 0o644, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	// watch watches /tmp/w until want ("type name" each) came, then
	// parks the session: the stream must end, without an error.
	watch := func(recursive bool, want ...string) []string {
		t.Helper()
		events := make(chan string, 1024)
		done := make(chan error, 1)
		go func() {
			done <- cl.Watch(ctx, s.ID, "/tmp/w", recursive, func(ev api.WatchEvent) error {
				events <- ev.Type + " " + ev.Name
				return nil
			})
		}()
		var got []string
		// The watch is on once an event arrives: write a mark until one does.
		for len(got) == 0 {
			write("/tmp/w/mark")
			select {
			case ev := <-events:
				got = append(got, ev)
			case err := <-done:
				t.Fatalf("the watch ended at once: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		write("/tmp/w/sub/b")
		write("/tmp/w/a")
		for slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(got, w) }) {
			select {
			case ev := <-events:
				got = append(got, ev)
			case err := <-done:
				t.Fatalf("the watch ended (%v) before %q; got %q", err, want, got)
			}
		}
		if _, err := mgr.Park(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("the watch across a park ended with %v, want none", err)
		}
		for len(events) > 0 {
			got = append(got, <-events)
		}
		return got
	}
	if got := watch(false, "create a", "write a"); slices.Contains(got, "create sub/b") {
		t.Errorf("a watch that is not recursive saw sub/b: %q", got)
	}
	// The watch wakes the parked session; the files are there already.
	watch(true, "write sub/b", "write a")

	e = e.with(t)
	wantError(t, e.do("GET", "/v1/sessions/"+s.ID+"/files/watch?path=/tmp/nope", nil), 404, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/sessions/"+s.ID+"/files/watch?path=/tmp/w/a", nil), 400, api.CodeInvalid)
	wantError(t, e.do("GET", "/v1/sessions/"+s.ID+"/files/watch?path=relative", nil), 400, api.CodeInvalid)
	wantError(t, e.do("GET", "/v1/sessions/"+s.ID+"/files/watch", nil), 400, api.CodeInvalid)
	wantError(t, e.do("GET", "/v1/sessions/s-nosuchsession/files/watch?path=/tmp", nil), 404, api.CodeNotFound)
}
