package session_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestEventWaitInGuest checks the guest tool that agents use to wait for
// events delivered into /run/cove/events: it is on the PATH, times out
// with 124 when nothing comes, returns events that arrive while it waits,
// and takes pending events oldest first (by name, whatever order they
// arrived in) and each once, also when several waiters wait at once.
func TestEventWaitInGuest(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	wait := func(timeout string) result {
		return r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", timeout}}, nil)
	}
	if res := wait("300ms"); res.status.Code != 124 {
		t.Fatalf("event wait with nothing delivered: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	// deliver puts events into the guest the way the host does: each
	// written to a dot-file and renamed into place, in the order given.
	deliver := func(names ...string) {
		t.Helper()
		var script strings.Builder
		for _, n := range names {
			fmt.Fprintf(&script, "echo '%s' > /run/cove/events/.%s.json && mv /run/cove/events/.%s.json /run/cove/events/%s.json && ", eventBody(n), n, n, n)
		}
		script.WriteString("true")
		r.sh(t, s.ID, script.String())
	}

	// Three waiters already waiting when three events arrive at once:
	// each gets one, none gets one twice.
	waiters := make(chan result, 3)
	for range 3 {
		go func() {
			// The timeout names these waiters in the guest's process list.
			res, err := runCmd(r.mgr, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "120s"}}, nil)
			if err != nil {
				res.status.Code, res.stderr = -1, err.Error()
			}
			waiters <- res
		}()
	}
	var ps string
	if !waitFor(2*time.Minute, func() bool {
		ps = r.sh(t, s.ID, "ps")
		return strings.Count(ps, "event wait --timeout 120s") == 3
	}) {
		t.Fatalf("the three waiters did not all start in 2 minutes; processes in the guest:\n%s", ps)
	}
	deliver("0002-b", "0001-a", "0003-c")
	var got []string
	for range 3 {
		select {
		case res := <-waiters:
			if res.status.Code != 0 {
				t.Fatalf("waiter: exit %d, stdout %q, stderr %q", res.status.Code, res.stdout, res.stderr)
			}
			got = append(got, strings.TrimSpace(res.stdout))
		case <-time.After(3 * time.Minute):
			t.Fatalf("waiters returned %q, then none for 3 minutes", got)
		}
	}
	slices.Sort(got)
	if want := []string{eventBody("0001-a"), eventBody("0002-b"), eventBody("0003-c")}; !slices.Equal(got, want) {
		t.Fatalf("three waiters got %q, want each of %q once", got, want)
	}

	// Events pending before anyone waits, delivered out of order, are
	// taken oldest first. The waits' 2 s timeout is what the last one
	// below, with nothing left, waits out.
	deliver("0006-f", "0004-d", "0005-e")
	for _, n := range []string{"0004-d", "0005-e", "0006-f"} {
		res := wait("2s")
		if res.status.Code != 0 || strings.TrimSpace(res.stdout) != eventBody(n) {
			t.Fatalf("event wait: exit %d, stdout %q, stderr %q; want %s", res.status.Code, res.stdout, res.stderr, eventBody(n))
		}
	}
	// Each once: nothing is left pending, every event was taken, and the
	// same wait that found each event now finds none.
	pending, taken := guestEventFiles(t, r, s.ID)
	slices.Sort(taken)
	if want := []string{"0001-a.json", "0002-b.json", "0003-c.json", "0004-d.json", "0005-e.json", "0006-f.json"}; len(pending) != 0 || !slices.Equal(taken, want) {
		t.Fatalf("events in the guest: pending %q, taken %q; want none pending, all taken", pending, taken)
	}
	if res := wait("2s"); res.status.Code != 124 {
		t.Fatalf("wait with every event taken: exit %d, stdout %q", res.status.Code, res.stdout)
	}
}

// eventBody is the content of the test event named n.
func eventBody(n string) string { return `{"source":"test","name":"` + n + `"}` }
