package storetest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/store"
)

// Nodes: the VM hosts.

func (s *suite) runNodes(t *testing.T) {
	s.run(t, "NodeRoundTrip", s.nodeRoundTrip)
	s.run(t, "ZeroNodeRoundTrip", s.zeroNodeRoundTrip)
	s.run(t, "NodeCreateDuplicate", s.nodeCreateDuplicate)
	s.run(t, "NodeUpdateCAS", s.nodeUpdateCAS)
	s.run(t, "NodeUpdateNameTaken", s.nodeUpdateNameTaken)
	s.run(t, "NodeConcurrentUpdatersOneWins", s.nodeConcurrentUpdatersOneWins)
	s.run(t, "NodeByCredential", s.nodeByCredential)
	s.run(t, "NodeHeartbeatLeavesGen", s.nodeHeartbeatLeavesGen)
	s.run(t, "ListNodesOrder", s.listNodesOrder)
	s.run(t, "NodeMissing", s.nodeMissing)
	s.run(t, "NodeCopiesInAndOut", s.nodeCopiesInAndOut)
	s.run(t, "NodeDoneContext", s.nodeDoneContext)
	s.run(t, "NodesPersistAcrossReopen", s.nodesPersistAcrossReopen)
	s.run(t, "SessionUsage", s.sessionUsage)
}

// fullNode has every field set to a value that is not the zero value.
func fullNode(id, name string) store.Node {
	return store.Node{
		ID:     id,
		Name:   name,
		Labels: map[string]string{"zone": "eu-1", "gpu": "", "ünï": "☃"},
		Capacity: store.NodeCapacity{
			VCPUs:         64,
			MemoryMiB:     1 << 20,
			DiskBytes:     1<<40 + 7,
			Accel:         "kvm",
			CPUModel:      "AMD EPYC 9654 96-Core Processor",
			CPUFlags:      []string{"fpu", "vme", "avx2", "avx512f"},
			QEMUVersion:   "QEMU emulator version 8.2.2",
			KernelVersion: "6.8.0-45-generic",
		},
		Admin:          store.NodeCordoned,
		Dead:           true,
		Embedded:       true,
		CredentialHash: strings.Repeat("ab", 32) + name,
		URL:            "http://10.0.0.7:7070/" + name,
		E2BURL:         "http://10.0.0.7:3000",
		JoinedAt:       at(5),
		HeartbeatAt:    at(6).Add(3),
	}
}

func diffNode(got, want store.Node) []string {
	var d diffs
	d.str("ID", got.ID, want.ID)
	d.str("Name", got.Name, want.Name)
	if !maps.Equal(got.Labels, want.Labels) {
		d = append(d, fmt.Sprintf("Labels = %q, want %q", got.Labels, want.Labels))
	}
	if fmt.Sprintf("%+v", got.Capacity) != fmt.Sprintf("%+v", want.Capacity) {
		d = append(d, fmt.Sprintf("Capacity = %+v, want %+v", got.Capacity, want.Capacity))
	}
	if !slices.Equal(got.Capacity.CPUFlags, want.Capacity.CPUFlags) {
		d = append(d, fmt.Sprintf("Capacity.CPUFlags = %q, want %q", got.Capacity.CPUFlags, want.Capacity.CPUFlags))
	}
	d.str("Admin", got.Admin, want.Admin)
	if got.Dead != want.Dead {
		d = append(d, fmt.Sprintf("Dead = %v, want %v", got.Dead, want.Dead))
	}
	if got.Embedded != want.Embedded {
		d = append(d, fmt.Sprintf("Embedded = %v, want %v", got.Embedded, want.Embedded))
	}
	d.str("CredentialHash", got.CredentialHash, want.CredentialHash)
	d.str("URL", got.URL, want.URL)
	d.str("E2BURL", got.E2BURL, want.E2BURL)
	d = append(d, checkTime("JoinedAt", got.JoinedAt, want.JoinedAt)...)
	d = append(d, checkTime("HeartbeatAt", got.HeartbeatAt, want.HeartbeatAt)...)
	d.num("Gen", got.Gen, want.Gen)
	return d
}

