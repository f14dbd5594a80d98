package placement_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cove-dev/cove/internal/placement"
)

const gib = 1 << 30

// node is a schedulable node of 8 CPUs, 4 GiB of memory and 100 GiB of
// disk, with nothing used.
func node(name string) placement.Node {
	return placement.Node{ID: "node-" + name, Name: name,
		Capacity: placement.Resources{MemoryMiB: 4096, VCPUs: 8, DiskBytes: 100 * gib}}
}

func with(n placement.Node, f func(*placement.Node)) placement.Node {
	f(&n)
	return n
}

func ask(memMiB, cpus int64) placement.Request {
	return placement.Request{Resources: placement.Resources{MemoryMiB: memMiB, VCPUs: cpus}}
}

func TestChoose(t *testing.T) {
	cases := []struct {
		name  string
		nodes []placement.Node
		req   placement.Request
		want  string // node id, or "" for no fit
		// reasons, for no fit: the error's text
		reasons string
	}{
		{
			name:  "the only node",
			nodes: []placement.Node{node("a")},
			req:   ask(512, 1),
			want:  "node-a",
		},
		{
			name:    "none registered",
			req:     ask(512, 1),
			reasons: "no node fits: no node is registered",
		},
		{
			name: "spread: most free memory fraction wins",
			nodes: []placement.Node{
				with(node("a"), func(n *placement.Node) { n.Used.MemoryMiB = 2048 }),
				with(node("b"), func(n *placement.Node) { n.Used.MemoryMiB = 1024 }),
				with(node("c"), func(n *placement.Node) { n.Used.MemoryMiB = 3072 }),
			},
			req:  ask(512, 1),
			want: "node-b",
		},
		{
			name: "spread is by fraction, not MiB: a big busy node loses to a small idle one",
			nodes: []placement.Node{
				with(node("big"), func(n *placement.Node) { n.Capacity.MemoryMiB, n.Used.MemoryMiB = 65536, 60000 }),
				node("small"),
			},
			req:  ask(512, 1),
			want: "node-small",
		},
		{
			name:  "ties go to the lowest name, whatever the order",
			nodes: []placement.Node{node("c"), node("a"), node("b")},
			req:   ask(512, 1),
			want:  "node-a",
		},
		{
			name: "locality beats free memory",
			nodes: []placement.Node{
				node("idle"),
				with(node("cached"), func(n *placement.Node) { n.Used.MemoryMiB, n.Cached = 3000, true }),
			},
			req:  placement.Request{Resources: placement.Resources{MemoryMiB: 512, VCPUs: 1}, Template: "py"},
			want: "node-cached",
		},
		{
			name: "a warm pool is locality too",
			nodes: []placement.Node{
				node("idle"),
				with(node("pool"), func(n *placement.Node) { n.Used.MemoryMiB, n.Pooled = 3000, true }),
			},
			req:  placement.Request{Resources: placement.Resources{MemoryMiB: 512, VCPUs: 1}, Template: "py"},
			want: "node-pool",
		},
		{
			name: "locality does not matter without a template",
			nodes: []placement.Node{
				node("idle"),
				with(node("cached"), func(n *placement.Node) { n.Used.MemoryMiB, n.Cached = 3000, true }),
			},
			req:  ask(512, 1),
			want: "node-idle",
		},
		{
			name: "locality never overrides a full node",
			nodes: []placement.Node{
				node("idle"),
				with(node("cached"), func(n *placement.Node) { n.Used.MemoryMiB, n.Cached = 4000, true }),
			},
			req:  placement.Request{Resources: placement.Resources{MemoryMiB: 512, VCPUs: 1}, Template: "py"},
			want: "node-idle",
		},
		{
			name: "dead, cordoned, draining and unusable nodes take nothing",
			nodes: []placement.Node{
				with(node("a"), func(n *placement.Node) { n.Dead = true }),
				with(node("b"), func(n *placement.Node) { n.Admin = "cordoned" }),
				with(node("c"), func(n *placement.Node) { n.Admin = "draining" }),
				with(node("d"), func(n *placement.Node) { n.Unusable = "remote nodes take no sessions yet" }),
			},
			req:     ask(512, 1),
			reasons: "no node fits: a: dead; b: cordoned; c: draining; d: remote nodes take no sessions yet",
		},
		{
			name: "dead wins over an admin state in the reason",
			nodes: []placement.Node{
				with(node("a"), func(n *placement.Node) { n.Dead, n.Admin = true, "cordoned" }),
			},
			req:     ask(512, 1),
			reasons: "no node fits: a: dead",
		},
		{
			name: "memory, vCPUs and disk must fit",
			nodes: []placement.Node{
				with(node("mem"), func(n *placement.Node) { n.Used.MemoryMiB = 3584 }),
				with(node("cpu"), func(n *placement.Node) { n.Used.VCPUs = 8 }),
				with(node("disk"), func(n *placement.Node) { n.Capacity.DiskBytes = 1000 }),
			},
			req: placement.Request{Resources: placement.Resources{MemoryMiB: 1024, VCPUs: 1, DiskBytes: 2000}},
			reasons: "no node fits: mem: 512 MiB free < 1024 MiB asked; cpu: 0 vCPUs free < 1 asked; " +
				"disk: 1000 bytes of disk free < 2000 asked",
		},
		{
			name:  "exactly full fits",
			nodes: []placement.Node{with(node("a"), func(n *placement.Node) { n.Used = placement.Resources{MemoryMiB: 3072, VCPUs: 7} })},
			req:   ask(1024, 1),
			want:  "node-a",
		},
		{
			name:  "overcommit ratios scale memory and CPUs",
			nodes: []placement.Node{with(node("a"), func(n *placement.Node) { n.Used = placement.Resources{MemoryMiB: 4096, VCPUs: 8} })},
			req: placement.Request{Resources: placement.Resources{MemoryMiB: 1024, VCPUs: 4},
				MemoryOvercommit: 1.5, CPUOvercommit: 2},
			want: "node-a",
		},
		{
			name: "over-used nodes say 0 free, not less",
			nodes: []placement.Node{
				with(node("a"), func(n *placement.Node) { n.Used.MemoryMiB = 5000 }),
			},
			req:     ask(1, 1),
			reasons: "no node fits: a: 0 MiB free < 1 MiB asked",
		},
		{
			name: "selector: every label must match",
			nodes: []placement.Node{
				with(node("a"), func(n *placement.Node) { n.Labels = map[string]string{"zone": "eu"} }),
				with(node("b"), func(n *placement.Node) { n.Labels = map[string]string{"zone": "us", "gpu": "yes"} }),
				with(node("c"), func(n *placement.Node) { n.Labels = map[string]string{"zone": "eu", "gpu": "yes"} }),
			},
			req:  placement.Request{Resources: placement.Resources{MemoryMiB: 1, VCPUs: 1}, Selector: map[string]string{"zone": "eu", "gpu": "yes"}},
			want: "node-c",
		},
		{
			name:    "selector: a missing label is no match, even for an empty value",
			nodes:   []placement.Node{node("a")},
			req:     placement.Request{Resources: placement.Resources{MemoryMiB: 1, VCPUs: 1}, Selector: map[string]string{"gpu": ""}},
			reasons: "no node fits: a: labels do not match gpu=",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := placement.Choose(c.nodes, c.req)
			if c.want != "" {
				if err != nil || got != c.want {
					t.Fatalf("Choose = %q, %v; want %q", got, err, c.want)
				}
				return
			}
			var nf *placement.NoFitError
			if !errors.As(err, &nf) {
				t.Fatalf("Choose = %q, %v; want a *NoFitError", got, err)
			}
			if err.Error() != c.reasons {
				t.Errorf("error = %q\nwant    %q", err, c.reasons)
			}
		})
	}
}

