package apiserver

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// burstCapacity is a node small enough for a burst to fill: 512 MiB,
// times the default memory overcommit (1.5), holds 12 sessions of the
// rig's 64 MiB; its 8 vCPUs (times 16) are not what binds.
var burstCapacity = store.NodeCapacity{VCPUs: 8, MemoryMiB: 512, DiskBytes: 1 << 40, Accel: "tcg"}

// burstSlots is how many 64 MiB sessions one burstCapacity node holds.
var burstSlots = int(float64(burstCapacity.MemoryMiB)*session.DefaultMemoryOvercommit) / 64

// TestFakeRouteBurst: two servers with their embedded nodes, over one
// store; a burst of creates through both at once, more than the two
// nodes hold. Every create either makes a session on one node, or is
// refused with a 503 (no node fits) and leaves nothing: no session is
// recorded twice or runs twice, no node holds more than its capacity
// (times the overcommit), each VM runs on the node its record names.
// Then creates one at a time fill what room is left, exactly: the burst
// leaked no reservation, and the nodes end holding precisely what they
// can.
func TestFakeRouteBurst(t *testing.T) {
	r := newRouteRig(t)
	r.capacity = burstCapacity
	a, b := r.server("host-a", true), r.server("host-b", true)
	ctx := context.Background()
	servers := []*routeServer{a, b}

	const burst = 40 // 20 through each; the nodes hold 2*burstSlots (24)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		made    []api.Session
		refused []error
	)
	start := make(chan struct{})
	for i := range burst {
		via := servers[i%2]
		wg.Go(func() {
			<-start
			s, err := via.client.CreateSession(ctx, api.CreateSessionRequest{})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused = append(refused, fmt.Errorf("through %s: %w", via.name, err))
				return
			}
			made = append(made, s)
		})
	}
	close(start)
	wg.Wait()
	for _, err := range refused {
		if !api.IsCode(err, api.CodeUnavailable) {
			t.Errorf("a create refused other than as 503 (no room): %v", err)
		}
	}
	t.Logf("burst of %d: %d made, %d refused", burst, len(made), len(refused))
	checkPlaced(t, r, servers, made)

	// One at a time through A, until no node fits.
	for len(made) < 2*burstSlots+1 {
		s, err := a.client.CreateSession(ctx, api.CreateSessionRequest{})
		if err != nil {
			if !api.IsCode(err, api.CodeUnavailable) {
				t.Fatalf("create after the burst: %v; want a session or 503", err)
			}
			break
		}
		made = append(made, s)
	}
	if len(made) != 2*burstSlots {
		t.Errorf("the nodes took %d sessions in all; want exactly %d (%d each)", len(made), 2*burstSlots, burstSlots)
	}
	checkPlaced(t, r, servers, made)
}

// checkPlaced checks that the sessions made are the store's, each
// recorded once, on one node, running there alone, and that no node
// holds more than it can.
func checkPlaced(t *testing.T, r *routeRig, servers []*routeServer, made []api.Session) {
	t.Helper()
	ctx := context.Background()
	recs, err := servers[0].st.ListSessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]store.Session{}
	for _, rec := range recs {
		if _, dup := byID[rec.ID]; dup {
			t.Errorf("session %s listed twice", rec.ID)
		}
		byID[rec.ID] = rec
	}
	if len(byID) != len(made) {
		t.Errorf("the store records %d sessions; %d creates answered with one", len(byID), len(made))
	}
	seen := map[string]bool{}
	for _, s := range made {
		if seen[s.ID] {
			t.Errorf("session %s answered to two creates", s.ID)
		}
		seen[s.ID] = true
		rec, ok := byID[s.ID]
		if !ok || rec.Node != s.Node || rec.State != api.StateRunning {
			t.Errorf("session %s: answered on node %s; recorded %+v (found %v), want running there", s.ID, s.Node, rec, ok)
		}
	}
	nodeDir := map[string]string{}
	for _, s := range servers {
		nodeDir[s.node] = s.dir
	}
	used := map[string]int64{}
	for _, rec := range byID {
		used[rec.Node] += int64(rec.MemoryMiB)
		dir, ok := nodeDir[rec.Node]
		if !ok {
			t.Errorf("session %s recorded on node %q, none of the servers'", rec.ID, rec.Node)
			continue
		}
		// Its files (and VM) are on that node's server alone.
		for _, s := range servers {
			_, err := os.Stat(filepath.Join(s.dir, rec.ID))
			if here := s.dir == dir; here != (err == nil) {
				t.Errorf("session %s (node %s): its files on %s: %v; want them there %v", rec.ID, rec.Node, s.name, err, here)
			}
		}
	}
	limit := int64(float64(burstCapacity.MemoryMiB) * session.DefaultMemoryOvercommit)
	for _, s := range servers {
		if used[s.node] > limit {
			t.Errorf("node %s holds %d MiB of sessions; it holds %d at most (%d MiB, overcommit %g)",
				s.name, used[s.node], limit, burstCapacity.MemoryMiB, session.DefaultMemoryOvercommit)
		}
	}
	running := r.driver.Running()
	if !slices.Equal(running, slices.Compact(slices.Clone(running))) {
		t.Errorf("a VM runs twice: %v", running)
	}
	if len(running) != len(byID) {
		t.Errorf("%d VMs run for %d sessions", len(running), len(byID))
	}
	for _, id := range running {
		if _, ok := byID[id]; !ok {
			t.Errorf("VM %s runs with no session recorded", id)
		}
	}
}