func mustCreateNode(t *testing.T, st store.Store, n store.Node) store.Node {
	t.Helper()
	if err := st.CreateNode(t.Context(), &n); err != nil {
		t.Fatalf("CreateNode(%q): %v", n.ID, err)
	}
	if n.Gen != 1 {
		t.Fatalf("CreateNode(%q) set Gen %d, want 1", n.ID, n.Gen)
	}
	return n
}

// wantNode checks that the node with want.ID is want, through GetNode,
// GetNodeByName and, where it has one, GetNodeByCredential.
func wantNode(t *testing.T, st store.Store, want store.Node) {
	t.Helper()
	got, err := st.GetNode(t.Context(), want.ID)
	if err != nil {
		t.Fatalf("GetNode(%q): %v", want.ID, err)
	}
	for _, d := range diffNode(got, want) {
		t.Errorf("GetNode(%q): %s", want.ID, d)
	}
	got, err = st.GetNodeByName(t.Context(), want.Name)
	if err != nil {
		t.Fatalf("GetNodeByName(%q): %v", want.Name, err)
	}
	for _, d := range diffNode(got, want) {
		t.Errorf("GetNodeByName(%q): %s", want.Name, d)
	}
	if want.CredentialHash == "" {
		return
	}
	got, err = st.GetNodeByCredential(t.Context(), want.CredentialHash)
	if err != nil {
		t.Fatalf("GetNodeByCredential(%q): %v", want.CredentialHash, err)
	}
	for _, d := range diffNode(got, want) {
		t.Errorf("GetNodeByCredential: %s", d)
	}
}

func wantNodeNames(t *testing.T, st store.Store, want ...string) []store.Node {
	t.Helper()
	list, err := st.ListNodes(t.Context())
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	if list == nil {
		t.Errorf("ListNodes returned nil, want a slice of length %d", len(want))
	}
	var got []string
	for _, n := range list {
		got = append(got, n.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListNodes names = %q, want %q", got, want)
	}
	return list
}

// A node comes back exactly as written, with Gen 1.
func (s *suite) nodeRoundTrip(t *testing.T) {
	st := s.fresh(t)
	n := mustCreateNode(t, st, fullNode("node-aaaaaaaaaaaa", "host-a"))
	wantNode(t, st, n)
}

// The zero values round-trip: no labels, no flags, zero times, no
// credential (the embedded node).
func (s *suite) zeroNodeRoundTrip(t *testing.T) {
	st := s.fresh(t)
	n := mustCreateNode(t, st, store.Node{ID: "node-zzzzzzzzzzzz", Name: "z"})
	wantNode(t, st, n)
}

// A second node with the same id, name or credential is refused and
// changes nothing.
func (s *suite) nodeCreateDuplicate(t *testing.T) {
	st := s.fresh(t)
	a := mustCreateNode(t, st, fullNode("node-a", "a"))
	for _, dup := range []store.Node{
		{ID: "node-a", Name: "other"},
		{ID: "node-b", Name: "a"},
		{ID: "node-c", Name: "c", CredentialHash: a.CredentialHash},
	} {
		if err := st.CreateNode(t.Context(), &dup); !errors.Is(err, store.ErrExists) {
			t.Errorf("CreateNode(%q, %q) = %v, want ErrExists", dup.ID, dup.Name, err)
		}
	}
	wantNode(t, st, a)
	wantNodeNames(t, st, "a")
	// Two nodes without a credential are no clash.
	mustCreateNode(t, st, store.Node{ID: "node-d", Name: "d"})
	mustCreateNode(t, st, store.Node{ID: "node-e", Name: "e"})
}

// UpdateNode replaces every field from a current copy and advances Gen;
// a stale copy fails with ErrConflict and changes nothing.
func (s *suite) nodeUpdateCAS(t *testing.T) {
	st := s.fresh(t)
	n := mustCreateNode(t, st, fullNode("node-u", "u"))
	stale := n

	upd := n
	upd.Name = "renamed"
	upd.Labels = map[string]string{"only": "this"}
	upd.Capacity = store.NodeCapacity{VCPUs: 2, MemoryMiB: 2048, Accel: "tcg"}
	upd.Admin = ""
	upd.Dead = false
	upd.Embedded = false
	upd.CredentialHash = ""
	upd.URL = "https://moved.example:8443"
	upd.E2BURL = "https://moved.example:3443"
	upd.JoinedAt = at(20)
	upd.HeartbeatAt = at(21)
	if err := st.UpdateNode(t.Context(), &upd); err != nil {
		t.Fatalf("UpdateNode: %v", err)
	}
	if upd.Gen != 2 {
		t.Errorf("UpdateNode set Gen %d, want 2", upd.Gen)
	}
	wantNode(t, st, upd)

	stale.Admin = store.NodeDraining
	if err := st.UpdateNode(t.Context(), &stale); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateNode(stale) = %v, want ErrConflict", err)
	}
	if stale.Gen != 1 {
		t.Errorf("a failed UpdateNode changed the copy's Gen to %d", stale.Gen)
	}
	wantNode(t, st, upd)

	missing := fullNode("node-missing", "missing")
	missing.Gen = 1
	if err := st.UpdateNode(t.Context(), &missing); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateNode(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetNode(t.Context(), "node-missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateNode(missing) created it: GetNode = %v", err)
	}
}

