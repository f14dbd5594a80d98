package session_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// The embedded node over the fake driver: what a `cove server` with its
// node does with sessions, cordon, drain, restarts and dead nodes.

var fakeCapacity = store.NodeCapacity{VCPUs: 4, MemoryMiB: 4096, DiskBytes: 1 << 40, Accel: "tcg"}

// nodeRig is a fake rig whose managers run the embedded node "host-a",
// registered at each open as `cove server` does; nodeID is its id.
func nodeRig(t *testing.T, more func(*session.Config)) (*fakeRig, *string) {
	t.Helper()
	id := new(string)
	r := newFakeRigWith(t, func(c *session.Config) {
		n, err := session.RegisterEmbeddedNode(context.Background(), c.Store, "host-a", fakeCapacity)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		*id = n.ID
		c.Node = n.ID
		c.NodeProbe = func(context.Context) (store.NodeCapacity, error) { return fakeCapacity, nil }
		if more != nil {
			more(c)
		}
	})
	return r, id
}

// A session records the node it runs on, and the node counts it; a
// restarted server keeps its node's id.
func TestFakeNodeSessionsRecordTheirNode(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	first := *id
	if !strings.HasPrefix(first, "node-") || len(first) != len("node-")+12 {
		t.Fatalf("node id %q, want node- and 12 characters", first)
	}
	s := r.create(api.CreateSessionRequest{})
	if s.Node != first {
		t.Errorf("created session's node = %q, want %q", s.Node, first)
	}
	nodes, err := r.mgr.Nodes(context.Background())
	if err != nil || len(nodes) != 1 {
		t.Fatalf("Nodes = %v, %v; want the embedded node", nodes, err)
	}
	n := nodes[0]
	if n.ID != first || n.Name != "host-a" || n.State != api.NodeReady || !n.Embedded ||
		n.Sessions != 1 || n.Running != 1 || n.Capacity.MemoryMiB != 4096 {
		t.Errorf("node = %+v, want host-a ready, embedded, 1 session running, 4096 MiB", n)
	}
	r.restart()
	if *id != first {
		t.Errorf("node id after a restart = %q, want %q", *id, first)
	}
	if got := r.get(s.ID); got.Node != first || got.State != api.StateRunning {
		t.Errorf("after a restart the session is %s on %q, want running on %q", got.State, got.Node, first)
	}
}

// A cordoned node takes no new session, and says so; uncordoned, it does.
func TestFakeNodeCordon(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	n, err := r.mgr.CordonNode(ctx, "host-a")
	if err != nil || n.State != api.NodeCordoned {
		t.Fatalf("cordon = %+v, %v; want cordoned", n, err)
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	wantCode(t, "create on a cordoned node", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "no node fits: host-a: cordoned") {
		t.Errorf("refusal %q does not say why", err)
	}
	if n, err = r.mgr.UncordonNode(ctx, *id); err != nil || n.State != api.NodeReady {
		t.Fatalf("uncordon = %+v, %v; want ready", n, err)
	}
	r.create(api.CreateSessionRequest{})
}

// The node selector must match the node's labels; a malformed one is
// refused before anything happens.
func TestFakeNodeSelector(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{NodeSelector: map[string]string{"gpu": "yes"}})
	wantCode(t, "create with an unmatched selector", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "labels do not match gpu=yes") {
		t.Errorf("refusal %q does not say why", err)
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{NodeSelector: map[string]string{"": "x"}})
	wantCode(t, "create with an empty label key", err, api.CodeInvalid)

	n, err := r.store.GetNode(ctx, *id)
	if err != nil {
		t.Fatal(err)
	}
	n.Labels = map[string]string{"gpu": "yes"}
	if err := r.store.UpdateNode(ctx, &n); err != nil {
		t.Fatal(err)
	}
	r.create(api.CreateSessionRequest{NodeSelector: map[string]string{"gpu": "yes"}})
	if ss, _ := r.mgr.List(ctx); len(ss) != 1 {
		t.Errorf("%d sessions, want the one that matched", len(ss))
	}
}

