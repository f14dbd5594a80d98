package main_test

import (
	"context"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/s3test"
)

// TestEndToEndNoSilentRollback: two real 'cove server' processes with
// their nodes over one PostgreSQL database and one S3 store, A reaching
// S3 through a proxy the test can cut. A session on A is parked and
// stored (v1), woken, its memory changed, and parked again with A's S3
// cut off (v2 is on A only); then A is SIGKILLed. Once A is dead, a wake
// through B is a 503 saying that the latest snapshot is on dead A only
// and how to go back to the last stored one; the session stays parked.
// 'cove wake --from-last-snapshot' through B brings v1 back on B, memory
// and processes as they were at v1.
func TestEndToEndNoSilentRollback(t *testing.T) {
	t.Parallel()
	s3 := s3test.Shared(t)
	proxy := startProxy(t, s3.Endpoint)
	prefix := "rollback-" + randomToken()
	env := append(fleetEnv(t, "t_cove_rollback", s3), "COVE_NODE_HEARTBEAT=1s", "COVE_NODE_GRACE=5s")
	a := newE2E(t)
	b := a.sibling()
	a.startServer(append(env, "COVE_NODE_NAME=rb-a", "COVE_OBJECTS="+strings.Replace(s3.URL(prefix), s3.Endpoint, proxy.addr, 1))...)
	b.startServer(append(env, "COVE_NODE_NAME=rb-b", "COVE_OBJECTS="+s3.URL(prefix))...)
	ctx := context.Background()
	token := b.userToken()
	ca, cb := api.NewClient("http://"+a.addr, token), api.NewClient("http://"+b.addr, token)
	if _, err := cb.CordonNode(ctx, "rb-b"); err != nil {
		t.Fatal(err)
	}
	s, err := ca.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("create through A: %v%s", err, a.serverLog())
	}
	a.seen[s.ID], b.seen[s.ID] = true, true
	m := newMachine(a, s.ID) // v1's memory
	a.ok(nil, "park", s.ID)
	a.waitStored(s.ID)
	m.wantIntact(a, "woken on A from v1")
	a.ok(nil, "exec", s.ID, "--", "sh", "-c", "head -c 1048576 /dev/urandom > /dev/shm/blob")

	proxy.cut()
	a.ok(nil, "park", s.ID)
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(a.srv.log.String(), "snapshot upload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("A's upload of v2 did not fail with S3 cut off%s", a.serverLog())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := cb.UncordonNode(ctx, "rb-b"); err != nil {
		t.Fatal(err)
	}
	if err := a.stopServer(syscall.SIGKILL); err == nil {
		t.Fatal("a SIGKILLed server exited cleanly")
	}
	for {
		_, err := cb.WakeSession(ctx, s.ID)
		if err == nil {
			t.Fatalf("a wake through B restored the session although its latest snapshot is on dead A only%s", b.serverLog())
		}
		if !api.IsCode(err, api.CodeUnavailable) {
			t.Fatalf("wake through B after A's death: %v; want a 503%s", err, b.serverLog())
		}
		if strings.Contains(err.Error(), "latest snapshot") {
			if !strings.Contains(err.Error(), "rb-a") || !strings.Contains(err.Error(), "--from-last-snapshot") {
				t.Fatalf("wake through B once A is dead: %v; want it to name rb-a and --from-last-snapshot", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A not marked dead within 2 minutes: %v%s", err, b.serverLog())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got, err := cb.GetSession(ctx, s.ID); err != nil || got.State != api.StateParked {
		t.Fatalf("after the refused wake: %+v, %v; want it parked", got, err)
	}
	b.ok(nil, "wake", "--from-last-snapshot", s.ID)
	nodeB, err := cb.GetNode(ctx, "rb-b")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cb.GetSession(ctx, s.ID); err != nil || got.State != api.StateRunning || got.Node != nodeB.ID {
		t.Fatalf("after wake --from-last-snapshot through B: %+v, %v; want it running on rb-b", got, err)
	}
	m.wantIntact(b, "back at v1 on B")
	if err := cb.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.stopServer(syscall.SIGTERM); err != nil {
		t.Errorf("server stop: %v", err)
	}
}

// tcpProxy forwards the connections it accepts to a target until cut.
type tcpProxy struct {
	addr  string // host:port it listens on
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn // guarded by mu
}

// startProxy starts a TCP proxy to target (host:port), cut at cleanup.
func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{addr: ln.Addr().String(), ln: ln}
	t.Cleanup(p.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

// cut closes the listener and every connection: the target is
// unreachable through the proxy from then on (connections refused).
func (p *tcpProxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// TestEndToEndServerKilledMidCreate: real 'cove server' processes: A with
// its node (real QEMU), C with --node=false, over one PostgreSQL
// database. A create through C, forwarded to A, while A boots its VM: C
// is SIGKILLed. The client's call fails; A gives the create up (its caller
// gone) and keeps nothing of it, no record and no QEMU; the client's
// retry through A makes the one session.
func TestEndToEndServerKilledMidCreate(t *testing.T) {
	t.Parallel()
	env := fleetEnv(t, "t_cove_midcreate", nil)
	a := newE2E(t)
	c := a.sibling()
	a.startServer(append(env, "COVE_NODE_NAME=mid-a")...)
	c.startServer(append(env, "COVE_NODE=false")...)
	ctx := context.Background()
	token := a.userToken()
	ca, cc := api.NewClient("http://"+a.addr, token), api.NewClient("http://"+c.addr, token)
	failed := make(chan error, 1)
	go func() {
		_, err := cc.CreateSession(ctx, api.CreateSessionRequest{})
		failed <- err
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(a.srv.log.String(), "creating session") {
		if time.Now().After(deadline) {
			t.Fatalf("the create through C did not reach A%s%s", c.serverLog(), a.serverLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.stopServer(syscall.SIGKILL); err == nil {
		t.Fatal("a SIGKILLed server exited cleanly")
	}
	if err := <-failed; err == nil {
		t.Fatal("the create through C answered although C died mid-call")
	}
	for !strings.Contains(a.srv.log.String(), "create given up") {
		if time.Now().After(deadline) {
			t.Fatalf("A did not give the create up once C died%s", a.serverLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s, err := ca.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("the retry through A: %v%s", err, a.serverLog())
	}
	a.seen[s.ID] = true
	all, err := ca.ListSessions(ctx)
	if err != nil || len(all) != 1 || all[0].ID != s.ID {
		t.Fatalf("sessions after the retry: %+v, %v; want the retry's alone", all, err)
	}
	if out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+a.home).Output(); strings.Count(string(out), "\n") != 1 {
		t.Errorf("QEMU processes of A after the retry: %q; want the retry's alone", out)
	}
	if err := ca.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.stopServer(syscall.SIGTERM); err != nil {
		t.Errorf("server stop: %v", err)
	}
}
