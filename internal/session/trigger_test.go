package session_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
)

// TestParkUntilEvent parks a session until a webhook event: an unrelated
// event leaves it parked, the matching one wakes it and is readable inside
// the guest once, a replay of the same delivery changes nothing.
func TestParkUntilEvent(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil { // starts the deliverer
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{})
	if _, err := r.mgr.ParkUntil(ctx, s.ID, []string{"deploys:deploy-done env=staging"}, 0); err != nil {
		t.Fatal(err)
	}
	got, _ := r.mgr.Get(ctx, s.ID)
	if got.State != api.StateParked || got.Waiting == nil || got.Waiting.Until[0] != "deploys:deploy-done env=staging" {
		t.Fatalf("after park --until: %+v", got)
	}
	if list, err := r.mgr.List(ctx); err != nil || len(list) != 1 || list[0].Waiting == nil || list[0].Waiting.Until[0] != got.Waiting.Until[0] {
		t.Fatalf("List after park --until: %+v, %v; want the session waiting", list, err)
	}
	event := func(id, env string) trigger.Event {
		ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done","env":"`+env+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		ev.ID, ev.Received = id, time.Now()
		return ev
	}
	if dup, err := r.mgr.Accept(ctx, event("d1", "prod")); err != nil || dup {
		t.Fatalf("accept unrelated: dup %v, %v", dup, err)
	}
	time.Sleep(1500 * time.Millisecond)
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateParked {
		t.Fatalf("an unrelated event woke the session: %s", got.State)
	}
	start := time.Now()
	if dup, err := r.mgr.Accept(ctx, event("d2", "staging")); err != nil || dup {
		t.Fatalf("accept matching: dup %v, %v", dup, err)
	}
	if dup, err := r.mgr.Accept(ctx, event("d2", "staging")); err != nil || !dup {
		t.Fatalf("replayed delivery: dup %v, %v; want dup", dup, err)
	}
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "60s"}}, nil)
	t.Logf("event readable in the guest %s after it was accepted", time.Since(start).Round(time.Millisecond))
	if res.status.Code != 0 {
		t.Fatalf("event wait: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	var ev struct {
		Source, Name, ID string
		Body             map[string]any
	}
	if err := json.Unmarshal([]byte(res.stdout), &ev); err != nil {
		t.Fatalf("event %q: %v", res.stdout, err)
	}
	if ev.Source != "deploys" || ev.Name != "deploy-done" || ev.ID != "d2" || ev.Body["env"] != "staging" {
		t.Fatalf("event in the guest: %+v", ev)
	}
	// Exactly once: no second event waits.
	res = r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "500ms"}}, nil)
	if res.status.Code != 124 {
		t.Fatalf("a second event was delivered: %q", res.stdout)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.Waiting != nil {
		t.Fatalf("subscription still pending after its event: %+v", got.Waiting)
	}
}

// TestParkUntilTimeout checks a deadline wakes the session with a timeout
// event, and that a bad expression is refused with a pointer to the error.
func TestParkUntilTimeout(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{})
	_, err := r.mgr.ParkUntil(ctx, s.ID, []string{"github:check_suite.completed repo=acme/api"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(30*time.Second, func() bool {
		got, _ := r.mgr.Get(ctx, s.ID)
		return got.State == api.StateRunning
	}) {
		t.Fatal("the timeout did not wake the session")
	}
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "30s"}}, nil)
	if res.status.Code != 0 || !strings.Contains(res.stdout, `"timeout"`) {
		t.Fatalf("timeout event: exit %d, %q", res.status.Code, res.stdout)
	}
	_, err = r.mgr.ParkUntil(ctx, s.ID, []string{"github:check_suite.completed repo"}, 0)
	wantCode(t, "invalid expression", err, api.CodeInvalid)
	if !strings.Contains(err.Error(), "^") {
		t.Fatalf("the error does not point at the problem: %q", err)
	}
}

// TestParkFromInsideTheGuest has a program in the guest park its own
// session until an event; the same call returns that event after the wake
// (here a timeout event), and the exec that ran it finishes normally.
func TestParkFromInsideTheGuest(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{})
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "deploys:never", "--timeout", "2s"}}, nil)
	if res.status.Code != 0 || !strings.Contains(res.stdout, `"timeout"`) {
		t.Fatalf("park from the guest: exit %d, stdout %q, stderr %q", res.status.Code, res.stdout, res.stderr)
	}
	res = r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "bad expression"}}, nil)
	if res.status.Code != 1 || !strings.Contains(res.stderr, "^") {
		t.Fatalf("park with a bad expression: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("session is %s after a refused park", got.State)
	}
}