// TestFakeRouteParkWake: one session on node B, parked and woken at
// once, round after round, through three servers (A with its own node,
// B its holder, C with none). Each call either does what it asks or is
// refused as a conflict (409: the session is not in a state for it, or
// another call is moving it) or with a 503; after each round the session
// is parked or running, on B, with exactly one VM when running and
// none when parked, and answers an exec (woken for it if parked) through
// each server with what was written into it before.
func TestFakeRouteParkWake(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(a)
	s := r.createOn(c, b)
	if _, err := a.client.UncordonNode(ctx, a.node); err != nil {
		t.Fatal(err)
	}
	if err := a.client.WriteFile(ctx, s.ID, "/root/kept", 0o644, strings.NewReader("kept\n")); err != nil {
		t.Fatal(err)
	}
	servers := []*routeServer{a, b, c}
	for round := range 8 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, via := range servers {
			for _, park := range []bool{true, false} {
				wg.Go(func() {
					<-start
					var err error
					op := "wake"
					if park {
						op = "park"
						_, err = via.client.ParkSession(ctx, s.ID)
					} else {
						_, err = via.client.WakeSession(ctx, s.ID)
					}
					if err != nil && !api.IsCode(err, api.CodeConflict) && !api.IsCode(err, api.CodeUnavailable) {
						t.Errorf("round %d: %s through %s (%d): %v; want it done, or 409/503", round, op, via.name, i, err)
					}
				})
			}
		}
		close(start)
		wg.Wait()
		got, err := c.client.GetSession(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Node != b.node {
			t.Fatalf("round %d: the session moved to %s; want it on B", round, got.Node)
		}
		vms := 0
		for _, id := range r.driver.Running() {
			if id == s.ID {
				vms++
			}
		}
		switch got.State {
		case api.StateRunning:
			if vms != 1 {
				t.Fatalf("round %d: running with %d VMs", round, vms)
			}
		case api.StateParked:
			if vms != 0 {
				t.Fatalf("round %d: parked with %d VMs", round, vms)
			}
		default:
			t.Fatalf("round %d: the calls done, the session is %s (%s); want running or parked", round, got.State, got.Error)
		}
		t.Logf("round %d: %s", round, got.State)
		via := servers[round%3]
		rc, err := via.client.ReadFile(ctx, s.ID, "/root/kept")
		if err != nil {
			t.Fatalf("round %d: read through %s (was %s): %v", round, via.name, got.State, err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if string(data) != "kept\n" {
			t.Fatalf("round %d: /root/kept = %q", round, data)
		}
		via.echo(t, s.ID, fmt.Sprint("round", round))
	}
	if _, err := c.client.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.WakeSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	b.echo(t, s.ID, "end")
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFakeRouteWakeMoveRace: node B, holding a parked (and stored)
// session, is marked dead; wakes through A and through D (each server
// with its own node, each of which moves the session to its node) and
// through C (none: routed to a live node's server) at once, round after
// round. The session ends running on one node, A or D, with one VM, and
// its files; the wakes that lost are refused (409/503) or answer the
// winner's session.
func TestFakeRouteWakeMoveRace(t *testing.T) {
	r := newRouteRig(t)
	a, b, c, d := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false), r.server("host-d", true)
	ctx := context.Background()
	for round := range 4 {
		r.cordon(a)
		r.cordon(d)
		s := r.createOn(b, b)
		for _, n := range []*routeServer{a, d} {
			if _, err := n.client.UncordonNode(ctx, n.node); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.client.WriteFile(ctx, s.ID, "/root/kept", 0o644, strings.NewReader("kept\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.client.ParkSession(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		waitStored(t, c, s.ID)
		// B's node is dead (its server still answers: a wake through B
		// is not among the racers).
		if err := a.st.HeartbeatNode(ctx, b.node, time.Now().UTC().Add(-2*time.Hour), burstCapacity); err != nil {
			t.Fatal(err)
		}
		if dead := a.mgr.SweepNodes(ctx); !slices.Contains(dead, b.node) {
			t.Fatalf("sweep: %v, want B dead", dead)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, via := range []*routeServer{a, c, d, a, c, d} {
			wg.Go(func() {
				<-start
				w, err := via.client.WakeSession(ctx, s.ID)
				switch {
				case err == nil && w.State == api.StateRunning && (w.Node == a.node || w.Node == d.node):
				case api.IsCode(err, api.CodeConflict), api.IsCode(err, api.CodeUnavailable):
				default:
					t.Errorf("round %d: wake through %s: %+v, %v; want running on A or D, or 409/503", round, via.name, w, err)
				}
			})
		}
		close(start)
		wg.Wait()
		got, err := c.client.GetSession(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		var holder *routeServer
		switch got.Node {
		case a.node:
			holder = a
		case d.node:
			holder = d
		default:
			t.Fatalf("round %d: after the wakes the session is on %s (%s); want A or D", round, got.Node, got.State)
		}
		t.Logf("round %d: %s on %s", round, got.State, holder.name)
		vms := 0
		for _, id := range r.driver.Running() {
			if id == s.ID {
				vms++
			}
		}
		if got.State != api.StateRunning || vms != 1 {
			t.Fatalf("round %d: %s with %d VMs; want running, one VM", round, got.State, vms)
		}
		// The loser's files fetched to move it are removed (B's, the
		// dead node's, are its host's).
		for _, other := range []*routeServer{a, d} {
			if other != holder {
				if _, err := os.Stat(filepath.Join(other.dir, s.ID)); err == nil {
					t.Errorf("round %d: the session's files are left on %s too", round, other.name)
				}
			}
		}
		rc, err := c.client.ReadFile(ctx, s.ID, "/root/kept")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if string(data) != "kept\n" {
			t.Fatalf("round %d: /root/kept = %q", round, data)
		}
		if err := c.client.DeleteSession(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		// B back for the next round.
		if err := a.st.HeartbeatNode(ctx, b.node, time.Now().UTC(), burstCapacity); err != nil {
			t.Fatal(err)
		}
	}
}

// waitStored waits until session id's snapshot is in the object store.
func waitStored(t *testing.T, via *routeServer, id string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := via.client.GetSession(context.Background(), id)
		if err == nil && got.Stored {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the parked session %s was not stored: %+v, %v", id, got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFakeRouteDrain: a drain of node B asked of C (a server with no
// node) and of A (another node's server), by name and by id, is carried
// out by B's server: B's running sessions are parked, B is draining, and
// its warm work stops; a drain of C's own absent node is a 404.
func TestFakeRouteDrain(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(a)
	var ids []string
	for range 2 {
		s := r.createOn(c, b)
		ids = append(ids, s.ID)
	}
	if _, err := a.client.UncordonNode(ctx, a.node); err != nil {
		t.Fatal(err)
	}
	res, err := c.client.DrainNode(ctx, "host-b")
	if err != nil {
		t.Fatalf("drain B through C: %v", err)
	}
	if res.Parked != 2 || len(res.Errors) != 0 || res.Node.State != "draining" {
		t.Fatalf("drain B through C: %+v; want 2 parked, B draining", res)
	}
	if !strings.Contains(b.logs.String(), "node drained") || strings.Contains(c.logs.String(), "node drained") {
		t.Errorf("the drain was not carried out by B's server alone")
	}
	for _, id := range ids {
		got, err := a.client.GetSession(ctx, id)
		if err != nil || got.State != api.StateParked || got.Node != b.node {
			t.Errorf("after the drain, session %s: %+v, %v; want parked on B", id, got, err)
		}
	}
	// Again through A, by id: nothing left to park.
	res, err = a.client.DrainNode(ctx, b.node)
	if err != nil || res.Parked != 0 || res.Node.State != "draining" {
		t.Fatalf("drain B again through A: %+v, %v", res, err)
	}
	if _, err := c.client.DrainNode(ctx, "no-such-node"); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("drain of an unknown node: %v; want 404", err)
	}
	for _, id := range ids {
		if err := c.client.DeleteSession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}
