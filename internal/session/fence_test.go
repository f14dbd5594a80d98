package session_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// cutStore is a state store that a manager cannot reach while down is
// set: every call the node's heartbeats, the sweeper and the fence make
// fails with store.ErrUnavailable, as over a partition or while the
// database is down.
type cutStore struct {
	store.Store
	down *atomic.Bool
}

func (c cutStore) fail(op string) error {
	if c.down.Load() {
		return fmt.Errorf("test store: %s: %w: the database cannot be reached", op, store.ErrUnavailable)
	}
	return nil
}

func (c cutStore) HeartbeatNode(ctx context.Context, id string, at time.Time, capacity store.NodeCapacity) error {
	if err := c.fail("heartbeat node"); err != nil {
		return err
	}
	return c.Store.HeartbeatNode(ctx, id, at, capacity)
}

func (c cutStore) ListNodes(ctx context.Context) ([]store.Node, error) {
	if err := c.fail("list nodes"); err != nil {
		return nil, err
	}
	return c.Store.ListNodes(ctx)
}

func (c cutStore) GetNode(ctx context.Context, id string) (store.Node, error) {
	if err := c.fail("get node"); err != nil {
		return store.Node{}, err
	}
	return c.Store.GetNode(ctx, id)
}

func (c cutStore) UpdateNode(ctx context.Context, n *store.Node) error {
	if err := c.fail("update node"); err != nil {
		return err
	}
	return c.Store.UpdateNode(ctx, n)
}

func (c cutStore) Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if err := c.fail("claim"); err != nil {
		return false, err
	}
	return c.Store.Claim(ctx, key, owner, ttl)
}

func (c cutStore) GetSession(ctx context.Context, id string) (store.Session, error) {
	if err := c.fail("get session"); err != nil {
		return store.Session{}, err
	}
	return c.Store.GetSession(ctx, id)
}

func (c cutStore) ListSessions(ctx context.Context) ([]store.Session, error) {
	if err := c.fail("list sessions"); err != nil {
		return nil, err
	}
	return c.Store.ListSessions(ctx)
}

func (c cutStore) UpdateSession(ctx context.Context, s *store.Session) error {
	if err := c.fail("update session"); err != nil {
		return err
	}
	return c.Store.UpdateSession(ctx, s)
}

func (c cutStore) SessionUsage(ctx context.Context) ([]store.SessionUsage, error) {
	if err := c.fail("session usage"); err != nil {
		return nil, err
	}
	return c.Store.SessionUsage(ctx)
}

// The tests below do not call t.Parallel, unlike the other fake tests:
// they time heartbeats of 20 ms against a fence of 0.5 to 1 s, as the
// fence does in production, and a node whose heartbeat goroutine is
// starved that long (the race detector and the package's other tests on
// 2 cores did it) rightly freezes its VMs, which such a test counts as a
// failure. Run alone, as before, nothing delays their heartbeats so.

