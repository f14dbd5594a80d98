package session_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// Two managers on one store, as two servers sharing a database are: the
// work one of them must do alone (a delivery, a timeout, a template
// build) is done once, and a write from a stale read is refused. They
// share the fake driver and the sessions dir too, as servers on one host
// would (until issue 19 gives each node its own sessions). Each case runs
// on a shared SQLite file and on PostgreSQL.
func TestFakeTwoServers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		run  func(t *testing.T, open func(t *testing.T) store.Store)
	}{
		{"DeliveredOnce", twoServersDeliveredOnce},
		{"TimeoutFiresOnce", twoServersTimeoutFiresOnce},
		{"BuildRunsOnce", twoServersBuildRunsOnce},
		{"StaleWriteRefused", twoServersStaleWriteRefused},
		{"PoolKeptOnce", twoServersPoolKeptOnce},
		{"PoolSizedThroughOther", twoServersPoolSizedThroughOther},
		{"IdleParkWaitsForClaim", twoServersIdleParkWaitsForClaim},
		{"TimeoutWaitsForClaim", twoServersTimeoutWaitsForClaim},
		{"LostClaimStopsWork", twoServersLostClaimStopsWork},
	}
	// Every case has its own rig, store file or database: they run side
	// by side.
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				db := filepath.Join(t.TempDir(), "state.db")
				c.run(t, func(t *testing.T) store.Store {
					st, err := sqlite.Open(t.Context(), db)
					if err != nil {
						t.Fatal(err)
					}
					return st
				})
			})
		}
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		srv := pgtest.Fresh(t)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				name, err := srv.CreateDatabase(t.Context(), "two_servers")
				if err != nil {
					t.Fatalf("%v; server log: %s", err, srv.LogTail())
				}
				url := srv.URL(name)
				c.run(t, func(t *testing.T) store.Store {
					st, err := postgres.Open(t.Context(), url)
					if err != nil {
						t.Fatal(err)
					}
					return st
				})
			})
		}
	})
}

// twoRig is two managers (servers) over one store's data, each with its
// own Store, and one fake driver and sessions dir.
type twoRig struct {
	t      *testing.T
	open   func(t *testing.T) store.Store
	driver *fake.Driver
	dir    string
	images fakeImages

	mu     sync.Mutex
	mgrs   []*session.Manager // guarded by mu
	begun  map[session.EventKind]int
	stores []store.Store
}

func newTwoRig(t *testing.T, open func(t *testing.T) store.Store) *twoRig {
	r := &twoRig{t: t, open: open, driver: fake.New(), dir: t.TempDir(), images: newFakeImages(t),
		begun: map[session.EventKind]int{}}
	t.Cleanup(func() {
		if ids := r.driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
	})
	t.Cleanup(r.close)
	return r
}

// server starts one more manager, named id, with gate as its CrashPoint
// (nil: none) and log (nil: discarded), and recovers it.
func (r *twoRig) server(id string, g *gate, log io.Writer) *session.Manager {
	r.t.Helper()
	return r.serverIn(r.dir, id, g, log)
}

// serverIn is server with its sessions in dir of its own (templates
// still shared): its restart sweep leaves the others' VMs alone.
func (r *twoRig) serverIn(dir, id string, g *gate, log io.Writer) *session.Manager {
	r.t.Helper()
	st := r.open(r.t)
	if log == nil {
		log = io.Discard
	}
	cfg := session.Config{Store: st, Driver: r.driver, Images: r.images, Dir: dir,
		TemplateDir: filepath.Join(r.dir, "templates"), DefaultMemoryMiB: 64, ServerID: id,
		LeaseTTL: 3 * time.Second, // a stopped server's pool is taken over within a second
		Log:      slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnEvent: func(_ context.Context, ev session.Event) error {
			if ev.Phase == session.Begin {
				r.mu.Lock()
				r.begun[ev.Kind]++
				r.mu.Unlock()
			}
			return nil
		}}
	if g != nil {
		cfg.CrashPoint = g.step
	}
	m, err := session.New(cfg)
	if err != nil {
		st.Close()
		r.t.Fatal(err)
	}
	if err := m.Recover(context.Background()); err != nil {
		st.Close()
		r.t.Fatalf("recover: %v", err)
	}
	r.mu.Lock()
	r.mgrs = append(r.mgrs, m)
	r.stores = append(r.stores, st)
	r.mu.Unlock()
	return m
}

