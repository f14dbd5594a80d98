package main_test

import (
	"encoding/json"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestEndToEndNodes: the embedded node of a real 'cove server', through
// the CLI. One real VM: listed on its node, refused while the node is
// cordoned, parked by a drain; the node keeps its id across a restart.
func TestEndToEndNodes(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer("COVE_NODE_NAME=e2e-node-a")

	nodes := e.nodes()
	if len(nodes) != 1 {
		t.Fatalf("node ls: %+v, want the embedded node", nodes)
	}
	n := nodes[0]
	if n.Name != "e2e-node-a" || n.State != api.NodeReady || !n.Embedded || n.Capacity.VCPUs != runtime.NumCPU() ||
		n.Capacity.MemoryMiB <= 0 || n.Capacity.DiskBytes <= 0 || (n.Capacity.Accel != "tcg" && n.Capacity.Accel != "kvm") ||
		!strings.HasPrefix(n.Capacity.QEMUVersion, "QEMU emulator version") || n.Capacity.KernelVersion == "" {
		t.Fatalf("node ls: %+v, want e2e-node-a ready with this host's capacity", n)
	}
	table := e.ok(nil, "node", "ls")
	for _, want := range []string{"NAME", "HEARTBEAT", "e2e-node-a", n.ID, "ready", n.Capacity.Accel} {
		if !strings.Contains(table, want) {
			t.Errorf("node ls table lacks %q:\n%s", want, table)
		}
	}
	var inspected api.Node
	if err := json.Unmarshal([]byte(e.ok(nil, "node", "inspect", "e2e-node-a")), &inspected); err != nil || inspected.ID != n.ID {
		t.Fatalf("node inspect: %+v, %v; want %s", inspected, err, n.ID)
	}

	// Cordoned: the create is refused, saying why; nothing is made.
	if out := e.ok(nil, "node", "cordon", "e2e-node-a"); !strings.Contains(out, "cordoned") {
		t.Errorf("node cordon printed %q", out)
	}
	out, errOut, code := e.run(nil, "session", "create")
	if code == 0 || !strings.Contains(errOut, "no node fits: e2e-node-a: cordoned") {
		t.Fatalf("create on a cordoned node: exit %d, stdout %q, stderr %q; want a refusal saying why", code, out, errOut)
	}
	if ss := e.sessions(); len(ss) != 0 {
		t.Fatalf("a refused create left sessions: %v", ss)
	}
	e.ok(nil, "node", "uncordon", n.ID)

	id := e.create()
	var s api.Session
	if err := json.Unmarshal([]byte(e.ok(nil, "session", "inspect", id)), &s); err != nil || s.Node != n.ID {
		t.Fatalf("session inspect: node %q (%v), want %s", s.Node, err, n.ID)
	}
	e.ok(nil, "exec", id, "--", "sh", "-c", "echo kept > /tmp/drain")

	// The drain parks the running session; the node is draining.
	if out := e.ok(nil, "node", "drain", "e2e-node-a"); !strings.Contains(out, "parked 1 sessions") {
		t.Errorf("node drain printed %q, want 1 parked", out)
	}
	if got := e.sessions()[id]; got.State != api.StateParked {
		t.Fatalf("after the drain the session is %s, want parked", got.State)
	}
	if got := e.nodes()[0]; got.State != api.NodeDraining || got.Running != 0 || got.Sessions != 1 {
		t.Errorf("drained node: %+v, want draining, 1 session, none running", got)
	}
	out, errOut, code = e.run(nil, "node", "rm", "e2e-node-a")
	if code == 0 || !strings.Contains(errOut, "holds 1 sessions") {
		t.Errorf("node rm of a node holding a session: exit %d, %q %q; want refused", code, out, errOut)
	}

	// A restart keeps the node, its id and its admin state.
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v", err)
	}
	e.startServer("COVE_NODE_NAME=e2e-node-a")
	if got := e.nodes(); len(got) != 1 || got[0].ID != n.ID || got[0].State != api.NodeDraining {
		t.Fatalf("after a restart: %+v, want the same node %s, draining", got, n.ID)
	}
	e.ok(nil, "node", "uncordon", "e2e-node-a")
	if got := e.ok(nil, "exec", id, "--", "cat", "/tmp/drain"); got != "kept\n" {
		t.Errorf("woken after the drain: /tmp/drain = %q, want kept", got)
	}
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v", err)
	}
}

// nodes runs 'cove node ls --json'.
func (e *e2e) nodes() []api.Node {
	e.t.Helper()
	var ns []api.Node
	out := e.ok(nil, "node", "ls", "--json")
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		e.t.Fatalf("node ls --json: %v: %q", err, out)
	}
	return ns
}
