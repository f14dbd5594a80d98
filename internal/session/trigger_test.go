package session_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
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
	if dup, err := r.mgr.Accept(ctx, deployEvent(t, "d1", "prod")); err != nil || dup {
		t.Fatalf("accept unrelated: dup %v, %v", dup, err)
	}
	// Accept records an event's deliveries in the transaction that
	// records the event, before it returns, and only a delivery wakes a
	// parked session: no delivery now means the unrelated event never
	// wakes it, with no wait. The matching event below is the positive
	// control: the same look finds its delivery.
	if ds := deliveriesOf(t, r.store, s.ID); len(ds) != 0 {
		t.Fatalf("an unrelated event made deliveries: %+v", ds)
	}
	if _, err := r.store.GetSubscription(ctx, s.ID); err != nil {
		t.Fatalf("an unrelated event consumed the subscription: %v", err)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateParked {
		t.Fatalf("after an unrelated event: session %s, want parked", got.State)
	}
	start := time.Now()
	if dup, err := r.mgr.Accept(ctx, deployEvent(t, "d2", "staging")); err != nil || dup {
		t.Fatalf("accept matching: dup %v, %v", dup, err)
	}
	if _, found := deliveryOf(t, r.store, s.ID, "d2"); !found {
		t.Fatal("the matching event made no delivery")
	}
	if dup, err := r.mgr.Accept(ctx, deployEvent(t, "d2", "staging")); err != nil || !dup {
		t.Fatalf("replayed delivery: dup %v, %v; want dup", dup, err)
	}
	if ds := deliveriesOf(t, r.store, s.ID); len(ds) != 1 {
		t.Fatalf("deliveries after a replay: %+v, want the one of d2", ds)
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
	// Exactly once: the delivery is recorded done (the deliverer retries
	// only pending ones), and the guest holds that one event, taken.
	waitDelivery(t, r, s.ID, "d2", store.DeliveryDelivered)
	if pending, taken := guestEventFiles(t, r, s.ID); len(pending) != 0 || len(taken) != 1 {
		t.Fatalf("events in the guest: pending %q, taken %q; want d2's alone, taken", pending, taken)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.Waiting != nil {
		t.Fatalf("subscription still pending after its event: %+v", got.Waiting)
	}
}

// TestParkUntilTimeout checks a deadline wakes the session with a timeout
// event, and that a bad expression is refused with a pointer to the error.
func TestParkUntilTimeout(t *testing.T) {
	probe := &parkProbe{}
	r := newRig(t, rigOptions{qemuStep: probe.step})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{})
	pid := qemuPID(t, r.dir, s.ID)
	parked, err := r.mgr.ParkUntil(ctx, s.ID, []string{"github:check_suite.completed repo=acme/api"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The park happened: ParkUntil answers with the session recorded
	// parked, with its snapshot, and the driver saved one.
	if parked.State != api.StateParked || parked.Snapshot == nil {
		t.Fatalf("park --until --timeout returned %s with snapshot %+v, want parked with one", parked.State, parked.Snapshot)
	}
	if n := probe.saves.Load(); n != 1 {
		t.Fatalf("%d saves, want the park's one", n)
	}
	// Then the timeout woke it: a delivery of cove's timeout event, made
	// into a new QEMU process.
	ds := settledDeliveries(t, r, s.ID)
	if len(ds) != 1 || ds[0].State != store.DeliveryDelivered || ds[0].Event.Source != "cove" || ds[0].Event.Name != "timeout" {
		t.Fatalf("deliveries after the timeout: %+v, want one of cove:timeout, delivered", ds)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("after the timeout's delivery: session %s (%q), want running", got.State, got.Error)
	}
	if got := qemuPID(t, r.dir, s.ID); got == pid {
		t.Fatalf("the woken session runs in the QEMU process it parked from (%d)", pid)
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
// (here a timeout event), and the exec that ran it finishes normally. The
// session was parked meanwhile: its VM was saved, and it runs on in a new
// QEMU process, woken by the timeout's delivery.
func TestParkFromInsideTheGuest(t *testing.T) {
	parallelVM(t)
	probe := &parkProbe{}
	r := newRig(t, rigOptions{qemuStep: probe.step})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{})
	pid := qemuPID(t, r.dir, s.ID)
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "deploys:never", "--timeout", "2s"}}, nil)
	if res.status.Code != 0 || !strings.Contains(res.stdout, `"timeout"`) {
		t.Fatalf("park from the guest: exit %d, stdout %q, stderr %q", res.status.Code, res.stdout, res.stderr)
	}
	if n := probe.saves.Load(); n != 1 {
		t.Fatalf("%d saves while the guest's park ran, want one: the session was not parked", n)
	}
	if got := qemuPID(t, r.dir, s.ID); got == pid {
		t.Fatalf("after the guest's park the session runs in the QEMU process it had before (%d): it was not parked", pid)
	}
	ds := settledDeliveries(t, r, s.ID)
	if len(ds) != 1 || ds[0].State != store.DeliveryDelivered || ds[0].Event.Source != "cove" || ds[0].Event.Name != "timeout" {
		t.Fatalf("deliveries after the guest's park: %+v, want one of cove:timeout, delivered", ds)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning || got.Waiting != nil {
		t.Fatalf("after the guest's park: session %s, waiting %+v; want running, waiting for nothing", got.State, got.Waiting)
	}
	res = r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "bad expression"}}, nil)
	if res.status.Code != 1 || !strings.Contains(res.stderr, "^") {
		t.Fatalf("park with a bad expression: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	if got, _ := r.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("session is %s after a refused park", got.State)
	}
	if n := probe.saves.Load(); n != 1 {
		t.Fatalf("%d saves after a refused park, want still one", n)
	}
}