// A node full of sessions refuses the next with what is left.
func TestFakeNodeFull(t *testing.T) {
	t.Parallel()
	r, _ := nodeRig(t, func(c *session.Config) {
		c.Admission = session.Admission{MemoryOvercommit: 1, CPUOvercommit: 1}
	})
	_, err := r.mgr.Create(context.Background(), testOwner, api.CreateSessionRequest{MemoryMiB: 8192})
	wantCode(t, "create larger than the node", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "host-a: 4096 MiB free < 8192 MiB asked") {
		t.Errorf("refusal %q does not say why", err)
	}
}

// Drain sets the node draining and parks its running sessions: they
// keep their state, and the node takes no new one until uncordoned.
func TestFakeNodeDrain(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	a := r.create(api.CreateSessionRequest{})
	b := r.create(api.CreateSessionRequest{})
	r.write(a.ID, "/tmp/kept", "before the drain")
	r.park(b.ID) // parked already: left as it is
	res, err := r.mgr.DrainNode(ctx, *id)
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	if res.Parked != 1 || len(res.Errors) != 0 || res.Node.State != api.NodeDraining || res.Node.Running != 0 {
		t.Fatalf("drain = %+v, want 1 parked, node draining with none running", res)
	}
	r.wantState(a.ID, api.StateParked, "")
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	wantCode(t, "create on a draining node", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "host-a: draining") {
		t.Errorf("refusal %q does not say why", err)
	}
	if _, err := r.mgr.UncordonNode(ctx, "host-a"); err != nil {
		t.Fatal(err)
	}
	r.wantFile(a.ID, "/tmp/kept", "before the drain") // wakes it, memory intact
}