// Choose does not change the nodes it is given.
func TestChooseLeavesNodes(t *testing.T) {
	nodes := []placement.Node{node("a"), node("b")}
	before := fmt.Sprint(nodes)
	if _, err := placement.Choose(nodes, ask(512, 1)); err != nil {
		t.Fatal(err)
	}
	if after := fmt.Sprint(nodes); after != before {
		t.Errorf("nodes changed: %s, want %s", after, before)
	}
}

// Nodes builds n nodes, their sessions' use spread over them, as a
// fleet of 1,000 nodes and 100,000 sessions is: exported for covebench
// through BenchmarkChoose's shape.
func fleet(n, sessions int) []placement.Node {
	nodes := make([]placement.Node, n)
	for i := range nodes {
		nodes[i] = placement.Node{ID: fmt.Sprintf("node-%06d", i), Name: fmt.Sprintf("host-%06d", i),
			Labels:   map[string]string{"zone": fmt.Sprintf("z%d", i%4)},
			Capacity: placement.Resources{MemoryMiB: 256 << 10, VCPUs: 64, DiskBytes: 2 << 40}}
	}
	for s := range sessions {
		u := &nodes[(s*7919)%n].Used
		u.MemoryMiB += 512 + int64(s%4)*256
		u.VCPUs++
		u.DiskBytes += 4 << 30
	}
	return nodes
}

func BenchmarkChoose1000Nodes(b *testing.B) {
	nodes := fleet(1000, 100000)
	req := placement.Request{Resources: placement.Resources{MemoryMiB: 1024, VCPUs: 2, DiskBytes: 8 << 30},
		Selector: map[string]string{"zone": "z1"}, MemoryOvercommit: 1.5, CPUOvercommit: 16}
	for b.Loop() {
		if _, err := placement.Choose(nodes, req); err != nil {
			b.Fatal(err)
		}
	}
}

// Use sums each node's sessions.
func TestUse(t *testing.T) {
	got := placement.Use([]placement.Session{
		{Node: "a", Resources: placement.Resources{MemoryMiB: 512, VCPUs: 1, DiskBytes: 10}},
		{Node: "b", Resources: placement.Resources{MemoryMiB: 256, VCPUs: 2}},
		{Node: "a", Resources: placement.Resources{MemoryMiB: 1024, VCPUs: 2, DiskBytes: 5}},
	})
	want := map[string]placement.Resources{
		"a": {MemoryMiB: 1536, VCPUs: 3, DiskBytes: 15},
		"b": {MemoryMiB: 256, VCPUs: 2},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Use = %v, want %v", got, want)
	}
}