// begins counts the actions of kind begun on every manager.
func (r *twoRig) begins(kind session.EventKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.begun[kind]
}

func (r *twoRig) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.mu.Lock()
	mgrs, stores := r.mgrs, r.stores
	r.mu.Unlock()
	if len(mgrs) == 0 {
		return
	}
	m := mgrs[0]
	if ss, err := m.List(ctx); err == nil {
		for _, s := range ss {
			if err := m.Delete(ctx, s.ID); err != nil {
				r.t.Errorf("cleanup: delete %s: %v", s.ID, err)
			}
		}
	}
	if ts, err := m.ListTemplates(ctx); err == nil {
		for _, tp := range ts {
			if err := m.DeleteTemplate(ctx, tp.Name); err != nil {
				r.t.Errorf("cleanup: delete template %s: %v", tp.Name, err)
			}
		}
	}
	for _, m := range mgrs {
		m.StopAll(ctx)
	}
	for _, st := range stores {
		st.Close()
	}
}

func (r *twoRig) eventually(what string, cond func() bool) {
	r.t.Helper()
	if !waitFor(30*time.Second, cond) {
		r.t.Fatalf("%s: not after 30s", what)
	}
}

// gate is a CrashPoint that holds the goroutine reaching its armed step
// until the test opens it.
type gate struct {
	mu      sync.Mutex
	at      string        // guarded by mu
	reached chan struct{} // guarded by mu
	opened  chan struct{} // guarded by mu
}

// arm holds the next goroutine that reaches step; open lets it go on.
func (g *gate) arm(step string) (reached <-chan struct{}, open func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at, g.reached, g.opened = step, make(chan struct{}), make(chan struct{})
	opened := g.opened
	var once sync.Once
	return g.reached, func() { once.Do(func() { close(opened) }) }
}

func (g *gate) step(name string) {
	g.mu.Lock()
	hit := name == g.at
	reached, opened := g.reached, g.opened
	if hit {
		g.at = ""
	}
	g.mu.Unlock()
	if hit {
		close(reached)
		<-opened
	}
}

// syncBuffer is a log that tests read while managers write it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) has(parts ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, line := range strings.Split(b.buf.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func waitReached(t *testing.T, step string, reached <-chan struct{}) {
	t.Helper()
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatalf("step %s not reached", step)
	}
}

// A pending delivery is made by the server that claimed it: the other
// finds it claimed and leaves the session parked, and the event wakes it
// once and is delivered once.
func twoServersDeliveredOnce(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	ga := &gate{}
	logB := &syncBuffer{}
	a := r.server("srv-a", ga, nil)
	b := r.server("srv-b", nil, logB)
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ParkUntil(ctx, s.ID, []string{"deploys:done"}, 0); err != nil {
		t.Fatal(err)
	}
	reached, openA := ga.arm("deliver.claimed")
	defer openA()
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := a.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitReached(t, "deliver.claimed", reached)
	// B's deliverer (once a second) finds the delivery pending, and
	// claimed by A.
	r.eventually("server B finds the delivery claimed", func() bool {
		return logB.has("work held by another server", "key=deliver/"+s.ID)
	})
	if got, err := b.Get(ctx, s.ID); err != nil || got.State != api.StateParked {
		t.Fatalf("while A holds the delivery, the session is %s (%v), want parked", got.State, err)
	}
	openA()
	r.eventually("the event is delivered", func() bool {
		ds, err := r.stores[0].ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})
	if got, _ := a.Get(ctx, s.ID); got.State != api.StateRunning {
		t.Fatalf("after the delivery the session is %s, want running", got.State)
	}
	files, err := a.ListDir(ctx, s.ID, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v (%v), want one", files, err)
	}
	if ds, _ := r.stores[0].ListDeliveries(ctx, store.DeliveryFailed); len(ds) != 0 {
		t.Fatalf("failed deliveries: %+v", ds)
	}
	if n := r.begins(session.EventWake); n != 1 {
		t.Fatalf("%d wakes begun across the servers, want 1", n)
	}
}

