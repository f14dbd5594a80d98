package main_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/s3test"
	"github.com/cove-dev/cove/internal/vmtest"
)

// freeAddr is a free port on the bridge's address: a server there is
// reached from the test and from every host of n.
func (n *hostNet) freeAddr() string {
	n.t.Helper()
	ln, err := net.Listen("tcp", n.prefix+".1:0")
	if err != nil {
		n.t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startNodeIn starts 'cove node' on home in network namespace name of
// n, dialing server, with env (and no other COVE_ variable) and args.
// Its cleanup kills it.
func (n *hostNet) startNodeIn(cove, name, home, server string, env []string, args ...string) *nodeProc {
	n.t.Helper()
	return startNodeCmd(n.t, env, append([]string{"nsenter", "--net=/var/run/netns/cv" + n.tag + name, cove, "node", "--server", server, "--home", home}, args...)...)
}

// stop ends node p with sig, waiting for it; SIGKILL also kills the QEMU
// processes of home, as a host's loss does.
func (p *nodeProc) stop(t *testing.T, sig syscall.Signal, home string) {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("cove node did not exit within 30s of %v:\n%s", sig, p.log)
	}
	if sig == syscall.SIGKILL {
		for pid := range vmtest.QEMUProcs(home) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestEndToEndNodeAgents: two 'cove server --node=false' processes over
// one PostgreSQL database and one S3 store, and two 'cove node' processes
// with that store (they run sessions), each in a network namespace of
// its own joined to a bridge by a veth pair, real QEMU. Node A keeps its
// control connection to server 1, node B to server 2; the servers reach
// the nodes' sessions only through those connections.
//   - Create through server 1 (B cordoned) lands on A; exec through
//     server 2 (routed to server 1, relayed over A's link); park and
//     store; A SIGKILLed with its QEMUs: a wake through server 1 is a
//     503 naming A until A is marked dead, then the session is back on
//     B, from S3, memory intact.
//   - A restarted; B drained through server 2: B parks and stores the
//     session and ends empty; an exec through server 1 wakes it on A.
//   - A partitioned (its veth down): it is marked dead, the session
//     lost; woken from its last snapshot on B; the partition heals: A's
//     link comes back and A stops its VM (fencing); the session runs on
//     B alone.
func TestEndToEndNodeAgents(t *testing.T) {
	t.Parallel()
	hn := newHostNet(t)
	hn.host("a")
	hn.host("b")
	s3 := s3test.Shared(t)
	objects := s3.URL("nodeagents-" + randomToken())
	env := append(fleetEnv(t, "t_cove_nodeagents", s3), "COVE_OBJECTS="+objects, "COVE_NODE_GRACE=5s")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	env = append(env, "COVE_SECRET_KEY="+base64.StdEncoding.EncodeToString(key))
	tokenFile := filepath.Join(t.TempDir(), "join.token")
	if err := os.WriteFile(tokenFile, []byte("nodeagents-join-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The nodes reach the store and S3 through the bridge, as the hosts
	// of a fleet would over their network.
	var nodeEnv []string
	for _, kv := range env {
		switch k, v, _ := strings.Cut(kv, "="); k {
		case "COVE_DB":
			p, err := url.Parse(v)
			if err != nil {
				t.Fatal(err)
			}
			nodeEnv = append(nodeEnv, k+"="+strings.Replace(v, p.Host, hn.forward(p.Host), 1))
		case "COVE_OBJECTS":
			nodeEnv = append(nodeEnv, k+"="+strings.Replace(v, s3.Endpoint, hn.forward(s3.Endpoint), 1))
		default:
			nodeEnv = append(nodeEnv, kv)
		}
	}

	s1 := newE2E(t)
	s2 := s1.sibling()
	s1.addr, s2.addr = hn.freeAddr(), hn.freeAddr()
	for _, s := range []*e2e{s1, s2} {
		s.startServer(append(env, "COVE_NODE=false", "COVE_JOIN_TOKEN_FILE="+tokenFile)...)
	}
	homeA, homeB := s1.sibling(), s1.sibling() // the nodes' homes, with the kernel and images
	startNode := func(name string, home *e2e, server *e2e) *nodeProc {
		return hn.startNodeIn(s1.cove, name, home.home, "http://"+server.addr, nodeEnv,
			"--name", "agent-"+name, "--join-token-file", tokenFile, "--heartbeat", "1s", "--stop-on-exit")
	}
	nodeA, nodeB := startNode("a", homeA, s1), startNode("b", homeB, s2)
	logs := func() string {
		return "node A:\n" + nodeA.log.String() + "\nnode B:\n" + nodeB.log.String() + s1.serverLog() + s2.serverLog()
	}
	ctx := context.Background()
	token := s1.userToken()
	c1, c2 := api.NewClient("http://"+s1.addr, token), api.NewClient("http://"+s2.addr, token)
	ids := map[string]string{}
	ready := func(name string, via *e2e) {
		t.Helper()
		waitFor(t, name+" is ready, reached through "+via.addr, logs, func() bool {
			for _, p := range []*nodeProc{nodeA, nodeB} {
				select {
				case <-p.done:
					t.Fatalf("a cove node exited (%v)\n%s", p.err, logs())
				default:
				}
			}
			n, err := c1.GetNode(ctx, name)
			ids[name] = n.ID
			return err == nil && n.State == api.NodeReady && n.URL == "http://"+via.addr
		})
	}
	ready("agent-a", s1)
	ready("agent-b", s2)
	// Each node says it freezes its VMs after half the grace without a
	// heartbeat: the servers never take it for dead before twice that.
	for _, name := range []string{"agent-a", "agent-b"} {
		if n, err := c2.GetNode(ctx, name); err != nil || n.Capacity.FenceAfterMS != 2500 {
			t.Fatalf("node %s: %+v, %v; want fence_after_ms 2500 (--node-grace 5s)", name, n.Capacity, err)
		}
	}

	// 1. Created through server 1 on A, exec through server 2; A dies.
	if _, err := c2.CordonNode(ctx, "agent-b"); err != nil {
		t.Fatal(err)
	}
	s, err := c1.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s.Node != ids["agent-a"] || s.State != api.StateRunning {
		t.Fatalf("create through server 1: %+v, %v; want running on agent-a%s", s, err, logs())
	}
	for _, e := range []*e2e{s1, s2, homeA, homeB} {
		e.seen[s.ID] = true
	}
	res, err := c2.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"echo", "through server 2"}})
	if err != nil || string(res.Stdout) != "through server 2\n" {
		t.Fatalf("exec through server 2: %+v, %v%s", res, err, logs())
	}
	m := newMachine(s2, s.ID)
	if p, err := c2.ParkSession(ctx, s.ID); err != nil || p.State != api.StateParked {
		t.Fatalf("park through server 2: %+v, %v%s", p, err, logs())
	}
	s1.waitStored(s.ID)
	if _, err := c1.UncordonNode(ctx, "agent-b"); err != nil {
		t.Fatal(err)
	}
	nodeA.stop(t, syscall.SIGKILL, homeA.home)
	killed := time.Now()
	refused := wakeWhenDead(t, c1, s.ID, "agent-a", ids["agent-b"])
	t.Logf("%d wakes refused (503 naming agent-a) before it was marked dead; woken on B %v after A's SIGKILL",
		refused, time.Since(killed).Round(time.Millisecond))
	m.wantIntact(s1, "woken on B after A's death")
	if !strings.Contains(nodeB.log.String(), "snapshot restored from the object store") {
		t.Errorf("B did not restore the snapshot from the object store:\n%s", nodeB.log)
	}

	// 2. A back; B drained: it ends empty, and the session, moved to B
	// (whose home is not A's), is stored from there and wakes back on A.
	nodeA = startNode("a", homeA, s1)
	ready("agent-a", s1)
	drained := time.Now()
	out, errOut, code := s2.run(nil, "node", "drain", "agent-b")
	t.Logf("cove node drain agent-b (one session parked and stored, relayed over B's link): %v", time.Since(drained).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("cove node drain agent-b through server 2: exit %d: %s%s%s", code, out, errOut, logs())
	}
	got, err := c1.GetSession(ctx, s.ID)
	if err != nil || got.State != api.StateParked || !got.Stored {
		t.Fatalf("after B's drain: %+v, %v; want parked and stored", got, err)
	}
	if n := len(qemuOf(homeB.home, s.ID)); n != 0 {
		t.Errorf("B runs %d VMs of %s after its drain, want none", n, s.ID)
	}
	m.wantIntact(s1, "woken by an exec through server 1 after B's drain")
	if got, err := c2.GetSession(ctx, s.ID); err != nil || got.Node != ids["agent-a"] {
		t.Fatalf("after the exec: %+v, %v; want it on agent-a", got, err)
	}
	// Each move rested the restored disk on the image under the home of
	// the node it moved to.
	for name, p := range map[string]*nodeProc{"B": nodeB, "A": nodeA} {
		if !strings.Contains(p.log.String(), "disk made on another node rests on this node's file now") {
			t.Errorf("node %s did not rest the moved session's disk on its own image:\n%s", name, p.log)
		}
	}
	if _, err := c1.UncordonNode(ctx, "agent-b"); err != nil {
		t.Fatal(err)
	}

	// 3. A partitioned: marked dead, the session lost, brought back on B
	// from its last snapshot (the drain's); healed, A fences its VM.
	hn.cut("a", false)
	waitFor(t, "the session on partitioned A is lost", logs, func() bool {
		got, err := c2.GetSession(ctx, s.ID)
		if err != nil && !api.IsCode(err, api.CodeUnavailable) {
			t.Fatalf("inspect during the partition: %v; want the session or 503", err)
		}
		return err == nil && got.State == api.StateLost
	})
	w, err := c2.WakeSessionFromLastSnapshot(ctx, s.ID)
	if err != nil || w.Node != ids["agent-b"] || w.State != api.StateRunning {
		t.Fatalf("wake --from-last-snapshot through server 2: %+v, %v%s", w, err, logs())
	}
	m.wantIntact(s2, "back from its last snapshot on B")
	hn.cut("a", true)
	healed := time.Now()
	waitFor(t, "A reconnects and stops its VM of "+s.ID, logs, func() bool {
		n, err := c1.GetNode(ctx, "agent-a")
		return err == nil && n.State == api.NodeReady && len(qemuOf(homeA.home, s.ID)) == 0
	})
	t.Logf("the partition healed: A ready and its VM of the session stopped %v later", time.Since(healed).Round(time.Millisecond))
	if n := len(qemuOf(homeB.home, s.ID)); n != 1 {
		t.Errorf("B runs %d VMs of %s, want 1", n, s.ID)
	}
	m.wantIntact(s1, "after the partition healed, probed through server 1")
	if err := c1.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	nodeA.stop(t, syscall.SIGTERM, homeA.home)
	nodeB.stop(t, syscall.SIGTERM, homeB.home)
	for _, e := range []*e2e{s1, s2} {
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Errorf("server stop: %v", err)
		}
	}
}
