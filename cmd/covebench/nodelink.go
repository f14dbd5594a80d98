package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
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
	directLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = http.Serve(directLn, handler) }()
	defer directLn.Close()

	agent := nodelink.NewAgent(nodelink.AgentConfig{Server: "http://" + srvLn.Addr().String(), JoinToken: token,
		Name: "bench", Home: dir, Heartbeat: time.Minute, Handler: handler,
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
	return []row{linked, plain, added}, nil
}