// A park --until timeout that both servers know of (the second started
// after the park, and loaded the subscription) fires once: the session
// wakes once, with one timeout event in its guest.
func twoServersTimeoutFiresOnce(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	a := r.server("srv-a", nil, nil)
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ParkUntil(ctx, s.ID, nil, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	r.server("srv-b", nil, nil) // loads the subscription and its deadline
	r.eventually("the timeout is delivered", func() bool {
		ds, err := r.stores[0].ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})
	var m *session.Manager
	for _, mgr := range r.mgrs {
		if _, err := mgr.Stat(ctx, s.ID, "/run/cove/events"); err == nil {
			m = mgr
		}
	}
	if m == nil {
		t.Fatal("no server holds the woken session")
	}
	files, err := m.ListDir(ctx, s.ID, "/run/cove/events")
	if err != nil || len(files) != 1 {
		t.Fatalf("events in the guest: %+v (%v), want one", files, err)
	}
	if ds, _ := r.stores[0].ListDeliveries(ctx, ""); len(ds) != 1 {
		t.Fatalf("deliveries: %+v, want one", ds)
	}
	if n := r.begins(session.EventWake); n != 1 {
		t.Fatalf("%d wakes begun across the servers, want 1", n)
	}
}

// A rebuild asked of both servers at once runs on the one that claimed
// it; the other skips it, building nothing; and a third server starting
// meanwhile leaves the build under way alone (its restart clean-up fails
// only builds that no server holds).
func twoServersBuildRunsOnce(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	ga := &gate{}
	a := r.server("srv-a", ga, nil)
	b := r.server("srv-b", nil, nil)
	ctx := context.Background()
	if _, err := a.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
		t.Fatal(err)
	}
	reached, openA := ga.arm("build.recorded")
	defer openA()
	if _, err := a.RebuildTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	waitReached(t, "build.recorded", reached)
	if _, err := b.RebuildTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r.eventually("server B's rebuild ends", func() bool {
		tp, err := b.GetTemplate(ctx, "web")
		return err == nil && !tp.Rebuilding
	})
	building := func(who string) {
		t.Helper()
		vs, err := r.stores[1].ListTemplateVersions(ctx, "web")
		var got []string
		for _, v := range vs {
			got = append(got, fmt.Sprintf("v%d %s", v.Version, v.State))
		}
		if err != nil || len(vs) != 2 || vs[1].State != store.VersionBuilding {
			t.Fatalf("while A builds, %s: versions %q (%v); want the first and A's, building", who, got, err)
		}
	}
	building("after B's rebuild")
	r.server("srv-c", nil, nil) // a server starting, which settles builds cut short
	building("after C started")
	openA()
	r.eventually("server A's rebuild finishes", func() bool {
		tp, err := a.GetTemplate(ctx, "web")
		return err == nil && tp.Version == 2 && !tp.Rebuilding
	})
	if vs, err := r.stores[0].ListTemplateVersions(ctx, "web"); err != nil || len(vs) != 2 {
		t.Fatalf("versions: %+v (%v); want 2", vs, err)
	}
	if n := r.begins(session.EventRebuild); n != 1 {
		t.Fatalf("%d rebuilds begun across the servers, want 1", n)
	}
}

// A write from a read that another server's write has overtaken is
// refused: a park whose record was changed meanwhile fails with a
// conflict that names the session, and leaves the other write in place.
func twoServersStaleWriteRefused(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	ga := &gate{}
	a := r.server("srv-a", ga, nil)
	other := r.open(t) // another server's store
	defer other.Close()
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	reached, openA := ga.arm("park.recorded")
	defer openA()
	parked := make(chan error, 1)
	go func() {
		_, err := a.Park(ctx, s.ID)
		parked <- err
	}()
	waitReached(t, "park.recorded", reached)
	rec, err := other.GetSession(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.Error = "written by another server"
	if err := other.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	openA()
	select {
	case err = <-parked:
	case <-time.After(30 * time.Second):
		t.Fatal("park never returned")
	}
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), s.ID) {
		t.Fatalf("park over another server's write = %v, want ErrConflict naming %s", err, s.ID)
	}
	got, err := other.GetSession(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Error != "written by another server" || got.Gen != rec.Gen {
		t.Fatalf("record after the refused write: error %q, gen %d; want the other server's (gen %d)", got.Error, got.Gen, rec.Gen)
	}
}

// poolKeptByA starts server A with template web and its pool of one,
// filled, then server B, which finds the pool kept by A; ready counts a
// server's ready clones of web.
func poolKeptByA(t *testing.T, open func(t *testing.T) store.Store) (r *twoRig, a, b *session.Manager, ready func(*session.Manager) int) {
	r = newTwoRig(t, open)
	a = r.server("srv-a", nil, nil)
	ctx := context.Background()
	if _, err := a.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Pool: 1}); err != nil {
		t.Fatal(err)
	}
	ready = func(m *session.Manager) int {
		tp, err := m.GetTemplate(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		return tp.PoolReady
	}
	r.eventually("A's pool fills", func() bool { return ready(a) == 1 })
	logB := &syncBuffer{}
	b = r.serverIn(t.TempDir(), "srv-b", nil, logB) // starts the template's pool, as a restart does
	r.eventually("server B finds the pool kept by A", func() bool {
		return logB.has("pool kept by another server", "template=web")
	})
	return r, a, b, ready
}

