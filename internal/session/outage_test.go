package session_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// outageStore is a state store whose session writes fail with
// store.ErrUnavailable while down is set, as SQLite's do on a full disk
// (internal/store/sqlite's TestUnavailableOnAFullDisk) and PostgreSQL's
// while the database restarts: reads still answer.
type outageStore struct {
	store.Store
	down *atomic.Bool
	// reads, if set, makes GetSession fail too while it is set, as a
	// database that cannot be reached at all does.
	reads *atomic.Bool
}

func (o outageStore) GetEvent(ctx context.Context, seq int64) (store.Event, error) {
	if o.reads != nil && o.reads.Load() {
		return store.Event{}, fmt.Errorf("test store: get event: %w: the database cannot be reached", store.ErrUnavailable)
	}
	return o.Store.GetEvent(ctx, seq)
}

func (o outageStore) GetSession(ctx context.Context, id string) (store.Session, error) {
	if o.reads != nil && o.reads.Load() {
		return store.Session{}, fmt.Errorf("test store: get session: %w: the database cannot be reached", store.ErrUnavailable)
	}
	return o.Store.GetSession(ctx, id)
}

func (o outageStore) fail(op string) error {
	if o.down.Load() {
		return fmt.Errorf("test store: %s: %w: the disk holding the database is full", op, store.ErrUnavailable)
	}
	return nil
}

func (o outageStore) CreateSession(ctx context.Context, s *store.Session) error {
	if err := o.fail("create session"); err != nil {
		return err
	}
	return o.Store.CreateSession(ctx, s)
}

func (o outageStore) UpdateSession(ctx context.Context, s *store.Session) error {
	if err := o.fail("update session"); err != nil {
		return err
	}
	return o.Store.UpdateSession(ctx, s)
}

func (o outageStore) DeleteSession(ctx context.Context, id string) error {
	if err := o.fail("delete session"); err != nil {
		return err
	}
	return o.Store.DeleteSession(ctx, id)
}

func (o outageStore) CreateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	if err := o.fail("create checkpoint"); err != nil {
		return err
	}
	return o.Store.CreateCheckpoint(ctx, c)
}

func (o outageStore) UpdateCheckpoint(ctx context.Context, c store.Checkpoint) error {
	if err := o.fail("update checkpoint"); err != nil {
		return err
	}
	return o.Store.UpdateCheckpoint(ctx, c)
}

func (o outageStore) DeleteCheckpoint(ctx context.Context, sessionID, name string) error {
	if err := o.fail("delete checkpoint"); err != nil {
		return err
	}
	return o.Store.DeleteCheckpoint(ctx, sessionID, name)
}

