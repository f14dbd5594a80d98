package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"

	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/fake"
	"github.com/cove-dev/cove/internal/vmm/remote"
)

// nodelinkRows measures what a node's control connection adds to a call
// from the server to the node: n round trips of a small GET through
// nodelink (a new yamux stream over the node's WebSocket, one HTTP/1.1
// exchange on it) against n straight to the same handler over loopback
// HTTP with keep-alive, alternated. In-process, real sockets, no VM.
func nodelinkRows(n int) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("nodelink: %d samples", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "covebench-nodelink-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()

	const token = "covebench-join-token"
	hub := nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: token})
	defer hub.Close()
	srvLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = http.Serve(srvLn, hub) }()
	defer srvLn.Close()

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"ok":true}`)
	})
	// The node serves also a driver (the in-process fake: the calls'
	// cost, not a VMM's, is measured).
	fd := fake.New()
	nodeMux := http.NewServeMux()
	nodeMux.Handle(nodelink.InfoPath, handler)
	nodeMux.Handle(remote.Prefix, remote.Handler(fd, remote.HandlerConfig{}))
	directLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = http.Serve(directLn, handler) }()
	defer directLn.Close()

	agent := nodelink.NewAgent(nodelink.AgentConfig{Server: "http://" + srvLn.Addr().String(), JoinToken: token,
		Name: "bench", Home: dir, Heartbeat: time.Minute, Handler: nodeMux,
		Probe: func(context.Context) (store.NodeCapacity, error) { return store.NodeCapacity{VCPUs: 1}, nil }})
	go func() { _ = agent.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for agent.NodeID() == "" || !hub.Connected(agent.NodeID()) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nodelink: the node did not connect in 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	via, direct := hub.Client(agent.NodeID()), &http.Client{}
	call := func(c *http.Client, url string) (float64, error) {
		t := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return ms(time.Since(t)), err
	}
	linked := row{name: "server → node call through the control connection (yamux stream over WebSocket), round trip", unit: "ms"}
	plain := row{name: "the same call, direct loopback HTTP (keep-alive), round trip", unit: "ms"}
	for i := range n + 20 { // the first 20 of each warm up
		a, err := call(via, "http://node"+nodelink.InfoPath)
		if err != nil {
			return nil, fmt.Errorf("nodelink: via the link: %w", err)
		}
		b, err := call(direct, "http://"+directLn.Addr().String()+nodelink.InfoPath)
		if err != nil {
			return nil, fmt.Errorf("nodelink: direct: %w", err)
		}
		if i >= 20 {
			linked.samples, plain.samples = append(linked.samples, a), append(plain.samples, b)
		}
	}
	added50 := pct(linked.samples, 0.5) - pct(plain.samples, 0.5)
	added95 := pct(linked.samples, 0.95) - pct(plain.samples, 0.95)
	added := row{name: "added by the control connection (p50, p95 differences)",
		cells: []string{fmt.Sprint(n), fmt.Sprintf("%.3f ms", added50), fmt.Sprintf("%.3f ms", added95), "≤ 2 ms at p50", fmt.Sprintf("%.2f", added50/2)}}
	drows, err := remoteDriverRows(ctx, n, fd, remote.New(func(ctx context.Context) (net.Conn, error) { return hub.Dial(ctx, agent.NodeID()) }), dir)
	if err != nil {
		return nil, err
	}
	return append([]row{linked, plain, added}, drows...), nil
}

// remoteDriverRows measures a node's driver called over the link against
// the same driver called in-process: n calls of Disks.Backing (a qcow2
// header read, no VM), and n agent protocol round trips (hello) on a
// DialAgent connection to one fake VM, alternated.
func remoteDriverRows(ctx context.Context, n int, local vmm.Driver, rd *remote.Driver, dir string) ([]row, error) {
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nodelink: qemu-img: %v: %s", err, out)
	}
	rb := row{name: "remote driver call over the link (Disks.Backing), round trip", unit: "ms"}
	lb := row{name: "the same call on the node's driver in-process", unit: "ms"}
	timed := func(fn func() error) (float64, error) {
		t := time.Now()
		err := fn()
		return ms(time.Since(t)), err
	}
	for i := range n + 20 {
		a, err := timed(func() error { _, _, err := rd.Disks().Backing(ctx, disk); return err })
		if err != nil {
			return nil, fmt.Errorf("nodelink: remote Backing: %w", err)
		}
		b, err := timed(func() error { _, _, err := local.Disks().Backing(ctx, disk); return err })
		if err != nil {
			return nil, fmt.Errorf("nodelink: Backing: %w", err)
		}
		if i >= 20 {
			rb.samples, lb.samples = append(rb.samples, a), append(lb.samples, b)
		}
	}

	vmDir := filepath.Join(dir, "vm")
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		return nil, err
	}
	vm, err := rd.Boot(ctx, vmm.Spec{ID: "bench", Dir: vmDir, Kernel: "/fake/vmlinux", Disk: disk, MemoryMiB: 64, CPUs: 1})
	if err != nil {
		return nil, fmt.Errorf("nodelink: remote boot: %w", err)
	}
	defer vm.Stop(context.Background())
	// One connection at a time to a guest's agent: the remote one first,
	// closed, then the in-process one, each timed on its own.
	hellos := func(dial func(context.Context) (net.Conn, error), r *row) error {
		c, _, err := agentproto.Connect(ctx, dial)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range n + 20 {
			a, err := timed(func() error { _, err := c.Hello(ctx); return err })
			if err != nil {
				return err
			}
			if i >= 20 {
				r.samples = append(r.samples, a)
			}
		}
		return nil
	}
	ra := row{name: "guest agent round trip (hello) on a DialAgent connection relayed over the link", unit: "ms"}
	la := row{name: "the same round trip on the node's own DialAgent connection", unit: "ms"}
	if err := hellos(vm.DialAgent, &ra); err != nil {
		return nil, fmt.Errorf("nodelink: agent over the link: %w", err)
	}
	lvm, err := local.Adopt(ctx, vm.Handle())
	if err != nil {
		return nil, fmt.Errorf("nodelink: adopt on the node: %w", err)
	}
	if err := hellos(lvm.DialAgent, &la); err != nil {
		return nil, fmt.Errorf("nodelink: agent in-process: %w", err)
	}
	return []row{rb, lb, ra, la}, nil
}