// A template's warm pool is kept by the server that claimed it: another
// server that knows the template keeps no clones of it, and takes the
// pool over once the first stops.
func twoServersPoolKeptOnce(t *testing.T, open func(t *testing.T) store.Store) {
	r, a, b, ready := poolKeptByA(t, open)
	ctx := context.Background()
	if n, vms := ready(b), r.driver.Running(); n != 0 || len(vms) != 1 {
		t.Fatalf("B keeps %d clones, VMs running %v; want none of B's, A's one", n, vms)
	}
	a.StopAll(ctx) // A stops: its pool drains, and lets go of its claim
	r.eventually("B takes the pool over", func() bool { return ready(b) == 1 })
	if vms := r.driver.Running(); len(vms) != 1 {
		t.Fatalf("VMs running %v; want B's one clone", vms)
	}
}

// A pool's size set through a server that does not fill the pool: the one
// that does reads it from the record and grows, then empties, its pool.
func twoServersPoolSizedThroughOther(t *testing.T, open func(t *testing.T) store.Store) {
	r, a, b, ready := poolKeptByA(t, open)
	ctx := context.Background()
	if tp, err := b.SetTemplatePool(ctx, "web", 2); err != nil || tp.Pool != 2 {
		t.Fatalf("B sets the pool to 2: %+v, %v", tp, err)
	}
	r.eventually("A's pool grows to 2", func() bool { return ready(a) == 2 })
	if n, vms := ready(b), r.driver.Running(); n != 0 || len(vms) != 2 {
		t.Fatalf("B keeps %d clones, VMs running %v; want A's two only", n, vms)
	}
	if _, err := b.SetTemplatePool(ctx, "web", 0); err != nil {
		t.Fatal(err)
	}
	r.eventually("A's pool empties", func() bool { return ready(a) == 0 && len(r.driver.Running()) == 0 })
}

// An idle park is claimed: while another server holds the session's park
// claim, this one leaves the idle session running; once the claim is
// released, it parks it, once.
func twoServersIdleParkWaitsForClaim(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	logA := &syncBuffer{}
	a := r.server("srv-a", nil, logA)
	other := r.open(t) // another server's store
	defer other.Close()
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{IdleTimeout: "5s"})
	if err != nil {
		t.Fatal(err)
	}
	key := "park/" + s.ID
	if ok, err := other.Claim(ctx, key, "srv-x", time.Hour); err != nil || !ok {
		t.Fatalf("claim %s for another server: %v, %v", key, ok, err)
	}
	r.eventually("server A finds the idle park claimed", func() bool {
		return logA.has("work held by another server", "key="+key)
	})
	if got, err := a.Get(ctx, s.ID); err != nil || got.State != api.StateRunning {
		t.Fatalf("while another server holds its park, the session is %s (%v), want running", got.State, err)
	}
	if err := other.Release(ctx, key, "srv-x"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the idle session is parked", func() bool {
		got, err := a.Get(ctx, s.ID)
		return err == nil && got.State == api.StateParked
	})
	if n := r.begins(session.EventPark); n != 1 {
		t.Fatalf("%d parks begun, want 1", n)
	}
}

// A subscription's timeout is claimed: while another server holds it,
// this one records no timeout event; once it is released, the timeout
// fires and wakes the session.
func twoServersTimeoutWaitsForClaim(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	logA := &syncBuffer{}
	a := r.server("srv-a", nil, logA)
	other := r.open(t) // another server's store
	defer other.Close()
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	key := "timeout/" + s.ID
	if ok, err := other.Claim(ctx, key, "srv-x", time.Hour); err != nil || !ok {
		t.Fatalf("claim %s for another server: %v, %v", key, ok, err)
	}
	if _, err := a.ParkUntil(ctx, s.ID, nil, time.Second); err != nil {
		t.Fatal(err)
	}
	r.eventually("server A finds the timeout claimed", func() bool {
		return logA.has("work held by another server", "key="+key)
	})
	if ds, err := other.ListDeliveries(ctx, ""); err != nil || len(ds) != 0 {
		t.Fatalf("while another server holds the timeout, deliveries: %+v (%v); want none", ds, err)
	}
	if err := other.Release(ctx, key, "srv-x"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the timeout wakes the session", func() bool {
		got, err := a.Get(ctx, s.ID)
		return err == nil && got.State == api.StateRunning
	})
}