// TestFakeStoreOutageMidOperation: the state store stops taking writes
// (a full disk) at each step of a park, a wake and a removal, after the
// operation's first record is written, and comes back once the operation
// has answered. The session survives without a restart: its record
// follows its VM (running with a VM that answers, or parked with none and
// waking with its files), it parks and wakes again, and a restarted
// server finds the same. A removal cut so is finished by the next rm.
func TestFakeStoreOutageMidOperation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	park := func(m *session.Manager, id string) error { _, err := m.Park(ctx, id); return err }
	wake := func(m *session.Manager, id string) error { _, err := m.Wake(ctx, id); return err }
	rm := func(m *session.Manager, id string) error { return m.Delete(ctx, id) }
	cases := []struct {
		step   string // "": the store is down from the start
		parked bool   // the session is parked before the operation
		op     func(m *session.Manager, id string) error
		name   string
	}{
		{name: "park", op: park},
		{step: "park.recorded", op: park},
		{step: "park.detached", op: park},
		{step: "park.saved", op: park},
		{name: "wake", parked: true, op: wake},
		{step: "wake.recorded", parked: true, op: wake},
		{step: "wake.handle-recorded", parked: true, op: wake},
		{step: "wake.connected", parked: true, op: wake},
		{name: "rm", op: rm},
		{step: "rm.recorded", op: rm},
		{step: "rm.stopped", op: rm},
	}
	for _, tc := range cases {
		name := tc.step
		if name == "" {
			name = tc.name + "/down-from-the-start"
		}
		t.Run(name, func(t *testing.T) {
			var down atomic.Bool
			var at atomic.Pointer[string]
			r := newFakeRigWith(t, func(c *session.Config) {
				c.Store = outageStore{Store: c.Store, down: &down}
				c.CrashPoint = func(name string) {
					if p := at.Load(); p != nil && *p == name {
						down.Store(true)
					}
				}
			})
			id := r.create(api.CreateSessionRequest{}).ID
			r.write(id, "/root/f", "kept\n")
			if tc.parked {
				r.park(id)
			}
			if tc.step == "" {
				down.Store(true)
			}
			at.Store(&tc.step)
			err := tc.op(r.mgr, id)
			at.Store(nil)
			if !down.Swap(false) {
				t.Fatalf("step %s not reached", tc.step)
			}
			if err == nil {
				t.Fatalf("the operation succeeded while the store took no writes")
			}
			t.Logf("with the store down from %q: %v", tc.step, err)
			if tc.step == "" {
				// Refused before anything was done: as it was.
				want := api.StateRunning
				if tc.parked {
					want = api.StateParked
				}
				r.wantState(id, want, "")
			}
			check := func(when string) {
				t.Helper()
				var s api.Session
				r.eventually(when+": the record follows the VM", func() bool {
					var err error
					s, err = r.mgr.Get(ctx, id)
					if err != nil {
						t.Fatalf("%s: get: %v", when, err)
					}
					return s.State == api.StateRunning || s.State == api.StateParked || s.State == api.StateStopping
				})
				vm := r.driver.Find(id)
				switch s.State {
				case api.StateRunning:
					if vm == nil {
						t.Fatalf("%s: the session is running with no VM", when)
					}
				case api.StateParked:
					if vm != nil {
						t.Fatalf("%s: the session is parked while its VM runs", when)
					}
				case api.StateStopping:
					// A removal cut short: the next rm finishes it.
					if err := r.mgr.Delete(ctx, id); err != nil {
						t.Fatalf("%s: rm again: %v", when, err)
					}
					if _, err := r.mgr.Get(ctx, id); !api.IsCode(err, api.CodeNotFound) {
						t.Fatalf("%s: after rm again: %v, want the session gone", when, err)
					}
					if vm := r.driver.Find(id); vm != nil {
						t.Fatalf("%s: the removed session's VM runs", when)
					}
					return
				}
				r.wantFile(id, "/root/f", "kept\n") // wakes a parked one
				r.echo(id)
				r.park(id)
				r.wantFile(id, "/root/f", "kept\n")
			}
			check("once the store is back")
			if _, err := r.mgr.Get(ctx, id); api.IsCode(err, api.CodeNotFound) {
				return
			}
			r.restart()
			check("after a restart")
		})
	}
}

// TestFakeStoreOutageMidCreate: the state store stops taking writes once a
// create has recorded its session, and comes back once the create has
// answered (an error). The create's VM is stopped and its files removed,
// and once the store is back the record says failed, with the reason,
// without a restart (it said creating until one); rm removes it.
func TestFakeStoreOutageMidCreate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, step := range []string{"create.recorded", "create.booted"} {
		t.Run(step, func(t *testing.T) {
			var down atomic.Bool
			r := newFakeRigWith(t, func(c *session.Config) {
				c.Store = outageStore{Store: c.Store, down: &down}
				c.CrashPoint = func(name string) {
					if name == step {
						down.Store(true)
					}
				}
			})
			_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
			if !down.Swap(false) {
				t.Fatalf("step %s not reached", step)
			}
			if err == nil {
				t.Fatal("the create succeeded while the store took no writes")
			}
			ss, err := r.mgr.List(ctx)
			if err != nil || len(ss) != 1 {
				t.Fatalf("sessions after the create: %+v, %v", ss, err)
			}
			id := ss[0].ID
			r.eventually("the record says failed", func() bool { return r.get(id).State == api.StateFailed })
			if s := r.get(id); !strings.Contains(s.Error, "could not be recorded") {
				t.Fatalf("the failed create says %q", s.Error)
			}
			r.wantNoOrphans([]string{id})
			if err := r.mgr.Delete(ctx, id); err != nil {
				t.Fatalf("rm the failed create: %v", err)
			}
			r.wantNoOrphans(nil)
		})
	}
}