// Removing a node that holds sessions is refused unless it is dead; an
// unknown node is 404.
func TestFakeNodeRemove(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	r.create(api.CreateSessionRequest{})
	wantCode(t, "remove a node holding sessions", r.mgr.RemoveNode(ctx, *id), api.CodeConflict)
	wantCode(t, "remove an unknown node", r.mgr.RemoveNode(ctx, "node-nosuchnode00"), api.CodeNotFound)
	_, err := r.mgr.Node(ctx, "nope")
	wantCode(t, "inspect an unknown node", err, api.CodeNotFound)

	dead := store.Node{ID: "node-deaddeaddead", Name: "gone", Dead: true, CredentialHash: "ab"}
	if err := r.store.CreateNode(ctx, &dead); err != nil {
		t.Fatal(err)
	}
	rec := store.Session{ID: "s-onthedeadnode", State: api.StateParked, Image: "tiny", Node: dead.ID, CreatedAt: time.Now().UTC()}
	if err := r.store.CreateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.RemoveNode(ctx, "gone"); err != nil {
		t.Fatalf("remove a dead node holding a session: %v", err)
	}
	if err := r.store.DeleteSession(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
}

// Recover adopts the sessions recorded before nodes into the embedded
// node, and leaves another node's sessions alone.
func TestFakeNodeRecoverAdopts(t *testing.T) {
	t.Parallel()
	var node string
	r := newFakeRigWith(t, func(c *session.Config) { c.Node = node })
	legacy := r.create(api.CreateSessionRequest{})
	if legacy.Node != "" {
		t.Fatalf("a session made without a node registry records node %q", legacy.Node)
	}
	ctx := context.Background()
	other := store.Session{ID: "s-elsewhere0000", State: api.StateRunning, Image: "tiny", Node: "node-someotherone",
		Handle: []byte(`{"v":1}`), CreatedAt: time.Now().UTC()}
	if err := r.store.CreateSession(ctx, &other); err != nil {
		t.Fatal(err)
	}
	n, err := session.RegisterEmbeddedNode(ctx, r.store, "host-a", fakeCapacity)
	if err != nil {
		t.Fatal(err)
	}
	node = n.ID
	r.restart()
	if got := r.get(legacy.ID); got.Node != node || got.State != api.StateRunning {
		t.Errorf("legacy session after Recover: %s on %q, want running on %q", got.State, got.Node, node)
	}
	r.echo(legacy.ID)
	got, err := r.store.GetSession(ctx, other.ID)
	if err != nil || got.State != api.StateRunning || got.Gen != 1 {
		t.Errorf("another node's session after Recover: %+v, %v; want it untouched", got, err)
	}
	if err := r.store.DeleteSession(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
}

// A server without a node runs no VMs: a create says no node fits, and
// why.
func TestFakeNoNode(t *testing.T) {
	t.Parallel()
	r := newFakeRigWith(t, func(c *session.Config) { c.NoNode = true })
	_, err := r.mgr.Create(context.Background(), testOwner, api.CreateSessionRequest{})
	wantCode(t, "create without a node", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "no node fits: no node is registered") {
		t.Errorf("refusal %q does not say why", err)
	}
	if _, err := session.RegisterEmbeddedNode(context.Background(), r.store, "other-host", fakeCapacity); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Create(context.Background(), testOwner, api.CreateSessionRequest{})
	if !strings.Contains(err.Error(), "no node fits: other-host: calls are not routed to other servers") {
		t.Errorf("refusal %q does not say why", err)
	}
}

// The sweeper marks dead a node whose heartbeat is older than the grace,
// and leaves one that heartbeats; a heartbeat brings a dead node back.
func TestFakeNodeSweep(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, func(c *session.Config) { c.NodeGrace = time.Hour })
	ctx := context.Background()
	old := time.Now().UTC().Add(-2 * time.Hour)
	r.mgr.StoreSeenSince(old) // the server has seen the store all along
	silent := store.Node{ID: "node-silent000000", Name: "silent", JoinedAt: old, HeartbeatAt: old, CredentialHash: "cd"}
	if err := r.store.CreateNode(ctx, &silent); err != nil {
		t.Fatal(err)
	}
	dead := r.mgr.SweepNodes(ctx)
	if len(dead) != 1 || dead[0] != silent.ID {
		t.Fatalf("swept %q, want only %q", dead, silent.ID)
	}
	n, err := r.mgr.Node(ctx, "silent")
	if err != nil || n.State != api.NodeDead {
		t.Fatalf("silent node = %+v, %v; want dead", n, err)
	}
	if n, _ := r.mgr.Node(ctx, *id); n.State != api.NodeReady {
		t.Errorf("embedded node is %s, want ready", n.State)
	}
	if again := r.mgr.SweepNodes(ctx); len(again) != 0 {
		t.Errorf("a second sweep marked %q again", again)
	}
	if err := r.store.HeartbeatNode(ctx, silent.ID, time.Now().UTC(), fakeCapacity); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.mgr.Node(ctx, "silent"); n.State != api.NodeReady {
		t.Errorf("heartbeated node is %s, want ready", n.State)
	}
}

// A node that says it freezes its VMs only after longer without a
// heartbeat than half this server's grace (it was given a longer
// --node-grace) is marked dead only after twice its span, so that its VMs
// are frozen before its sessions run elsewhere; a node that says nothing
// of it is judged by the grace alone.
func TestFakeNodeSweepWaitsForItsFence(t *testing.T) {
	r, _ := nodeRig(t, func(c *session.Config) { c.NodeGrace = time.Minute })
	ctx := context.Background()
	now := time.Now().UTC()
	r.mgr.StoreSeenSince(now.Add(-24 * time.Hour)) // the server has seen the store all along
	slow := store.Node{ID: "node-slowfence0000", Name: "slow", JoinedAt: now.Add(-time.Hour), HeartbeatAt: now.Add(-15 * time.Minute),
		CredentialHash: "ab", Capacity: store.NodeCapacity{VCPUs: 1, FenceAfterMS: (10 * time.Minute).Milliseconds()}}
	plain := store.Node{ID: "node-nofence00000", Name: "plain", JoinedAt: now.Add(-time.Hour), HeartbeatAt: now.Add(-2 * time.Minute),
		CredentialHash: "cd", Capacity: store.NodeCapacity{VCPUs: 1}}
	for _, n := range []*store.Node{&slow, &plain} {
		if err := r.store.CreateNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	// 15 minutes silent: past this server's grace (1 min), within twice
	// slow's fence (20 min).
	if dead := r.mgr.SweepNodes(ctx); len(dead) != 1 || dead[0] != plain.ID {
		t.Fatalf("swept %q, want only %q (slow freezes after 10 min: not dead before 20)", dead, plain.ID)
	}
	if n, err := r.mgr.Node(ctx, "slow"); err != nil || n.State != api.NodeReady || n.Capacity.FenceAfterMS != slow.Capacity.FenceAfterMS {
		t.Fatalf("slow node = %+v, %v; want ready, its fence shown", n, err)
	}
	if err := r.store.HeartbeatNode(ctx, slow.ID, now.Add(-21*time.Minute), slow.Capacity); err != nil {
		t.Fatal(err)
	}
	if dead := r.mgr.SweepNodes(ctx); len(dead) != 1 || dead[0] != slow.ID {
		t.Fatalf("swept %q, want %q (21 min silent, fence 10 min)", dead, slow.ID)
	}
}

// The embedded node heartbeats on its own, with a fresh probe.
func TestFakeNodeHeartbeats(t *testing.T) {
	t.Parallel()
	probed := make(chan struct{}, 1)
	r, id := nodeRig(t, func(c *session.Config) {
		c.NodeHeartbeat = 10 * time.Millisecond
		c.NodeProbe = func(context.Context) (store.NodeCapacity, error) {
			select {
			case probed <- struct{}{}:
			default:
			}
			c := fakeCapacity
			c.DiskBytes = 12345
			return c, nil
		}
	})
	<-probed
	r.eventually("a heartbeat with the fresh probe", func() bool {
		n, err := r.store.GetNode(context.Background(), *id)
		return err == nil && n.Capacity.DiskBytes == 12345
	})
}

// A clone records its node, from the pool or not; a drain drops the
// node's warm clones with its sessions parked, a cordoned node's clones
// are refused, and an uncordoned node fills its pool again.
func TestFakeNodePools(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Pool: 1}); err != nil {
		t.Fatal(err)
	}
	poolReady := func(n int) func() bool {
		return func() bool { tp, err := r.mgr.GetTemplate(ctx, "web"); return err == nil && tp.PoolReady == n }
	}
	r.eventually("the pool filled", poolReady(1))
	c := r.create(api.CreateSessionRequest{Template: "web"})
	if c.Node != *id {
		t.Errorf("pooled clone's node %q, want %q", c.Node, *id)
	}
	r.eventually("the pool filled again", poolReady(1))

	res, err := r.mgr.DrainNode(ctx, "host-a")
	if err != nil || res.Parked != 1 {
		t.Fatalf("drain = %+v, %v; want the clone parked", res, err)
	}
	if !poolReady(0)() {
		t.Error("a drained node keeps warm clones")
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "web"})
	wantCode(t, "clone on a draining node", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "host-a: draining") {
		t.Errorf("refusal %q does not say why", err)
	}
	if _, err := r.mgr.UncordonNode(ctx, "host-a"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the pool filled after the uncordon", poolReady(1))
	if c2 := r.create(api.CreateSessionRequest{Template: "web"}); c2.Node != *id {
		t.Errorf("clone's node %q, want %q", c2.Node, *id)
	}
}

