package session_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestEventWaitInGuest checks the guest tool that agents use to wait for
// events: it is on the PATH, times out with 124, and prints an event
// delivered into /run/cove/events once, oldest first.
func TestEventWaitInGuest(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "300ms"}}, nil)
	if res.status.Code != 124 {
		t.Fatalf("event wait with nothing delivered: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	ctx := context.Background()
	// Deliver the way the host does: a dot-file renamed into place.
	waiter := make(chan result, 1)
	go func() {
		res, err := runCmd(r.mgr, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "60s"}}, nil)
		if err != nil {
			res.stderr = err.Error()
		}
		waiter <- res
	}()
	time.Sleep(300 * time.Millisecond)
	body := `{"source":"github","name":"check_suite.completed"}`
	if err := r.mgr.WriteFile(ctx, s.ID, "/run/cove/events/.0001-x.json", 0o644, bytes.NewReader([]byte(body))); err != nil {
		t.Fatal(err)
	}
	r.sh(t, s.ID, "mv /run/cove/events/.0001-x.json /run/cove/events/0001-x.json")
	select {
	case res := <-waiter:
		if res.status.Code != 0 || strings.TrimSpace(res.stdout) != body {
			t.Fatalf("event wait: exit %d, stdout %q, stderr %q", res.status.Code, res.stdout, res.stderr)
		}
	case <-time.After(time.Minute):
		t.Fatal("event wait did not return")
	}
	// Taken once: the next wait times out.
	res = r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "300ms"}}, nil)
	if res.status.Code != 124 {
		t.Fatalf("second wait: exit %d, stdout %q", res.status.Code, res.stdout)
	}
}
