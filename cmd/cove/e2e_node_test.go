package main_test

// The node agent end to end: a real 'cove server --join-token-file' and a
// real 'cove node' process with its own home (no VMs are made).

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/nodelink"
)

// nodeProc is a running 'cove node' child process.
type nodeProc struct {
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{} // closed when it exited; err is then set
	err  error
}

// startNode starts 'cove node' against e's server with home and args.
func (e *e2e) startNode(home string, args ...string) *nodeProc {
	e.t.Helper()
	return startNodeCmd(e.t, nil, append([]string{e.cove, "node", "--server", "http://" + e.addr, "--home", home}, args...)...)
}

// startNodeCmd starts argv, a 'cove node' command line, with env and no
// other COVE_ variable. Its cleanup kills it.
func startNodeCmd(t *testing.T, env []string, argv ...string) *nodeProc {
	t.Helper()
	p := &nodeProc{log: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "COVE_") }), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// nodesByName runs 'cove node ls --json', by name.
func (e *e2e) nodesByName() map[string]api.Node {
	e.t.Helper()
	m := map[string]api.Node{}
	for _, n := range e.nodes() {
		m[n.Name] = n
	}
	return m
}

// waitFor polls cond until it holds; a hang fails after two minutes.
func waitFor(t *testing.T, what string, log func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s\n%s", what, log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestNodeAgentEndToEnd(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	if err := os.WriteFile(tokenFile, []byte("e2e-join-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No VM is made: no spare QEMU either, which a SIGKILLed server
	// would leave behind.
	serverEnv := []string{"COVE_JOIN_TOKEN_FILE=" + tokenFile, "COVE_NODE_GRACE=3s", "COVE_NODE_HEARTBEAT=1s", "COVE_SPARES=0"}
	e.startServer(serverEnv...)

	nodeHome := t.TempDir()
	node := e.startNode(nodeHome, "--join-token-file", tokenFile, "--name", "node-b", "--labels", "zone=z1", "--heartbeat", "200ms")
	logs := func() string { return "node log:\n" + node.log.String() + e.serverLog() }

	waitFor(t, "node-b keeps a credential", logs, func() bool {
		_, err := os.Stat(filepath.Join(nodeHome, nodelink.CredentialFile))
		return err == nil
	})
	if !strings.Contains(node.log.String(), "this node takes no sessions") {
		t.Errorf("cove node without a shared store does not say it takes no sessions:\n%s", node.log)
	}
	var joined api.Node
	waitFor(t, "node-b joins and is ready", logs, func() bool {
		joined = e.nodesByName()["node-b"]
		return joined.State == api.NodeReady && joined.Connected
	})
	if joined.Labels["zone"] != "z1" || joined.Capacity.VCPUs == 0 {
		t.Errorf("node-b as listed: %+v; want its label and capacity", joined)
	}
	var inspected api.Node
	if err := json.Unmarshal([]byte(e.ok(nil, "node", "inspect", "node-b")), &inspected); err != nil {
		t.Fatal(err)
	}
	if !inspected.Connected || inspected.Version == "" {
		t.Errorf("cove node inspect node-b: connected %v, version %q; want connected, with the version it was asked over its connection", inspected.Connected, inspected.Version)
	}
	ls := e.ok(nil, "node", "ls")
	if !strings.Contains(ls, "node-b") || !strings.Contains(ls, api.NodeReady) {
		t.Errorf("cove node ls does not show node-b ready:\n%s", ls)
	}
	embedded := false
	for _, n := range e.nodes() {
		if n.Embedded {
			embedded = true
			if !n.Connected || n.State != api.NodeReady {
				t.Errorf("the embedded node as listed: %+v; want ready and connected", n)
			}
		}
	}
	if !embedded {
		t.Errorf("cove node ls lists no embedded node:\n%s", ls)
	}
	if log := e.ok(nil, "audit", "log"); !strings.Contains(log, "node.join") || !strings.Contains(log, "node-b") {
		t.Errorf("the audit log shows no join of node-b:\n%s", log)
	}
	cred, err := os.ReadFile(filepath.Join(nodeHome, nodelink.CredentialFile))
	if err != nil {
		t.Fatal(err)
	}
	if c := strings.TrimSpace(string(cred)); strings.Contains(node.log.String(), c) || strings.Contains(e.serverLog(), c) {
		t.Error("the node's credential is in a log")
	}

	t.Run("ServerKilledAndRestarted", func(t *testing.T) {
		if err := e.stopServer(syscall.SIGKILL); err == nil {
			t.Log("server exited cleanly on SIGKILL?")
		}
		killed := time.Now()
		e.startServer(serverEnv...)
		waitFor(t, "node-b reconnects and heartbeats again", logs, func() bool {
			n := e.nodesByName()["node-b"]
			return n.Connected && n.HeartbeatAt.After(killed)
		})
	})

	t.Run("NodeKilledBecomesDead", func(t *testing.T) {
		_ = node.cmd.Process.Signal(syscall.SIGKILL)
		<-node.done
		waitFor(t, "node-b becomes dead", logs, func() bool {
			n := e.nodesByName()["node-b"]
			return n.State == api.NodeDead && !n.Connected
		})
	})

	t.Run("RemovedNodeStops", func(t *testing.T) {
		again := e.startNode(nodeHome, "--heartbeat", "200ms") // no join token: its credential suffices
		waitFor(t, "node-b comes back", func() string { return again.log.String() + e.serverLog() }, func() bool {
			return e.nodesByName()["node-b"].State == api.NodeReady
		})
		e.ok(nil, "node", "rm", "node-b")
		select {
		case <-again.done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("a removed node runs on:\n%s", again.log.String())
		}
		if again.err == nil || !strings.Contains(again.log.String(), "join it again") {
			t.Errorf("removed node exited with %v; want an error saying to join again:\n%s", again.err, again.log.String())
		}
	})
}
