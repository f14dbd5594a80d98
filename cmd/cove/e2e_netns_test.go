package main_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/s3test"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmtest"
)

// hostNet is a bridge on this machine with one network namespace per
// host, each joined to it by a veth pair: hosts that reach each other,
// and this test, only through the bridge. Made by newHostNet, removed at
// cleanup.
type hostNet struct {
	t      *testing.T
	bridge string
	prefix string // the first three octets: "10.201.7"
	tag    string
	hosts  map[string]int // namespace → last octet
}

// ip runs the ip command, failing the test on an error.
func (n *hostNet) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newHostNet(t *testing.T) *hostNet {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "network namespaces need root")
	}
	for _, cmd := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(cmd); err != nil {
			testenv.Skipf(t, "no %s command (iproute2, util-linux): %v", cmd, err)
		}
	}
	var tag, prefix string
	for {
		tag = randomToken()[:6]
		prefix = fmt.Sprintf("10.%d.%d", 200+int(tag[0])%50, int(tag[1])+int(tag[2]))
		if takePrefix(prefix) {
			break
		}
	}
	t.Cleanup(func() { releasePrefix(prefix) })
	n := &hostNet{t: t, bridge: "cvbr" + tag, tag: tag, hosts: map[string]int{}, prefix: prefix}
	n.ip("link", "add", n.bridge, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", n.bridge).Run() })
	n.ip("addr", "add", n.prefix+".1/24", "dev", n.bridge)
	n.ip("link", "set", n.bridge, "up")
	return n
}

// prefixes are the /24s of the hostNets of this process: tests that make
// one run at once, and two bridges on one subnet would take each other's
// routes.
var prefixes = struct {
	sync.Mutex
	taken map[string]bool
}{taken: map[string]bool{}}

// takePrefix claims prefix (the first three octets) for a bridge, unless
// this process holds it or an address of this host is in it already.
func takePrefix(prefix string) bool {
	prefixes.Lock()
	defer prefixes.Unlock()
	if prefixes.taken[prefix] {
		return false
	}
	// Where ip cannot tell, the prefix is left to chance, as it was.
	if out, _ := exec.Command("ip", "-o", "addr", "show", "to", prefix+".0/24").Output(); len(bytes.TrimSpace(out)) != 0 {
		return false
	}
	prefixes.taken[prefix] = true
	return true
}

func releasePrefix(prefix string) {
	prefixes.Lock()
	defer prefixes.Unlock()
	delete(prefixes.taken, prefix)
}

// host makes namespace name, joined to the bridge at the next address,
// and returns its address.
func (n *hostNet) host(name string) string {
	n.t.Helper()
	octet := len(n.hosts) + 2
	ns := "cv" + n.tag + name
	n.hosts[ns] = octet
	n.ip("netns", "add", ns)
	n.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	out, in := n.veth(ns), "eth0"
	n.ip("link", "add", out, "type", "veth", "peer", "name", in, "netns", ns)
	n.t.Cleanup(func() { _ = exec.Command("ip", "link", "del", out).Run() })
	n.ip("link", "set", out, "master", n.bridge)
	n.ip("link", "set", out, "up")
	n.ip("-n", ns, "link", "set", "lo", "up")
	n.ip("-n", ns, "addr", "add", fmt.Sprintf("%s.%d/24", n.prefix, octet), "dev", in)
	n.ip("-n", ns, "link", "set", in, "up")
	return fmt.Sprintf("%s.%d", n.prefix, octet)
}

// veth is the bridge's end of namespace ns's veth pair.
func (n *hostNet) veth(ns string) string { return fmt.Sprintf("cv%s%d", n.tag, n.hosts[ns]) }

// cut takes namespace name's link to the bridge down (up with heal).
func (n *hostNet) cut(name string, heal bool) {
	n.t.Helper()
	state := "down"
	if heal {
		state = "up"
	}
	n.ip("link", "set", n.veth("cv"+n.tag+name), state)
}