// Renaming a node to another's name, or giving it another's credential,
// fails with ErrExists and changes nothing.
func (s *suite) nodeUpdateNameTaken(t *testing.T) {
	st := s.fresh(t)
	a := mustCreateNode(t, st, fullNode("node-a", "a"))
	b := mustCreateNode(t, st, fullNode("node-b", "b"))
	clash := b
	clash.Name = "a"
	if err := st.UpdateNode(t.Context(), &clash); !errors.Is(err, store.ErrExists) {
		t.Errorf("UpdateNode(name of another) = %v, want ErrExists", err)
	}
	clash = b
	clash.CredentialHash = a.CredentialHash
	if err := st.UpdateNode(t.Context(), &clash); !errors.Is(err, store.ErrExists) {
		t.Errorf("UpdateNode(credential of another) = %v, want ErrExists", err)
	}
	wantNode(t, st, a)
	wantNode(t, st, b)
}

// Of writers updating one node from the same read, exactly one wins.
func (s *suite) nodeConcurrentUpdatersOneWins(t *testing.T) {
	st := s.fresh(t)
	n := mustCreateNode(t, st, fullNode("node-c", "c"))
	const writers = 8
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
		errs []error
	)
	for i := range writers {
		wg.Go(func() {
			cp := n
			cp.Admin = fmt.Sprintf("writer-%d", i)
			err := st.UpdateNode(t.Context(), &cp)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins = append(wins, cp.Admin)
			} else if !errors.Is(err, store.ErrConflict) {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Errorf("UpdateNode: %v, want nil or ErrConflict", err)
	}
	if len(wins) != 1 {
		t.Fatalf("%d writers won, want 1 (%q)", len(wins), wins)
	}
	got, err := st.GetNode(t.Context(), n.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Admin != wins[0] || got.Gen != 2 {
		t.Errorf("node has Admin %q Gen %d, want the winner's %q at 2", got.Admin, got.Gen, wins[0])
	}
}

// GetNodeByCredential finds a node by its credential's hash, and nothing
// for an unknown or empty hash (even with the embedded node's "" stored).
func (s *suite) nodeByCredential(t *testing.T) {
	st := s.fresh(t)
	a := mustCreateNode(t, st, fullNode("node-a", "a"))
	mustCreateNode(t, st, store.Node{ID: "node-emb", Name: "emb", Embedded: true})
	got, err := st.GetNodeByCredential(t.Context(), a.CredentialHash)
	if err != nil || got.ID != a.ID {
		t.Fatalf("GetNodeByCredential = %q, %v; want %q", got.ID, err, a.ID)
	}
	for _, h := range []string{"", strings.Repeat("cd", 32)} {
		if _, err := st.GetNodeByCredential(t.Context(), h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetNodeByCredential(%q) = %v, want ErrNotFound", h, err)
		}
	}
}

// HeartbeatNode sets HeartbeatAt and Capacity and clears Dead, without
// advancing Gen: an operator's copy read before it still updates.
func (s *suite) nodeHeartbeatLeavesGen(t *testing.T) {
	st := s.fresh(t)
	n := mustCreateNode(t, st, fullNode("node-h", "h"))
	c := store.NodeCapacity{VCPUs: 3, MemoryMiB: 3000, DiskBytes: 5, Accel: "tcg", CPUFlags: []string{"sse2"}}
	if err := st.HeartbeatNode(t.Context(), n.ID, at(40), c); err != nil {
		t.Fatalf("HeartbeatNode: %v", err)
	}
	want := n
	want.HeartbeatAt = at(40)
	want.Capacity = c
	want.Dead = false
	wantNode(t, st, want)

	op := n // read before the heartbeat
	op.Admin = store.NodeDraining
	op.HeartbeatAt = want.HeartbeatAt
	op.Capacity = c
	op.Dead = false
	if err := st.UpdateNode(t.Context(), &op); err != nil {
		t.Fatalf("UpdateNode after a heartbeat: %v", err)
	}
	wantNode(t, st, op)

	if err := st.HeartbeatNode(t.Context(), "node-missing", at(41), c); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("HeartbeatNode(missing) = %v, want ErrNotFound", err)
	}
}

// ListNodes orders by name, bytewise, whatever the ids and insert order.
func (s *suite) listNodesOrder(t *testing.T) {
	st := s.fresh(t)
	wantNodeNames(t, st)
	for i, name := range []string{"b", "a", "B", "ä", "a-1"} {
		mustCreateNode(t, st, store.Node{ID: fmt.Sprintf("node-%d", 9-i), Name: name})
	}
	wantNodeNames(t, st, "B", "a", "a-1", "b", "ä")
}

// Missing nodes are ErrNotFound on every call that names one.
func (s *suite) nodeMissing(t *testing.T) {
	st := s.fresh(t)
	if _, err := st.GetNode(t.Context(), "node-x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode = %v, want ErrNotFound", err)
	}
	if _, err := st.GetNodeByName(t.Context(), "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNodeByName = %v, want ErrNotFound", err)
	}
	if err := st.DeleteNode(t.Context(), "node-x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteNode = %v, want ErrNotFound", err)
	}
	a := mustCreateNode(t, st, fullNode("node-a", "a"))
	if err := st.DeleteNode(t.Context(), a.ID); err != nil {
		t.Fatalf("DeleteNode: %v", err)
	}
	if _, err := st.GetNode(t.Context(), a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode after DeleteNode = %v, want ErrNotFound", err)
	}
	if err := st.DeleteNode(t.Context(), a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteNode again = %v, want ErrNotFound", err)
	}
	// The name is free again.
	mustCreateNode(t, st, fullNode("node-a2", "a"))
}