// TestFakeStoreOutageMidCheckpoint: the state store stops taking writes at
// each step of a checkpoint, a rollback and a fork, and comes back once it
// has answered (an error). The session comes out of it whole, without a
// restart: running (or parked at the checkpoint, for a rollback that
// stopped its VM), its checkpoints listed only whole, no fork left half
// made; its disk is the one its guest writes (a write survives a park and
// a wake), it rolls back to its checkpoint, and a restarted server agrees.
func TestFakeStoreOutageMidCheckpoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	steps := []string{"checkpoint.recorded", "checkpoint.paused", "checkpoint.switched", "checkpoint.renamed",
		"rollback.staged", "rollback.recorded", "rollback.stopped", "rollback.moving",
		"fork.copying", "fork.copied", "fork.restored"}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			var down atomic.Bool
			var at atomic.Pointer[string]
			r := newFakeRigWith(t, func(c *session.Config) {
				c.Store = outageStore{Store: c.Store, down: &down}
				c.CrashPoint = func(name string) {
					if p := at.Load(); p != nil && *p == name {
						down.Store(true)
					}
				}
			})
			s := r.create(api.CreateSessionRequest{})
			r.write(s.ID, "/root/f", "checkpointed\n")
			r.checkpoint(s.ID, "c")
			r.write(s.ID, "/root/f", "later\n")
			at.Store(&step)
			var err error
			switch strings.Split(step, ".")[0] {
			case "checkpoint":
				_, err = r.mgr.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "d"})
			case "rollback":
				_, err = r.mgr.Rollback(ctx, s.ID, "c")
			case "fork":
				_, err = r.mgr.Fork(ctx, s.ID, api.ForkRequest{From: "c", N: 1})
			}
			at.Store(nil)
			if !down.Swap(false) {
				t.Fatalf("step %s not reached", step)
			}
			if err == nil {
				t.Fatal("the operation succeeded while the store took no writes")
			}
			t.Logf("with the store down from %s: %v", step, err)
			check := func(when string) {
				t.Helper()
				var got api.Session
				r.eventually(when+": the record follows the VM", func() bool {
					got = r.get(s.ID)
					return got.State == api.StateRunning || got.State == api.StateParked
				})
				if (got.State == api.StateRunning) != (r.driver.Find(s.ID) != nil) {
					t.Fatalf("%s: the session is %s; its VM runs: %v", when, got.State, r.driver.Find(s.ID) != nil)
				}
				if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 1 {
					t.Fatalf("%s: sessions %+v (%v), want only the one (no fork half made)", when, ss, err)
				}
				if names := r.wantCheckpointsWhole(s.ID); !slices.Contains(names, "c") {
					t.Fatalf("%s: checkpoints %v lack c", when, names)
				}
				r.wantNoOrphans([]string{s.ID}, runningIf(got.State, s.ID)...)
				r.echo(s.ID)
				r.write(s.ID, "/root/g", when)
				r.park(s.ID)
				r.wantFile(s.ID, "/root/g", when)
				if _, err := r.mgr.Rollback(ctx, s.ID, "c"); err != nil {
					t.Fatalf("%s: rollback: %v", when, err)
				}
				r.wantFile(s.ID, "/root/f", "checkpointed\n")
			}
			check("once the store is back")
			r.restart()
			check("after a restart")
		})
	}
}

// runningIf is ids if state is running, else none.
func runningIf(state string, ids ...string) []string {
	if state == api.StateRunning {
		return ids
	}
	return nil
}