// A server started under another node name (--node-name) leaves the old
// node's running sessions alone, their VMs running: started again under
// the old name, it adopts them as they were.
func TestFakeNodeRenameLeavesVMs(t *testing.T) {
	t.Parallel()
	name := "host-a"
	r := newFakeRigWith(t, func(c *session.Config) {
		n, err := session.RegisterEmbeddedNode(context.Background(), c.Store, name, fakeCapacity)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		c.Node = n.ID
	})
	s := r.create(api.CreateSessionRequest{})
	r.write(s.ID, "/tmp/f", "still here")
	name = "host-b"
	r.restart()
	if got := r.get(s.ID); got.State != api.StateRunning || got.Node != s.Node {
		t.Errorf("another node's session after a restart: %s on %q, want running on %q", got.State, got.Node, s.Node)
	}
	if running := r.driver.Running(); len(running) != 1 || running[0] != s.ID {
		t.Fatalf("fake VMs running %q, want the other node's %s left alone", running, s.ID)
	}
	name = "host-a"
	r.restart()
	r.wantFile(s.ID, "/tmp/f", "still here")
}

// TestFakeNodeForks: forks are recorded on the parent's node, and a
// cordoned node refuses them as it refuses creates.
func TestFakeNodeForks(t *testing.T) {
	t.Parallel()
	r, id := nodeRig(t, nil)
	ctx := context.Background()
	p := r.create(api.CreateSessionRequest{})
	forks, err := r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: 1})
	if err != nil || len(forks) != 1 {
		t.Fatalf("fork = %v, %v", forks, err)
	}
	if forks[0].Node != *id {
		t.Errorf("fork's node = %q, want %q", forks[0].Node, *id)
	}
	if _, err := r.mgr.CordonNode(ctx, "host-a"); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Fork(ctx, p.ID, api.ForkRequest{N: 1})
	wantCode(t, "fork on a cordoned node", err, api.CodeUnavailable)
	if err != nil && !strings.Contains(err.Error(), "no node fits") {
		t.Errorf("refusal %q does not say why", err)
	}
}

