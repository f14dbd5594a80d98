package session_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// nodeLossRig is an objects rig whose manager runs node "host-a", and a
// second manager, the server of node "host-b", over the same store,
// object store and driver: two hosts (their sessions dirs are one here,
// and a test removes what the lost host held).
type nodeLossRig struct {
	*objectsRig
	a, b  string // node ids
	mgrB  *session.Manager
	probe atomic.Bool // host-a's heartbeats fail while set (a partition)
}

func newNodeLossRig(t *testing.T, more func(*session.Config)) *nodeLossRig {
	t.Helper()
	nr := &nodeLossRig{}
	nr.objectsRig = newObjectsRig(t, func(c *session.Config) {
		n, err := session.RegisterEmbeddedNode(context.Background(), c.Store, "host-a", fakeCapacity)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		nr.a, c.Node = n.ID, n.ID
		c.NodeProbe = func(context.Context) (store.NodeCapacity, error) {
			if nr.probe.Load() {
				return store.NodeCapacity{}, errors.New("partitioned")
			}
			return fakeCapacity, nil
		}
		c.NodeGrace = time.Hour // swept by hand (SweepNodes)
		if more != nil {
			more(c)
		}
	})
	return nr
}

// openB starts host-b's server over the rig's store, object store, dir
// and driver. With own, it becomes the rig's manager (r.mgr), whose
// sessions its cleanup removes; without, its cleanup only stops it.
func (nr *nodeLossRig) openB(own bool) {
	t := nr.t
	t.Helper()
	ctx := context.Background()
	n, err := session.RegisterEmbeddedNode(ctx, nr.store, "host-b", fakeCapacity)
	if err != nil {
		t.Fatal(err)
	}
	nr.b = n.ID
	m, err := session.New(session.Config{Store: nr.store, Driver: nr.driver, Images: nr.images, Dir: nr.dir,
		TemplateDir: filepath.Join(nr.dir, "templates"), DefaultMemoryMiB: 64, Objects: nr.cas,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Node: n.ID, NodeGrace: time.Hour,
		NodeProbe: func(context.Context) (store.NodeCapacity, error) { return fakeCapacity, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// The tests backdate host-a's heartbeat past the grace (silence):
	// this server has seen the store all along.
	m.StoreSeenSince(time.Now().Add(-24 * time.Hour))
	st := nr.store
	nr.mgrB = m
	if !own {
		t.Cleanup(m.Close)
		return
	}
	nr.mgr = m
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if ss, err := m.List(ctx); err == nil {
			for _, s := range ss {
				if err := m.Delete(ctx, s.ID); err != nil {
					t.Errorf("cleanup: delete %s: %v", s.ID, err)
				}
			}
		}
		m.StopAll(ctx)
		st.Close()
	})
}

// silence makes host-a's last heartbeat older than the grace.
func (nr *nodeLossRig) silence() {
	nr.t.Helper()
	old := time.Now().UTC().Add(-2 * time.Hour)
	if err := nr.store.HeartbeatNode(context.Background(), nr.a, old, fakeCapacity); err != nil {
		nr.t.Fatal(err)
	}
}

// Node A dies (its server and VMs killed, its disk gone): its parked,
// stored session wakes on node B from the object store with its files;
// its running sessions are recorded lost, saying whether a stored
// snapshot remains; one that had one comes back from it on node B with
// --from-last-snapshot (the work since is gone, as asked); one that had
// none is refused and can be removed. Nothing is woken or rolled back
// without being asked.
func TestFakeNodeLoss(t *testing.T) {
	t.Parallel()
	nr := newNodeLossRig(t, nil)
	r := nr.objectsRig
	ctx := context.Background()

	parked := r.create(api.CreateSessionRequest{})
	r.write(parked.ID, "/root/f", "parked on A\n")
	r.park(parked.ID)
	r.waitStored(parked.ID)

	stored := r.create(api.CreateSessionRequest{})
	r.write(stored.ID, "/root/f", "stored\n")
	r.park(stored.ID)
	r.waitStored(stored.ID)
	r.write(stored.ID, "/root/f", "since the last store\n") // wakes it

	never := r.create(api.CreateSessionRequest{})
	r.write(never.ID, "/root/f", "never stored\n")

	// Host A dies: its server, its VMs and its disk.
	r.mgr.Close()
	for _, id := range []string{stored.ID, never.ID} {
		r.vmOf(id).Kill()
	}
	for _, id := range []string{parked.ID, stored.ID, never.ID} {
		if err := os.RemoveAll(filepath.Join(r.dir, id)); err != nil {
			t.Fatal(err)
		}
	}
	nr.silence()
	nr.openB(true)
	b := nr.mgrB

	// Until the sweep says A is dead, its sessions are its own.
	_, err := b.Wake(ctx, parked.ID)
	wantCode(t, "wake of a live node's session", err, api.CodeConflict)

	if dead := b.SweepNodes(ctx); len(dead) != 1 || dead[0] != nr.a {
		t.Fatalf("swept %v, want node A %s", dead, nr.a)
	}
	got := r.wantState(stored.ID, api.StateLost, "--from-last-snapshot")
	if got.LastSnapshotAt == nil || got.Node != nr.a {
		t.Errorf("lost session with a stored snapshot: %+v; want its last snapshot's time, still on node A", got)
	}
	if got := r.wantState(never.ID, api.StateLost, "no stored snapshot"); got.LastSnapshotAt != nil {
		t.Errorf("lost session never stored has a last snapshot time: %+v", got)
	}
	r.wantState(parked.ID, api.StateParked, "")
	_, err = b.Exec(ctx, stored.ID, api.ExecRequest{Argv: []string{"true"}})
	wantCode(t, "exec in a lost session", err, api.CodeConflict)
	_, err = b.Wake(ctx, stored.ID)
	wantCode(t, "plain wake of a lost session", err, api.CodeConflict)

	// The parked session wakes on B, from the object store.
	woken, err := b.Wake(ctx, parked.ID)
	if err != nil {
		t.Fatalf("wake of the dead node's parked session: %v", err)
	}
	if woken.State != api.StateRunning || woken.Node != nr.b {
		t.Fatalf("woken: %+v; want running on node B %s", woken, nr.b)
	}
	r.wantFile(parked.ID, "/root/f", "parked on A\n")

	// The lost one goes back to its last stored snapshot, when asked.
	back, err := b.WakeFromLastSnapshot(ctx, stored.ID)
	if err != nil {
		t.Fatalf("wake --from-last-snapshot: %v", err)
	}
	if back.State != api.StateRunning || back.Node != nr.b || back.Error != "" {
		t.Fatalf("back from the last snapshot: %+v; want running on node B, no error", back)
	}
	r.wantFile(stored.ID, "/root/f", "stored\n")
	// It parks, stores and wakes again as any session.
	r.park(stored.ID)
	r.waitStored(stored.ID)
	r.wantFile(stored.ID, "/root/f", "stored\n")

	_, err = b.WakeFromLastSnapshot(ctx, never.ID)
	wantCode(t, "wake --from-last-snapshot of a session never stored", err, api.CodeConflict)
	_, err = b.WakeFromLastSnapshot(ctx, parked.ID)
	wantCode(t, "wake --from-last-snapshot of a running session", err, api.CodeConflict)
	if err := b.Delete(ctx, never.ID); err != nil {
		t.Fatalf("remove a lost session: %v", err)
	}
	if running := r.driver.Running(); len(running) != 2 {
		t.Errorf("VMs running: %v, want the two woken on B", running)
	}
}

// A node cut off from the store (its heartbeats fail) is taken for dead
// and its running session recorded lost; once it can heartbeat again, it
// stops that session's VM (fencing): the session never runs on two
// nodes for longer than a heartbeat.
func TestFakeNodeFencesLostSessions(t *testing.T) {
	t.Parallel()
	nr := newNodeLossRig(t, func(c *session.Config) { c.NodeHeartbeat = 20 * time.Millisecond })
	r := nr.objectsRig
	ctx := context.Background()
	s := r.create(api.CreateSessionRequest{})
	kept := r.create(api.CreateSessionRequest{})
	nr.probe.Store(true) // partitioned: heartbeats fail
	time.Sleep(50 * time.Millisecond)
	nr.silence()
	nr.openB(false)
	if dead := nr.mgrB.SweepNodes(ctx); len(dead) != 1 {
		t.Fatalf("swept %v, want node A", dead)
	}
	r.wantState(s.ID, api.StateLost, "node host-a")
	// The kept one was not lost after all (an operator's call, say): it
	// is recorded running on A again.
	rec, err := r.store.GetSession(ctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.State, rec.Error = api.StateRunning, ""
	if err := r.store.UpdateSession(ctx, &rec); err != nil {
		t.Fatal(err)
	}
	if r.driver.Find(s.ID) == nil {
		t.Fatal("the VM was stopped while the node could not tell")
	}
	nr.probe.Store(false) // the partition heals
	r.eventually("the lost session's VM stopped by its old node", func() bool { return r.driver.Find(s.ID) == nil })
	r.echo(kept.ID)
	if strings.Contains(strings.Join(r.driver.Running(), " "), s.ID) {
		t.Fatal("the lost session's VM runs")
	}
}