// TestFakeStoreOutageRefusesClones: a clone (from a warm pool, and
// restored then) while the state store takes no writes is refused, and
// leaves nothing: no session, no VM, no files (the pooled clone it took is
// gone with it). Once the store is back the pool fills again and a clone
// works.
func TestFakeStoreOutageRefusesClones(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, pool := range []int{0, 1} {
		t.Run(fmt.Sprintf("pool=%d", pool), func(t *testing.T) {
			var down atomic.Bool
			r := newFakeRigWith(t, func(c *session.Config) { c.Store = outageStore{Store: c.Store, down: &down} })
			if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}, Pool: pool}); err != nil {
				t.Fatal(err)
			}
			poolReady := func() bool {
				tp, err := r.mgr.GetTemplate(ctx, "web")
				return err == nil && tp.PoolReady == pool
			}
			r.eventually("the pool fills", poolReady)
			down.Store(true)
			_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "web"})
			down.Store(false)
			if !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("a clone while the store takes no writes: %v, want store.ErrUnavailable (503)", err)
			}
			if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 0 {
				t.Fatalf("sessions after a refused clone: %+v (%v)", ss, err)
			}
			if pool == 0 {
				r.wantNoOrphans(nil)
			}
			r.eventually("the pool fills again", poolReady)
			s := r.create(api.CreateSessionRequest{Template: "web"})
			if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
				t.Fatalf("a clone once the store is back: %v", err)
			}
		})
	}
}

// TestFakeStoreOutageWhenAVMDies: a session's VM dies while the state
// store can be neither read nor written (a database that cannot be
// reached). Once the store is back the session is recorded failed, with
// the reason, without a restart (it said running, for good, of a VM that
// was gone), and calls on it are 409; its neighbour runs on.
func TestFakeStoreOutageWhenAVMDies(t *testing.T) {
	t.Parallel()
	var down, reads atomic.Bool
	r := newFakeRigWith(t, func(c *session.Config) { c.Store = outageStore{Store: c.Store, down: &down, reads: &reads} })
	id := r.create(api.CreateSessionRequest{}).ID
	other := r.create(api.CreateSessionRequest{}).ID
	down.Store(true)
	reads.Store(true)
	r.vmOf(id).Kill()
	time.Sleep(time.Second) // the VM's end is seen, and the store asked, meanwhile
	down.Store(false)
	reads.Store(false)
	r.eventually("the session is recorded failed once the store is back", func() bool { return r.get(id).State == api.StateFailed })
	r.wantState(id, api.StateFailed, "exited unexpectedly")
	_, err := r.mgr.Exec(context.Background(), id, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "exec in the session whose VM died", err, api.CodeConflict)
	r.echo(other)
}

// TestFakeStoreOutageKeepsDeliveriesPending: while the state store cannot
// be read (a database restarting), and then while it refuses the wake's
// writes (a full disk), a pending webhook delivery is neither made nor
// failed: it stays pending, and is made, into the guest once, when the
// store works again. (A wake the store refused used to fail the delivery
// for good, the session left parked.)
func TestFakeStoreOutageKeepsDeliveriesPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var down, reads atomic.Bool
	r := newFakeRigWith(t, func(c *session.Config) { c.Store = outageStore{Store: c.Store, down: &down, reads: &reads} })
	t.Cleanup(func() { reads.Store(false); down.Store(false) }) // before the rig's: its removals need the store
	id := r.create(api.CreateSessionRequest{}).ID
	if _, err := r.mgr.ParkUntil(ctx, id, []string{"deploys:done"}, 0); err != nil {
		t.Fatal(err)
	}
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	reads.Store(true)
	if _, err := r.mgr.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	pending := func(when string) {
		t.Helper()
		time.Sleep(2500 * time.Millisecond) // the deliverer's rounds, once a second
		for state, want := range map[string]int{store.DeliveryPending: 1, store.DeliveryFailed: 0, store.DeliveryDelivered: 0} {
			if ds, err := r.store.ListDeliveries(ctx, state); err != nil || len(ds) != want {
				t.Fatalf("%s: %d deliveries %s (%v), want %d", when, len(ds), state, err, want)
			}
		}
	}
	pending("while the store cannot be read")
	reads.Store(false)
	down.Store(true)
	pending("while the store refuses the wake's writes")
	r.wantState(id, api.StateParked, "")
	down.Store(false)
	r.eventually("the event is delivered once the store works", func() bool {
		ds, err := r.store.ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})
	r.wantState(id, api.StateRunning, "")
	files, err := r.mgr.ListDir(ctx, id, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v (%v), want one", files, err)
	}
}