// A server that loses its claim while it works (its lease taken over:
// here released in its name and claimed by another, as an expiry would
// let happen) stops the work: the delivery it was about to make stays
// pending, the session parked, until the claim is free again.
func twoServersLostClaimStopsWork(t *testing.T, open func(t *testing.T) store.Store) {
	r := newTwoRig(t, open)
	ga := &gate{}
	logA := &syncBuffer{}
	a := r.server("srv-a", ga, logA)
	other := r.open(t) // another server's store
	defer other.Close()
	ctx := context.Background()
	s, err := a.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ParkUntil(ctx, s.ID, []string{"deploys:done"}, 0); err != nil {
		t.Fatal(err)
	}
	reached, openA := ga.arm("deliver.claimed")
	defer openA()
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := a.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitReached(t, "deliver.claimed", reached)
	key := "deliver/" + s.ID
	if err := other.Release(ctx, key, "srv-a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.Claim(ctx, key, "srv-x", time.Hour); err != nil || !ok {
		t.Fatalf("claim %s for another server: %v, %v", key, ok, err)
	}
	r.eventually("server A notices its claim is lost", func() bool {
		return logA.has("claimed work taken over by another server", "key="+key)
	})
	openA()
	// A's delivery round ends without delivering; its next rounds find
	// the claim held.
	r.eventually("server A finds the delivery claimed", func() bool {
		return logA.has("work held by another server", "key="+key)
	})
	if got, err := a.Get(ctx, s.ID); err != nil || got.State != api.StateParked {
		t.Fatalf("after A lost its claim, the session is %s (%v), want parked", got.State, err)
	}
	if ds, err := other.ListDeliveries(ctx, store.DeliveryPending); err != nil || len(ds) != 1 {
		t.Fatalf("after A lost its claim, pending deliveries: %+v (%v); want the one", ds, err)
	}
	if err := other.Release(ctx, key, "srv-x"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the event is delivered", func() bool {
		ds, err := other.ListDeliveries(ctx, store.DeliveryDelivered)
		return err == nil && len(ds) == 1
	})
	if n := r.begins(session.EventWake); n != 1 {
		t.Fatalf("%d wakes begun, want 1", n)
	}
}

// A server's Changes tells of the session records another server sharing
// its PostgreSQL store writes (the dashboard's live list, GET
// /v1/sessions/watch, follows it): a create, a park, a removal made
// through B each signal A's subscriber. (SQLite is one server's store:
// it has no such feed.)
func TestFakeChangesAcrossServers(t *testing.T) {
	t.Parallel()
	srv := pgtest.Fresh(t)
	name, err := srv.CreateDatabase(t.Context(), "changes")
	if err != nil {
		t.Fatalf("%v; server log: %s", err, srv.LogTail())
	}
	r := newTwoRig(t, func(t *testing.T) store.Store {
		st, err := postgres.Open(t.Context(), srv.URL(name))
		if err != nil {
			t.Fatal(err)
		}
		return st
	})
	a := r.server("srv-a", nil, nil)
	b := r.server("srv-b", nil, nil)
	ch, stop := a.Changes()
	defer stop()
	ctx := context.Background()
	seen := func(what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(time.Minute): // only a feed that never tells
			t.Fatalf("%s through B: A's Changes did not tell", what)
		}
		for len(ch) > 0 { // one signal may stand for several
			<-ch
		}
	}
	// A's feed listens once connected: creates through B until one is
	// told (none by A itself, whose own writes A tells anyway).
	var ids []string
	for told := false; !told; {
		if len(ids) == 20 {
			t.Fatal("20 creates through B, a second apart: A's Changes told of none")
		}
		s, err := b.Create(ctx, testOwner, api.CreateSessionRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
		select {
		case <-ch:
			told = true
		case <-time.After(time.Second):
		}
	}
	time.Sleep(300 * time.Millisecond) // the last create's other writes
	for len(ch) > 0 {
		<-ch
	}
	if _, err := b.Park(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	seen("a park")
	for _, id := range ids {
		if err := b.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	seen("a removal")
}