// A Linked manager (a 'cove node' serving sessions, reached through its
// control connection) holds only the sessions that name its node: it
// adopts none from before nodes (those are the embedded nodes'), and
// after a heartbeat (Heartbeated, which its agent calls) it stops the VM
// of a session that another node took.
func TestFakeNodeLinked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var node string
	r := newFakeRigWith(t, func(c *session.Config) {
		if node != "" {
			c.Node, c.Linked = node, true
		}
	})
	legacy := r.create(api.CreateSessionRequest{})
	r.park(legacy.ID)
	n := store.Node{ID: store.NewNodeID(), Name: "linked", CredentialHash: "ef", Capacity: fakeCapacity,
		JoinedAt: time.Now().UTC(), HeartbeatAt: time.Now().UTC()}
	if err := r.store.CreateNode(ctx, &n); err != nil {
		t.Fatal(err)
	}
	node = n.ID
	r.restart()
	if got := r.get(legacy.ID); got.Node != "" || got.State != api.StateParked {
		t.Errorf("a session from before nodes after a Linked manager's Recover: %s on %q, want parked on none", got.State, got.Node)
	}
	s := r.create(api.CreateSessionRequest{})
	if s.Node != node || s.State != api.StateRunning {
		t.Fatalf("create on the linked node: %+v", s)
	}
	if got, err := r.mgr.Node(ctx, node); err != nil || got.Sessions != 1 || got.Running != 1 {
		t.Errorf("the linked node counts %+v, %v; want its one session, not the one from before nodes", got, err)
	}
	runs := func() bool {
		for _, id := range r.driver.Running() {
			if strings.Contains(id, s.ID) {
				return true
			}
		}
		return false
	}
	if !runs() {
		t.Fatalf("no VM of %s runs: %v", s.ID, r.driver.Running())
	}
	// Another node woke it meanwhile (a partition): the next heartbeat
	// stops this node's VM of it.
	rec, err := r.store.GetSession(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.Node = "node-elsewhere00"
	if err := r.store.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	r.mgr.Heartbeated(ctx)
	if runs() {
		t.Errorf("the VM of a session another node holds still runs after a heartbeat: %v", r.driver.Running())
	}
	rec, err = r.store.GetSession(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.Node = node
	if err := r.store.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
}

// A server's placement takes a 'cove node' serving sessions (a remote
// node with a URL: the server holding its connection) as it takes
// another server's embedded node, and says why one with no URL takes
// none.
func TestFakeNodeRemotePlacement(t *testing.T) {
	t.Parallel()
	r := newFakeRigWith(t, func(c *session.Config) { c.NoNode, c.Route = true, true })
	ctx := context.Background()
	n := store.Node{ID: store.NewNodeID(), Name: "remote", CredentialHash: "ef", Capacity: fakeCapacity,
		JoinedAt: time.Now().UTC(), HeartbeatAt: time.Now().UTC()}
	if err := r.store.CreateNode(ctx, &n); err != nil {
		t.Fatal(err)
	}
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	if err == nil || !strings.Contains(err.Error(), "remote: it runs no sessions ('cove node' started without the shared store, --db)") {
		t.Errorf("create with a remote node that has no URL: %v, want a refusal saying it runs no sessions", err)
	}
	if err := session.AdvertiseNode(ctx, r.store, n.ID, "http://s.example:7070"); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{})
	if e, ok := errors.AsType[*session.ElsewhereError](err); !ok || e.Node.ID != n.ID {
		t.Errorf("create with a remote node serving sessions: %v, want it placed there (ElsewhereError)", err)
	}
}