// Changing a node passed in or handed out changes nothing stored.
func (s *suite) nodeCopiesInAndOut(t *testing.T) {
	st := s.fresh(t)
	n := fullNode("node-c", "c")
	mustCreateNode(t, st, n)
	want := fullNode("node-c", "c")
	want.Gen = 1
	n.Labels["zone"] = "changed"
	n.Capacity.CPUFlags[0] = "changed"
	got, err := st.GetNode(t.Context(), "node-c")
	if err != nil {
		t.Fatal(err)
	}
	got.Labels["zone"] = "changed too"
	got.Capacity.CPUFlags[0] = "changed too"
	wantNode(t, st, want)
}

func (s *suite) nodeDoneContext(t *testing.T) {
	st := s.fresh(t)
	there := mustCreateNode(t, st, fullNode("node-there", "there"))
	ctx, check := canceled(t)
	check("CreateNode", st.CreateNode(ctx, ptr(fullNode("node-new", "new"))))
	changed := there
	changed.Admin = ""
	check("UpdateNode", st.UpdateNode(ctx, &changed))
	_, err := st.GetNode(ctx, there.ID)
	check("GetNode", err)
	_, err = st.GetNodeByName(ctx, there.Name)
	check("GetNodeByName", err)
	_, err = st.GetNodeByCredential(ctx, there.CredentialHash)
	check("GetNodeByCredential", err)
	_, err = st.ListNodes(ctx)
	check("ListNodes", err)
	check("HeartbeatNode", st.HeartbeatNode(ctx, there.ID, at(50), store.NodeCapacity{}))
	check("DeleteNode", st.DeleteNode(ctx, there.ID))
	wantNode(t, st, there)
	wantNodeNames(t, st, "there")
}

