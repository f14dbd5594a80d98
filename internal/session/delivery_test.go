package session_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// TestDeliveries holds the README's delivery promises on one real session
// (booted once, parked and woken through each step):
//   - a delivery pending when the server goes is made by the next one;
//   - an event that arrives while its session is parking waits for the
//     park to finish and is delivered after it;
//   - a wake that fails marks the delivery and the session failed.
func TestDeliveries(t *testing.T) {
	ctx := context.Background()
	a := newRig(t, rigOptions{})
	s := a.create(t, api.CreateSessionRequest{})
	probe := &parkProbe{}
	var b *rig
	top := t // b outlives the subtest that opens it

	ok := t.Run("pending across a restart", func(t *testing.T) {
		// Manager a never calls Recover, which starts the deliverer: it
		// records the event and its delivery and goes away before
		// delivering, as a server stopped right after its 202 does.
		if _, err := a.mgr.ParkUntil(ctx, s.ID, []string{"deploys:deploy-done env=restart"}, 0); err != nil {
			t.Fatal(err)
		}
		if dup, err := a.mgr.Accept(ctx, deployEvent(t, "restart-1", "restart")); err != nil || dup {
			t.Fatalf("accept: dup %v, %v", dup, err)
		}
		if d, found := deliveryOf(t, a.store, s.ID, "restart-1"); !found || d.State != store.DeliveryPending {
			t.Fatalf("before the restart: delivery %+v (found %v), want pending", d, found)
		}
		if got, _ := a.mgr.Get(ctx, s.ID); got.State != api.StateParked {
			t.Fatalf("before the restart: session %s, want parked", got.State)
		}
		a.close()

		b = openRig(top, rigOptions{dir: a.dir, db: a.db, qemuStep: probe.step})
		if err := b.mgr.Recover(ctx); err != nil {
			t.Fatal(err)
		}
		waitDelivery(t, b, s.ID, "restart-1", store.DeliveryDelivered)
		if got, _ := b.mgr.Get(ctx, s.ID); got.State != api.StateRunning {
			t.Fatalf("after the delivery: session %s (%q), want running", got.State, got.Error)
		}
		wantGuestEvent(t, b, s.ID, "restart-1")
	})
	if !ok {
		return
	}

	ok = t.Run("arrives while parking", func(t *testing.T) {
		pid := qemuPID(t, b.dir, s.ID)
		saves := probe.saves.Load()
		// The park is held after its device state is written, before the
		// snapshot is complete: the session is recorded parking, and
		// stays so until the test lets the park go on.
		reached, release := probe.hold(t, "save.migrated")
		parked := make(chan error, 1)
		go func() {
			got, err := b.mgr.ParkUntil(ctx, s.ID, []string{"deploys:deploy-done env=mid-park"}, 0)
			if err == nil && got.State != api.StateParked {
				err = fmt.Errorf("park returned the session %s, want parked", got.State)
			}
			parked <- err
		}()
		select {
		case <-reached:
		case err := <-parked:
			t.Fatalf("the park ended before its save reached the held step: %v", err)
		case <-time.After(2 * time.Minute):
			t.Fatal("the park's save did not reach save.migrated in 2 minutes")
		}
		if got, _ := b.mgr.Get(ctx, s.ID); got.State != api.StateParking {
			t.Fatalf("while the save is held: session %s, want parking", got.State)
		}
		if dup, err := b.mgr.Accept(ctx, deployEvent(t, "mid-park-1", "mid-park")); err != nil || dup {
			t.Fatalf("accept while parking: dup %v, %v", dup, err)
		}
		if d, found := deliveryOf(t, b.store, s.ID, "mid-park-1"); !found || d.State != store.DeliveryPending {
			t.Fatalf("event accepted while parking: delivery %+v (found %v), want pending", d, found)
		}
		release()
		if err := <-parked; err != nil {
			t.Fatalf("the park during which the event arrived: %v; want it to complete", err)
		}
		waitDelivery(t, b, s.ID, "mid-park-1", store.DeliveryDelivered)
		// The park completed (a snapshot was saved) and the delivery woke
		// the session from it, in a new QEMU process.
		if n := probe.saves.Load() - saves; n != 1 {
			t.Fatalf("%d saves completed, want the park's one", n)
		}
		if got := qemuPID(t, b.dir, s.ID); got == pid {
			t.Fatalf("after the delivery the session runs in the QEMU process it parked from (%d): it was never parked", pid)
		}
		wantGuestEvent(t, b, s.ID, "mid-park-1")
	})
	if !ok {
		return
	}

	t.Run("failed wake", func(t *testing.T) {
		if _, err := b.mgr.ParkUntil(ctx, s.ID, []string{"deploys:deploy-done env=broken"}, 0); err != nil {
			t.Fatal(err)
		}
		// Damage the snapshot at rest: one byte of the device state, the
		// file's size unchanged. The wake's check of the manifest finds it.
		state := filepath.Join(b.dir, s.ID, "state")
		data, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(state, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if dup, err := b.mgr.Accept(ctx, deployEvent(t, "broken-1", "broken")); err != nil || dup {
			t.Fatalf("accept: dup %v, %v", dup, err)
		}
		d := waitDelivery(t, b, s.ID, "broken-1", store.DeliveryFailed)
		if !strings.Contains(d.Error, "corrupt") {
			t.Errorf("failed delivery's error %q does not say the snapshot is corrupt", d.Error)
		}
		got, err := b.mgr.Get(ctx, s.ID)
		if err != nil || got.State != api.StateFailed || !strings.Contains(got.Error, "corrupt") {
			t.Fatalf("session whose wake for a delivery failed: %s (%q), %v; want failed, saying why", got.State, got.Error, err)
		}
		if pid := qemu.PIDOf(b.dir, s.ID); pid != 0 {
			t.Fatalf("QEMU process %d left running for the failed session", pid)
		}
	})
}

// parkProbe is a QEMU driver step hook (rigOptions.qemuStep) for the
// trigger tests. It counts completed saves, which only a park makes in
// these tests: evidence that a park really happened even once the session
// runs again. It can also hold a save at a named step until the test lets
// it go on, so a test acts while a park is under way without guessing how
// long the park takes.
type parkProbe struct {
	saves atomic.Int32 // saves that reached the snapshot's rename

	mu      sync.Mutex
	holdAt  string        // guarded by mu: the step to hold the next save at; "" none
	reached chan struct{} // guarded by mu: closed when the save gets there
	release chan struct{} // guarded by mu: closed to let it go on
}

func (p *parkProbe) step(name string) {
	if name == "save.renamed" {
		p.saves.Add(1)
	}
	p.mu.Lock()
	var reached, release chan struct{}
	if name == p.holdAt {
		reached, release, p.holdAt = p.reached, p.release, ""
	}
	p.mu.Unlock()
	if reached != nil {
		close(reached)
		<-release
	}
}

// hold arms the probe to stop the next save at step at. It returns a
// channel closed once a save is held there, and the function that lets it
// go on (also called at the end of the test, so that a failed test does
// not leave a park, and the cleanup waiting for it, hanging).
func (p *parkProbe) hold(t *testing.T, at string) (<-chan struct{}, func()) {
	reached, release := make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	p.holdAt, p.reached, p.release = at, reached, release
	p.mu.Unlock()
	var once sync.Once
	let := func() { once.Do(func() { close(release) }) }
	t.Cleanup(let)
	return reached, let
}

// deployEvent is a delivery of the generic hook "deploys":
// deploys:deploy-done env=ENV, with delivery id id.
func deployEvent(t *testing.T, id, env string) trigger.Event {
	t.Helper()
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done","env":"`+env+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = id, time.Now()
	return ev
}

// deliveriesOf returns every delivery recorded for session id, with the
// source and delivery id of its event, oldest event first.
func deliveriesOf(t *testing.T, st store.Store, id string) []recordedDelivery {
	t.Helper()
	ctx := context.Background()
	ds, err := st.ListDeliveries(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []recordedDelivery
	for _, d := range ds {
		if d.SessionID != id {
			continue
		}
		ev, err := st.GetEvent(ctx, d.EventSeq)
		if err != nil {
			t.Fatalf("event %d of a delivery to %s: %v", d.EventSeq, id, err)
		}
		out = append(out, recordedDelivery{Delivery: d, Event: ev})
	}
	return out
}

// recordedDelivery is a delivery and its event.
type recordedDelivery struct {
	store.Delivery
	Event store.Event
}

// deliveryOf returns the delivery to session id of the event with delivery
// id eventID, if the store has one.
func deliveryOf(t *testing.T, st store.Store, id, eventID string) (store.Delivery, bool) {
	t.Helper()
	for _, d := range deliveriesOf(t, st, id) {
		if d.Event.ID == eventID {
			return d.Delivery, true
		}
	}
	return store.Delivery{}, false
}

// waitDelivery waits until the delivery of event eventID to session id is
// recorded in state want, and returns it; a delivery that settles in
// another state fails the test at once.
func waitDelivery(t *testing.T, r *rig, id, eventID, want string) store.Delivery {
	t.Helper()
	var d store.Delivery
	var found bool
	if !waitFor(3*time.Minute, func() bool {
		d, found = deliveryOf(t, r.store, id, eventID)
		return found && d.State != store.DeliveryPending
	}) {
		t.Fatalf("delivery of %s to %s: %+v (found %v) after 3 minutes, want %s", eventID, id, d, found, want)
	}
	if d.State != want {
		t.Fatalf("delivery of %s to %s is %s (%q), want %s", eventID, id, d.State, d.Error, want)
	}
	return d
}

// settledDeliveries waits until session id has deliveries and none is
// pending, and returns them.
func settledDeliveries(t *testing.T, r *rig, id string) []recordedDelivery {
	t.Helper()
	var ds []recordedDelivery
	if !waitFor(3*time.Minute, func() bool {
		ds = deliveriesOf(t, r.store, id)
		for _, d := range ds {
			if d.State == store.DeliveryPending {
				return false
			}
		}
		return len(ds) > 0
	}) {
		t.Fatalf("deliveries to %s after 3 minutes: %+v, want some, none pending", id, ds)
	}
	return ds
}

// wantGuestEvent takes the next event in the guest with 'cove-agent event
// wait' and fails the test unless it is the delivery eventID of the
// deploys hook.
func wantGuestEvent(t *testing.T, r *rig, id, eventID string) {
	t.Helper()
	res := r.run(t, id, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "60s"}}, nil)
	if res.status.Code != 0 {
		t.Fatalf("event wait: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	var ev struct{ Source, Name, ID string }
	if err := json.Unmarshal([]byte(res.stdout), &ev); err != nil {
		t.Fatalf("event %q: %v", res.stdout, err)
	}
	if ev.Source != "deploys" || ev.Name != "deploy-done" || ev.ID != eventID {
		t.Fatalf("event in the guest: %+v, want deploys:deploy-done %s", ev, eventID)
	}
}

// guestEventFiles lists the events in the guest's events directory:
// those pending and those taken by 'cove-agent event wait'.
func guestEventFiles(t *testing.T, r *rig, id string) (pending, taken []string) {
	t.Helper()
	ctx := context.Background()
	list := func(dir string) []string {
		fs, err := r.mgr.ListDir(ctx, id, dir)
		if err != nil {
			t.Fatalf("list %s: %v", dir, err)
		}
		var names []string
		for _, f := range fs {
			if strings.HasSuffix(f.Name, ".json") {
				names = append(names, f.Name)
			}
		}
		return names
	}
	return list("/run/cove/events"), list("/run/cove/events/taken")
}
