package apiserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

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