func (s *suite) nodesPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	st := s.open(t, dir)
	a := fullNode("node-a", "a")
	b := store.Node{ID: "node-b", Name: "b", Embedded: true}
	steps := []error{
		st.CreateNode(t.Context(), &a),
		st.CreateNode(t.Context(), &b),
		st.HeartbeatNode(t.Context(), b.ID, at(9), store.NodeCapacity{VCPUs: 1}),
	}
	closeAfterWrites(t, st, steps)
	b.HeartbeatAt = at(9)
	b.Capacity = store.NodeCapacity{VCPUs: 1}
	st = s.openIn(t, dir)
	wantNode(t, st, a)
	wantNode(t, st, b)
}

// SessionUsage sums sessions by node and state, in order, and follows
// updates and removals.
func (s *suite) sessionUsage(t *testing.T) {
	st := s.fresh(t)
	usage := func() []store.SessionUsage {
		t.Helper()
		u, err := st.SessionUsage(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if u := usage(); u == nil || len(u) != 0 {
		t.Fatalf("empty store: %#v, want an empty slice", u)
	}
	for i, x := range []struct {
		node, state string
		mem, cpus   int
	}{
		{"node-b", "running", 512, 2},
		{"node-a", "running", 1024, 1},
		{"node-b", "parked", 256, 4},
		{"node-b", "running", 2048, 8},
		{"", "running", 128, 1},
	} {
		mustCreate(t, st, store.Session{ID: fmt.Sprintf("s-%d", i), Node: x.node, State: x.state, MemoryMiB: x.mem, CPUs: x.cpus})
	}
	want := []store.SessionUsage{
		{Node: "", State: "running", Sessions: 1, MemoryMiB: 128, CPUs: 1},
		{Node: "node-a", State: "running", Sessions: 1, MemoryMiB: 1024, CPUs: 1},
		{Node: "node-b", State: "parked", Sessions: 1, MemoryMiB: 256, CPUs: 4},
		{Node: "node-b", State: "running", Sessions: 2, MemoryMiB: 2560, CPUs: 10},
	}
	if got := usage(); !slices.Equal(got, want) {
		t.Fatalf("usage:\n got %+v\nwant %+v", got, want)
	}
	// One of node-b's running sessions parks, node-a's goes away.
	got, err := st.GetSession(t.Context(), "s-3")
	if err != nil {
		t.Fatal(err)
	}
	got.State = "parked"
	if err := st.UpdateSession(t.Context(), &got); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteSession(t.Context(), "s-1"); err != nil {
		t.Fatal(err)
	}
	want = []store.SessionUsage{
		{Node: "", State: "running", Sessions: 1, MemoryMiB: 128, CPUs: 1},
		{Node: "node-b", State: "parked", Sessions: 2, MemoryMiB: 2304, CPUs: 12},
		{Node: "node-b", State: "running", Sessions: 1, MemoryMiB: 512, CPUs: 2},
	}
	if got := usage(); !slices.Equal(got, want) {
		t.Fatalf("usage after a park and a removal:\n got %+v\nwant %+v", got, want)
	}
}
