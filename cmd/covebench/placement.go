package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cove-dev/cove/internal/placement"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// placementRows measures placement.Choose over a simulated fleet of
// nodes nodes holding sessions sessions (no VM, no store): a decision
// alone, over the nodes' use already summed, and a decision with the
// summing of every session's use first (placement.Use), as a manager
// that reads the session records for each create does. Each of n
// samples times one decision, in µs; the decisions per second row is
// the decision alone's, over all n.
func placementRows(n, nodes, sessions int) ([]row, error) {
	if n <= 0 || nodes <= 0 {
		return nil, fmt.Errorf("placement: %d samples over %d nodes", n, nodes)
	}
	fleet := make([]placement.Node, nodes)
	for i := range fleet {
		fleet[i] = placement.Node{ID: fmt.Sprintf("node-%06d", i), Name: fmt.Sprintf("host-%06d", i),
			Labels:   map[string]string{"zone": fmt.Sprintf("z%d", i%4)},
			Capacity: placement.Resources{MemoryMiB: 512 << 10, VCPUs: 128, DiskBytes: 4 << 40}}
	}
	recs := make([]placement.Session, sessions)
	for s := range recs {
		recs[s] = placement.Session{Node: fleet[(s*7919)%nodes].ID,
			Resources: placement.Resources{MemoryMiB: 512 + int64(s%4)*256, VCPUs: 1, DiskBytes: 4 << 30}}
	}
	use := placement.Use(recs)
	for i := range fleet {
		fleet[i].Used = use[fleet[i].ID]
	}
	// Every fourth create names a zone; one in eight clones a template
	// that a few nodes have cached.
	reqs := make([]placement.Request, 8)
	for i := range reqs {
		reqs[i] = placement.Request{Resources: placement.Resources{MemoryMiB: 1024, VCPUs: 2, DiskBytes: 8 << 30},
			MemoryOvercommit: 1.5, CPUOvercommit: 16}
		if i%4 == 0 {
			reqs[i].Selector = map[string]string{"zone": "z1"}
		}
	}
	reqs[7].Template = "py"
	for i := 0; i < nodes; i += 97 {
		fleet[i].Cached = true
	}

	label := fmt.Sprintf("%d nodes, %d sessions", nodes, sessions)
	decide := row{name: "placement decision (" + label + ")", unit: "µs", target: 200}
	start := time.Now()
	for i := range n {
		t := time.Now()
		if _, err := placement.Choose(fleet, reqs[i%len(reqs)]); err != nil {
			return nil, fmt.Errorf("placement: %w", err)
		}
		decide.samples = append(decide.samples, us(time.Since(t)))
	}
	rate := float64(n) / time.Since(start).Seconds()
	perSec := row{name: "placement decisions per second (" + label + ")",
		cells: []string{fmt.Sprint(n), fmt.Sprintf("%.0f/s", rate), "–", "≥ 5000/s", fmt.Sprintf("%.2f", 5000/rate)}}

	summed := row{name: "placement decision, summing every session's use first (" + label + ")", unit: "ms"}
	for i := range min(n, 200) {
		t := time.Now()
		use := placement.Use(recs)
		for j := range fleet {
			fleet[j].Used = use[fleet[j].ID]
		}
		if _, err := placement.Choose(fleet, reqs[i%len(reqs)]); err != nil {
			return nil, fmt.Errorf("placement: %w", err)
		}
		summed.samples = append(summed.samples, ms(time.Since(t)))
	}
	return []row{decide, perSec, summed}, nil
}

// storeUsageRows measures what a manager reads from a real SQLite store
// for each placement: the use of every node summed by the store
// (Store.SessionUsage, what it reads now) against every session record
// listed and summed in Go (what it read before), over sessions records
// spread over nodes nodes; n samples each, in ms.
func storeUsageRows(ctx context.Context, n, nodes, sessions int) ([]row, error) {
	dir, err := os.MkdirTemp("", "covebench-usage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "cove.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	fmt.Fprintf(os.Stderr, "covebench: storing %d session records over %d nodes…\n", sessions, nodes)
	states := []string{"running", "running", "parked", "parked", "parked", "failed"}
	var (
		wg   sync.WaitGroup
		errs = make(chan error, 16)
	)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < sessions; i += 16 {
				s := store.Session{ID: fmt.Sprintf("s-%08d", i), Node: fmt.Sprintf("node-%06d", (i*7919)%nodes),
					State: states[i%len(states)], Image: "tiny", MemoryMiB: 512 + i%4*256, CPUs: 1,
					Snapshot: make([]byte, 600)} // a parked record's machine, about its size
				if err := st.CreateSession(ctx, &s); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("store sessions: %w", err)
	}
	label := fmt.Sprintf("SQLite, %d sessions on %d nodes", sessions, nodes)
	usage := row{name: "placement's read of node use: SessionUsage (" + label + ")", unit: "ms"}
	list := row{name: "the same read by listing every session (" + label + ")", unit: "ms"}
	for range n {
		t := time.Now()
		u, err := st.SessionUsage(ctx)
		if err != nil {
			return nil, err
		}
		usage.samples = append(usage.samples, ms(time.Since(t)))
		if len(u) == 0 {
			return nil, fmt.Errorf("session usage: no rows")
		}
		t = time.Now()
		recs, err := st.ListSessions(ctx)
		if err != nil {
			return nil, err
		}
		use := map[string]placement.Resources{}
		for _, r := range recs {
			x := use[r.Node]
			x.MemoryMiB += int64(r.MemoryMiB)
			x.VCPUs += int64(r.CPUs)
			use[r.Node] = x
		}
		list.samples = append(list.samples, ms(time.Since(t)))
	}
	return []row{usage, list}, nil
}