// forward relays TCP connections to the bridge's address (a port of its
// own) to target, a loopback address of this namespace, for the life of
// the test: the hosts reach PostgreSQL and S3 through it.
func (n *hostNet) forward(target string) string {
	n.t.Helper()
	ln, err := net.Listen("tcp", n.prefix+".1:0")
	if err != nil {
		n.t.Fatal(err)
	}
	var wg sync.WaitGroup
	n.t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// startIn starts 'cove server' for e in network namespace name of n,
// listening on e.addr, and waits for /healthz.
func (e *e2e) startIn(n *hostNet, name string, env ...string) {
	t := e.t
	t.Helper()
	s := &server{log: &lockedBuffer{}, done: make(chan struct{})}
	// nsenter enters the network namespace alone (ip netns exec would
	// also mount a sysfs of its own, without the cgroup hierarchies).
	s.cmd = exec.Command("nsenter", "--net=/var/run/netns/cv"+n.tag+name, e.cove, "server", "--listen", e.addr, "--home", e.home, "--build-images", "tiny")
	s.cmd.Env = append(append(os.Environ(), "COVE_HOME="+e.home), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	e.srv = s
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-s.done:
			t.Fatalf("cove server in %s exited during start (%v):\n%s", name, s.err, s.log)
		default:
		}
		resp, err := http.Get("http://" + e.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cove server in %s not healthy after 2 minutes:\n%s", name, s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEndToEndRoutingNetns: two 'cove server' processes with embedded
// nodes, each in a network namespace of its own joined to a bridge by a
// veth pair (two hosts), over one PostgreSQL and one S3 store that they
// reach through the bridge, real QEMU:
//   - a session created through B is placed on A (B cordoned) and runs
//     there; exec and its memory through B;
//   - parked and stored, then A SIGKILLed: the wake through B is 503
//     naming A until A is marked dead, then the session comes back on B
//     from S3, memory intact;
//   - A restarted; a session running on A, with a stored snapshot, when
//     A's link is taken down (a partition): A is marked dead, the session
//     lost; brought back on B from its last snapshot; once the link is up
//     again A stops its VM (fencing): the session runs on B alone.
func TestEndToEndRoutingNetns(t *testing.T) {
	t.Parallel()
	hn := newHostNet(t)
	ipA, ipB := hn.host("a"), hn.host("b")
	pg := pgtest.Fresh(t)
	db, err := pg.CreateDatabase(t.Context(), "t_cove_netns")
	if err != nil {
		t.Fatal(err)
	}
	pgURL := strings.Replace(pg.URL(db), fmt.Sprintf("127.0.0.1:%d", pg.Port), hn.forward(fmt.Sprintf("127.0.0.1:%d", pg.Port)), 1)
	s3 := s3test.Shared(t)
	objects := strings.Replace(s3.URL("netns-"+randomToken()), s3.Endpoint, hn.forward(s3.Endpoint), 1)
	env := []string{"COVE_DB=" + pgURL, "COVE_OBJECTS=" + objects,
		"COVE_NODE_HEARTBEAT=1s", "COVE_NODE_GRACE=5s", "COVE_SPARES=0", "COVE_CLONE_FILES=0"}
	for k, v := range s3.Env() {
		env = append(env, k+"="+v)
	}
	a := newE2E(t)
	b := a.sibling()
	a.addr, b.addr = ipA+":7070", ipB+":7070"
	a.startIn(hn, "a", append(env, "COVE_NODE_NAME=netns-a")...)
	b.startIn(hn, "b", append(env, "COVE_NODE_NAME=netns-b")...)
	ctx := context.Background()
	token := b.userToken()
	ca, cb := api.NewClient("http://"+a.addr, token), api.NewClient("http://"+b.addr, token)
	nodes, err := cb.ListNodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes: %+v, %v", nodes, err)
	}
	id := map[string]string{}
	for _, n := range nodes {
		id[n.Name] = n.ID
	}
	if _, err := cb.CordonNode(ctx, "netns-b"); err != nil {
		t.Fatal(err)
	}

	// Placed on A through B; exec and memory through B.
	s, err := cb.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s.Node != id["netns-a"] {
		t.Fatalf("create through B: %+v, %v; want it on netns-a%s", s, err, a.serverLog())
	}
	a.seen[s.ID], b.seen[s.ID] = true, true
	m := newMachine(b, s.ID)
	if _, err := cb.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	b.waitStored(s.ID)
	if _, err := cb.UncordonNode(ctx, "netns-b"); err != nil {
		t.Fatal(err)
	}
	if err := a.stopServer(syscall.SIGKILL); err == nil {
		t.Fatal("a SIGKILLed server exited cleanly")
	}
	refused := wakeWhenDead(t, cb, s.ID, "netns-a", id["netns-b"])
	t.Logf("%d wakes refused (503 naming netns-a) before it was marked dead", refused)
	m.wantIntact(b, "woken on B after A's death")
	if err := cb.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}

	// A comes back; a session runs on A with a stored snapshot.
	a.startIn(hn, "a", append(env, "COVE_NODE_NAME=netns-a")...)
	if _, err := cb.CordonNode(ctx, "netns-b"); err != nil {
		t.Fatal(err)
	}
	s2, err := cb.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil || s2.Node != id["netns-a"] {
		t.Fatalf("create after A's restart: %+v, %v; want it on netns-a", s2, err)
	}
	a.seen[s2.ID], b.seen[s2.ID] = true, true
	m2 := newMachine(b, s2.ID)
	if _, err := cb.ParkSession(ctx, s2.ID); err != nil {
		t.Fatal(err)
	}
	b.waitStored(s2.ID)
	if _, err := cb.WakeSession(ctx, s2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.UncordonNode(ctx, "netns-b"); err != nil {
		t.Fatal(err)
	}

	// The partition: A's link down. A is marked dead, the session lost.
	hn.cut("a", false)
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := cb.GetSession(ctx, s2.ID)
		if err == nil && got.State == api.StateLost {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session on the partitioned node not lost within a minute: %+v, %v%s", got, err, b.serverLog())
		}
		time.Sleep(250 * time.Millisecond)
	}
	w, err := cb.WakeSessionFromLastSnapshot(ctx, s2.ID)
	if err != nil || w.Node != id["netns-b"] || w.State != api.StateRunning {
		t.Fatalf("wake --from-last-snapshot through B: %+v, %v%s", w, err, b.serverLog())
	}
	m2.wantIntact(b, "back from its last snapshot on B") // nothing ran since the snapshot

	// The partition heals: A's next heartbeat fences its VM of the
	// session; it runs on B alone.
	hn.cut("a", true)
	// Bounded by TCP: A's connections resume at their next retransmission
	// (or fail after the store's 30 s and are made afresh).
	deadline = time.Now().Add(2 * time.Minute)
	for len(qemuOf(a.home, s2.ID)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("A still runs a VM of %s two minutes after the partition healed%s", s2.ID, a.serverLog())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if len(qemuOf(b.home, s2.ID)) != 1 {
		t.Errorf("B runs %d VMs of %s, want 1", len(qemuOf(b.home, s2.ID)), s2.ID)
	}
	m2.wantIntact(a, "after the partition healed, probed through A")
	if err := ca.DeleteSession(ctx, s2.ID); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*e2e{a, b} {
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Errorf("server stop: %v", err)
		}
	}
}

// wakeWhenDead wakes session id through c until it runs, each refusal a
// 503 naming node dead (its server gone), and checks that it woke on
// node want; it returns the refusals.
func wakeWhenDead(t *testing.T, c *api.Client, id, dead, want string) int {
	t.Helper()
	refused := 0
	deadline := time.Now().Add(2 * time.Minute)
	for {
		w, err := c.WakeSession(context.Background(), id)
		if err == nil {
			if w.Node != want || w.State != api.StateRunning {
				t.Fatalf("wake after %s's death: %+v; want running on %s", dead, w, want)
			}
			return refused
		}
		if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), dead) {
			t.Fatalf("wake while %s is down: %v; want 503 naming it", dead, err)
		}
		refused++
		if time.Now().After(deadline) {
			t.Fatalf("no wake within 2 minutes of %s's death: %v", dead, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// qemuOf lists the QEMU processes of session id in home's sessions dir
// (another home's QEMU may name this home's kernel).
func qemuOf(home, id string) []string {
	var out []string
	for _, cmd := range vmtest.QEMUProcs(home) {
		if strings.Contains(cmd, filepath.Join(home, "sessions", id)+"/") {
			out = append(out, cmd)
		}
	}
	return out
}
