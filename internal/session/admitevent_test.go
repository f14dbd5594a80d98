package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// TestFakeRefusedWakeKeepsTheEventPending: a webhook event for a parked
// session arrives while the host has no room to wake it (admission). The
// wake is refused, the session stays parked, and the event stays pending,
// neither failed nor dropped; once a neighbour is removed the event wakes
// the session and reaches its guest once. A clone is admitted the same
// way: one beyond the room is refused with nothing made.
func TestFakeRefusedWakeKeepsTheEventPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// One 64 MiB session (+128 MiB for its VMM) fits in 300 MiB, two do not.
	r := newFakeRigWith(t, func(c *session.Config) {
		c.Admission = session.Admission{HostMemoryMiB: 300, HostCPUs: 4, MemoryOvercommit: 1, CPUOvercommit: 1}
	})
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	a := r.create(api.CreateSessionRequest{}).ID
	if _, err := r.mgr.ParkUntil(ctx, a, []string{"deploys:done"}, 0); err != nil {
		t.Fatal(err)
	}
	b := r.create(api.CreateSessionRequest{}).ID // fits: a parked holds nothing
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := r.mgr.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	deliveries := func(state string) int {
		ds, err := r.store.ListDeliveries(ctx, state)
		if err != nil {
			t.Fatal(err)
		}
		return len(ds)
	}
	// The deliverer tries (once a second) and is refused each time: after
	// a few rounds, the event is still pending and the session parked.
	time.Sleep(3 * time.Second)
	if p, d, f := deliveries(store.DeliveryPending), deliveries(store.DeliveryDelivered), deliveries(store.DeliveryFailed); p != 1 || d != 0 || f != 0 {
		t.Fatalf("while the host has no room: %d pending, %d delivered, %d failed deliveries; want the one pending", p, d, f)
	}
	r.wantState(a, api.StateParked, "")
	if vm := r.driver.Find(a); vm != nil {
		t.Fatal("a refused wake left a VM running")
	}
	// A clone beyond the room is refused too, with nothing made.
	if _, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "web"}); !api.IsCode(err, api.CodeUnavailable) {
		t.Fatalf("a clone beyond the host's room: %v, want 503", err)
	}
	if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 2 {
		t.Fatalf("sessions after a refused clone: %+v (%v), want the two", ss, err)
	}
	r.wantNoOrphans([]string{a}, b)

	if err := r.mgr.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	r.eventually("the event is delivered once there is room", func() bool { return deliveries(store.DeliveryDelivered) == 1 })
	r.wantState(a, api.StateRunning, "")
	files, err := r.mgr.ListDir(ctx, a, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v (%v), want one", files, err)
	}
	if f := deliveries(store.DeliveryFailed); f != 0 {
		t.Fatalf("%d failed deliveries", f)
	}
}

// TestFakePoolRefillsAreAdmitted: a warm pool larger than the host's room
// fills only as far as the room goes (its refills are admitted as
// creates are), and a clone from it is made while a create beyond the
// room is refused.
func TestFakePoolRefillsAreAdmitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Two 64 MiB VMs (+128 MiB each for the VMM) fit in 400 MiB, three do not.
	r := newFakeRigWith(t, func(c *session.Config) {
		c.Admission = session.Admission{HostMemoryMiB: 400, HostCPUs: 4, MemoryOvercommit: 1, CPUOvercommit: 1}
	})
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"true"}, Pool: 3}); err != nil {
		t.Fatal(err)
	}
	ready := func() int {
		tp, err := r.mgr.GetTemplate(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		return tp.PoolReady
	}
	r.eventually("the pool fills as far as the room goes", func() bool { return ready() == 2 })
	time.Sleep(2 * time.Second) // its refills go on being tried
	if n, vms := ready(), len(r.driver.Running()); n != 2 || vms != 2 {
		t.Fatalf("a pool of 3 on a host with room for 2: %d ready, %d VMs", n, vms)
	}
	if _, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{}); !api.IsCode(err, api.CodeUnavailable) {
		t.Fatalf("a create while the pool holds the room: %v, want 503", err)
	}
	s := r.create(api.CreateSessionRequest{Template: "web"}) // claims a pooled clone
	r.echo(s.ID)
	if vms := len(r.driver.Running()); vms != 2 {
		t.Fatalf("%d VMs after a clone from the pool, want 2", vms)
	}
}
