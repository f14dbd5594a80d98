// Package placement chooses the node a new session goes to. It is pure:
// a function of the nodes as the caller read them (capacity, admin
// state, labels, what their sessions use, what they have cached) and of
// the request, with no I/O and no clock, so that a decision is the same
// whoever makes it and a benchmark measures the decision alone.
//
// Choose filters, then prefers, then spreads:
//
//  1. A node takes the session only if it is not dead, not cordoned or
//     draining, its labels match the request's selector, and what its
//     sessions use plus the request fits its capacity (times the
//     overcommit ratios) in memory, vCPUs and disk.
//  2. Of those, nodes with the template's files cached or a warm pool of
//     it (locality) win over the rest: a clone there starts from local
//     files.
//  3. Then the most free memory, as a fraction of the node's, wins:
//     sessions spread across nodes. Ties go to the lowest name, so the
//     choice is deterministic.
//
// When no node fits, the error lists why each did not.
package placement

import (
	"fmt"
	"slices"
	"strings"
)

// Resources are what sessions take of a node.
type Resources struct {
	MemoryMiB int64
	VCPUs     int64
	DiskBytes int64
}

// Node is one candidate node as the caller read it.
type Node struct {
	ID   string
	Name string
	// Labels are matched by the request's Selector.
	Labels map[string]string
	// Capacity is what the node has in all.
	Capacity Resources
	// Admin is "" (schedulable), "cordoned" or "draining".
	Admin string
	Dead  bool
	// Used is what the node's sessions that hold a VM (every one but the
	// parked and failed) take.
	Used Resources
	// Cached says the node holds the request's template's files; Pooled
	// that it keeps a warm pool of it.
	Cached bool
	Pooled bool
	// Unusable, if set, is why the node cannot take sessions for a
	// reason of the caller's ("its server advertises no URL").
	Unusable string
}

// Request is what a new session asks for.
type Request struct {
	Resources
	// Selector are labels the node must have, with these values.
	Selector map[string]string
	// Template is the template the session is cloned from, "" for none;
	// it names the locality that Node.Cached and Node.Pooled describe.
	Template string
	// MemoryOvercommit and CPUOvercommit are how many MiB of session
	// memory one MiB of a node's backs, and how many vCPUs one of its
	// CPUs; 0 means 1. Disk is not overcommitted.
	MemoryOvercommit float64
	CPUOvercommit    float64
}

// NoFitError says that no node takes a request, and why each did not.
type NoFitError struct {
	// Reasons has one line per node, "NAME: why", in the nodes' order.
	Reasons []string
}

func (e *NoFitError) Error() string {
	if len(e.Reasons) == 0 {
		return "no node fits: no node is registered"
	}
	return "no node fits: " + strings.Join(e.Reasons, "; ")
}

// Choose returns the id of the node that takes req, or a *NoFitError.
func Choose(nodes []Node, req Request) (string, error) {
	memRatio, cpuRatio := ratio(req.MemoryOvercommit), ratio(req.CPUOvercommit)
	var (
		best      = -1
		bestLocal bool
		bestFree  float64
	)
	for i := range nodes {
		n := &nodes[i]
		free, ok := fits(n, &req, memRatio, cpuRatio)
		if !ok {
			continue
		}
		local := req.Template != "" && (n.Cached || n.Pooled)
		switch {
		case best < 0,
			local && !bestLocal,
			local == bestLocal && (free > bestFree || free == bestFree && n.Name < nodes[best].Name):
			best, bestLocal, bestFree = i, local, free
		}
	}
	if best >= 0 {
		return nodes[best].ID, nil
	}
	// The reasons are worded only now: most decisions find a node, and
	// need none.
	reasons := make([]string, 0, len(nodes))
	for i := range nodes {
		reasons = append(reasons, nodes[i].Name+": "+why(&nodes[i], &req, memRatio, cpuRatio))
	}
	return "", &NoFitError{Reasons: reasons}
}

// fits reports whether n can take req and, if it can, the fraction of
// its memory left free once it has.
func fits(n *Node, req *Request, memRatio, cpuRatio float64) (float64, bool) {
	if n.Dead || n.Admin != "" || n.Unusable != "" {
		return 0, false
	}
	for k, v := range req.Selector {
		if got, ok := n.Labels[k]; !ok || got != v {
			return 0, false
		}
	}
	mem := int64(float64(n.Capacity.MemoryMiB) * memRatio)
	cpus := int64(float64(n.Capacity.VCPUs) * cpuRatio)
	if mem-n.Used.MemoryMiB < req.MemoryMiB || cpus-n.Used.VCPUs < req.VCPUs ||
		n.Capacity.DiskBytes-n.Used.DiskBytes < req.DiskBytes {
		return 0, false
	}
	if mem <= 0 {
		return 0, true // a node of no memory fits only requests of none
	}
	return float64(mem-n.Used.MemoryMiB-req.MemoryMiB) / float64(mem), true
}

// why says why n cannot take req: the first check of fits that fails.
func why(n *Node, req *Request, memRatio, cpuRatio float64) string {
	switch {
	case n.Dead:
		return "dead"
	case n.Admin != "":
		return n.Admin
	case n.Unusable != "":
		return n.Unusable
	}
	keys := make([]string, 0, len(req.Selector))
	for k := range req.Selector {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first mismatch in a stable order
	for _, k := range keys {
		if got, ok := n.Labels[k]; !ok || got != req.Selector[k] {
			return fmt.Sprintf("labels do not match %s=%s", k, req.Selector[k])
		}
	}
	mem := int64(float64(n.Capacity.MemoryMiB) * memRatio)
	cpus := int64(float64(n.Capacity.VCPUs) * cpuRatio)
	if free := mem - n.Used.MemoryMiB; free < req.MemoryMiB {
		return fmt.Sprintf("%d MiB free < %d MiB asked", max(free, 0), req.MemoryMiB)
	}
	if free := cpus - n.Used.VCPUs; free < req.VCPUs {
		return fmt.Sprintf("%d vCPUs free < %d asked", max(free, 0), req.VCPUs)
	}
	if free := n.Capacity.DiskBytes - n.Used.DiskBytes; free < req.DiskBytes {
		return fmt.Sprintf("%d bytes of disk free < %d asked", max(free, 0), req.DiskBytes)
	}
	return "fits" // not reached: why is asked only of nodes that do not fit
}

func ratio(r float64) float64 {
	if r <= 0 {
		return 1
	}
	return r
}

// Session is what one session takes of the node that holds it, for Use.
type Session struct {
	Node string
	Resources
}

// Use sums what sessions take, by node id.
func Use(sessions []Session) map[string]Resources {
	use := map[string]Resources{}
	for _, s := range sessions {
		u := use[s.Node]
		u.MemoryMiB += s.MemoryMiB
		u.VCPUs += s.VCPUs
		u.DiskBytes += s.DiskBytes
		use[s.Node] = u
	}
	return use
}
