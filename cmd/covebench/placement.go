package main

import (
	"fmt"
	"time"

	"github.com/cove-dev/cove/internal/placement"
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