// A store outage longer than the grace loses no node: the first sweeps
// once the store is back find every heartbeat stale, but the sweepers
// could not see the nodes meanwhile, and give them a grace from the
// store's return. A node that really stopped heartbeating is still
// marked dead, a grace after that.
func TestFakeStoreOutageLongerThanGraceLosesNoNode(t *testing.T) {
	// Not parallel: its heartbeats are timed (see above).
	const grace = 600 * time.Millisecond
	var down atomic.Bool
	r, a := nodeRig(t, func(c *session.Config) {
		c.Store = cutStore{Store: c.Store, down: &down}
		c.NodeHeartbeat, c.NodeGrace = 20*time.Millisecond, grace
	})
	ctx := context.Background()
	// A second server over the same store, which runs no node and sweeps.
	b, err := session.New(session.Config{Store: cutStore{Store: r.store, down: &down}, Driver: r.driver, Images: r.images,
		Dir: filepath.Join(r.dir, "b"), NoNode: true, NodeGrace: grace, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	// A remote node, heartbeated by hand.
	now := time.Now().UTC()
	c := store.Node{ID: "node-remote000000", Name: "remote", JoinedAt: now, HeartbeatAt: now, CredentialHash: "cd"}
	if err := r.store.CreateNode(ctx, &c); err != nil {
		t.Fatal(err)
	}
	s := r.create(api.CreateSessionRequest{})

	down.Store(true)
	// The sweepers' reads fail meanwhile (as their loops' do).
	if dead := b.SweepNodes(ctx); dead != nil {
		t.Fatalf("a sweep with the store down marked %v dead", dead)
	}
	time.Sleep(2 * grace)
	down.Store(false)
	back := time.Now()
	for _, m := range []*session.Manager{b, r.mgr} {
		if dead := m.SweepNodes(ctx); len(dead) != 0 {
			t.Fatalf("the first sweep after the outage marked %v dead", dead)
		}
	}
	for _, id := range []string{*a, c.ID} {
		if n, err := r.store.GetNode(ctx, id); err != nil || n.Dead {
			t.Fatalf("node %s after the outage: %+v, %v; want alive", id, n, err)
		}
	}
	r.wantState(s.ID, api.StateRunning, "")

	// The remote node never heartbeats again: it is taken for dead, a
	// grace after the store came back (and not before).
	r.eventually("the silent node marked dead", func() bool {
		n, err := r.store.GetNode(ctx, c.ID)
		return err == nil && n.Dead
	})
	if since := time.Since(back); since <= grace {
		t.Errorf("the silent node was marked dead %v after the store came back, within the grace %v", since, grace)
	}
	if n, err := r.store.GetNode(ctx, *a); err != nil || n.Dead {
		t.Fatalf("the heartbeating node: %+v, %v; want alive", n, err)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.echo(s.ID)
}

// A node cut off from the store (a partition: its heartbeats and store
// calls fail) freezes its VMs once it has gone FenceAfter without a
// heartbeat, and the calls that need their guests fail at once with 503;
// another server's sweeper takes it for dead and records its running
// sessions lost; one comes back from its last stored snapshot on node B
// while its old VM is frozen, so that it never runs on two nodes; once
// node A can reach the store again, its heartbeat stops the VMs of its
// lost sessions and thaws none.
func TestFakeNodeCutOffFreezesItsVMs(t *testing.T) {
	// Not parallel: its heartbeats are timed (see above).
	var cut atomic.Bool
	nr := newNodeLossRig(t, func(c *session.Config) {
		c.Store = cutStore{Store: c.Store, down: &cut}
		// FenceAfter well above the heartbeat: a slow write of a
		// loaded host's store freezes nothing before the cut.
		c.NodeHeartbeat, c.FenceAfter = 20*time.Millisecond, 500*time.Millisecond
	})
	r := nr.objectsRig
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "stored\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	r.write(s.ID, "/root/f", "since the last store\n") // wakes it
	other := r.create(api.CreateSessionRequest{})
	vmS, vmOther := r.vmOf(s.ID), r.vmOf(other.ID)
	a := r.mgr

	cut.Store(true)
	r.eventually("node A's VMs frozen", func() bool { return vmS.Frozen() && vmOther.Frozen() })
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := a.Exec(ectx, s.ID, api.ExecRequest{Argv: []string{"true"}})
	cancel()
	wantCode(t, "exec in a frozen session", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "frozen until it heartbeats again") {
		t.Errorf("exec in a frozen session: %v; want it to say why", err)
	}

	// Node B's server takes A for dead: its sessions are lost.
	nr.silence()
	nr.openB(false)
	b := nr.mgrB
	if dead := b.SweepNodes(ctx); len(dead) != 1 || dead[0] != nr.a {
		t.Fatalf("swept %v, want node A", dead)
	}
	for _, id := range []string{s.ID, other.ID} {
		if rec, err := nr.store.GetSession(ctx, id); err != nil || rec.State != api.StateLost {
			t.Fatalf("session %s: %+v, %v; want lost", id, rec.State, err)
		}
	}
	back, err := b.WakeFromLastSnapshot(ctx, s.ID)
	if err != nil {
		t.Fatalf("wake --from-last-snapshot on B: %v", err)
	}
	if back.State != api.StateRunning || back.Node != nr.b {
		t.Fatalf("back from the last snapshot: %+v; want running on B", back)
	}
	if !vmS.Frozen() {
		t.Fatal("A's VM of the session thawed while B runs it")
	}

	// The partition heals: A's heartbeat fences both lost sessions' VMs.
	cut.Store(false)
	for _, vm := range []*fake.VM{vmS, vmOther} {
		r.eventually("A's VM of a lost session stopped", func() bool {
			select {
			case <-vm.Done():
				return true
			default:
				return false
			}
		})
		if vm.Freezes() != 1 || !vm.Frozen() {
			t.Errorf("A's VM of a lost session: frozen %d times, frozen at its end %v; want frozen once, never thawed", vm.Freezes(), vm.Frozen())
		}
	}
	if r.driver.Twice(s.ID) {
		t.Fatal("the session's guest ran on A and B at once")
	}
	out, err := runCmd(b, s.ID, api.ExecRequest{Argv: []string{"cat", "/root/f"}}, nil)
	if err != nil || out.stdout != "stored\n" {
		t.Fatalf("the session on B: %+v, %v; want its last stored file", out, err)
	}
	if err := b.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
}

// A store outage shorter than FenceAfter freezes nothing; a longer one,
// still within the grace, freezes the node's VMs and thaws them at its
// next heartbeat: the sessions run on, recorded running, their guests as
// they were.
func TestFakeNodeStoreOutageFreezesThenThaws(t *testing.T) {
	// Not parallel: its heartbeats are timed (see above).
	var cut atomic.Bool
	const fenceAfter = time.Second
	nr := newNodeLossRig(t, func(c *session.Config) {
		c.Store = cutStore{Store: c.Store, down: &cut}
		c.NodeHeartbeat, c.FenceAfter = 20*time.Millisecond, fenceAfter
	})
	r := nr.objectsRig
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/root/f", "kept\n")
	vm := r.vmOf(s.ID)

	cut.Store(true)
	time.Sleep(fenceAfter / 10)
	cut.Store(false)
	// Heartbeats go through again; the fence loop has had several rounds.
	time.Sleep(2 * fenceAfter)
	if n := vm.Freezes(); n != 0 {
		t.Fatalf("a store outage shorter than FenceAfter froze the VM %d times", n)
	}

	cut.Store(true)
	r.eventually("the VM frozen", vm.Frozen)
	cut.Store(false)
	r.eventually("the VM thawed", func() bool { return !vm.Frozen() })
	if n := vm.Freezes(); n != 1 {
		t.Errorf("frozen %d times, want once", n)
	}
	r.wantState(s.ID, api.StateRunning, "")
	r.wantFile(s.ID, "/root/f", "kept\n")
	r.echo(s.ID)
	if n, err := nr.store.GetNode(ctx, nr.a); err != nil || n.Dead {
		t.Fatalf("node A: %+v, %v; want alive", n, err)
	}
}
