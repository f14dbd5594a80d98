package main_test

import (
	"context"
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

// sibling is another cove home beside e's, with e's binaries, kernel and
// images: a second server process of the same test.
func (e *e2e) sibling() *e2e {
	t := e.t
	t.Helper()
	home := vmtest.Dir(t)
	for _, d := range []string{"kernels", "images"} {
		if err := os.Symlink(filepath.Join(vmtest.CacheDir(), d), filepath.Join(home, d)); err != nil {
			t.Fatal(err)
		}
	}
	s := &e2e{t: t, cove: e.cove, home: home, addr: freeAddr(t), config: t.TempDir(), seen: map[string]bool{}}
	t.Cleanup(func() {
		s.stopServer(syscall.SIGKILL)
		for pid, cmd := range vmtest.QEMUProcs(home) {
			t.Errorf("cleanup: killing QEMU %d left running: %.160s", pid, cmd)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return s
}

// TestEndToEndRouting: three real 'cove server' processes over one
// PostgreSQL database and one S3 store: A and B with their embedded nodes
// (real QEMU), C with --node=false. Any server answers any call, carried
// out by the server whose node holds the session: a create through C
// (A cordoned) lands on B; exec through each server; a park through A
// and a wake through C. Then B is SIGKILLed with the session parked and
// stored: a wake through C is a 503 naming B until B is marked dead,
// then comes back on A, from the S3 store into A's home, with its memory
// and processes intact.
func TestEndToEndRouting(t *testing.T) {
	t.Parallel()
	s3 := s3test.Shared(t)
	env := append(fleetEnv(t, "t_cove_route", s3), "COVE_OBJECTS="+s3.URL("route-"+randomToken()),
		"COVE_NODE_HEARTBEAT=1s", "COVE_NODE_GRACE=5s")
	a := newE2E(t)
	b, c := a.sibling(), a.sibling()
	a.startServer(append(env, "COVE_NODE_NAME=route-a")...)
	b.startServer(append(env, "COVE_NODE_NAME=route-b")...)
	c.startServer(append(env, "COVE_NODE=false")...)
	ctx := context.Background()
	token := c.userToken()
	client := func(e *e2e) *api.Client { return api.NewClient("http://"+e.addr, token) }
	ca, cb, cc := client(a), client(b), client(c)

	nodes, err := cc.ListNodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes through C: %+v, %v; want route-a and route-b", nodes, err)
	}
	byName := map[string]api.Node{}
	for _, n := range nodes {
		byName[n.Name] = n
		if n.URL == "" {
			t.Errorf("node %s advertises no URL", n.Name)
		}
	}
	if byName["route-a"].URL != "http://"+a.addr || byName["route-b"].URL != "http://"+b.addr {
		t.Errorf("advertised URLs: %+v; want A at %s, B at %s", nodes, a.addr, b.addr)
	}
	if _, err := ca.CordonNode(ctx, "route-a"); err != nil {
		t.Fatal(err)
	}

	s, err := cc.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		t.Fatalf("create through C: %v%s", err, c.serverLog())
	}
	if s.Node != byName["route-b"].ID || s.State != api.StateRunning {
		t.Fatalf("create through C with A cordoned: %+v; want running on route-b", s)
	}
	for _, e := range []*e2e{a, b, c} {
		e.seen[s.ID] = true
		res, err := client(e).Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"echo", "through " + e.addr}})
		if err != nil || string(res.Stdout) != "through "+e.addr+"\n" {
			t.Fatalf("exec through %s: %+v, %v", e.addr, res, err)
		}
	}
	m := newMachine(c, s.ID) // through the API server

	if p, err := ca.ParkSession(ctx, s.ID); err != nil || p.State != api.StateParked {
		t.Fatalf("park through A: %+v, %v", p, err)
	}
	if w, err := cc.WakeSession(ctx, s.ID); err != nil || w.State != api.StateRunning || w.Node != byName["route-b"].ID {
		t.Fatalf("wake through C: %+v, %v; want running on route-b", w, err)
	}
	m.wantIntact(a, "woken on B through C, probed through A")

	// Parked and stored, then B dies with its server.
	if _, err := cb.ParkSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	c.waitStored(s.ID)
	if _, err := ca.UncordonNode(ctx, "route-a"); err != nil {
		t.Fatal(err)
	}
	if err := b.stopServer(syscall.SIGKILL); err == nil {
		t.Fatal("a SIGKILLed server exited cleanly")
	}
	var refusals int
	deadline := time.Now().Add(2 * time.Minute)
	for {
		w, err := cc.WakeSession(ctx, s.ID)
		if err == nil {
			if w.Node != byName["route-a"].ID || w.State != api.StateRunning {
				t.Fatalf("wake through C after B's death: %+v; want running on route-a", w)
			}
			break
		}
		if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "route-b") {
			t.Fatalf("wake through C while B is down: %v; want 503 naming route-b%s%s", err, c.serverLog(), a.serverLog())
		}
		refusals++
		if time.Now().After(deadline) {
			t.Fatalf("no wake within 2 minutes of B's death: %v%s", err, a.serverLog())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d wakes refused (503 naming route-b) before B was marked dead", refusals)
	if !strings.Contains(a.srv.log.String(), "snapshot restored from the object store") {
		t.Errorf("A did not restore the snapshot from the object store:%s", a.serverLog())
	}
	m.wantIntact(c, "woken on A after B's death")

	if err := cc.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*e2e{c, a} {
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Errorf("server stop: %v", err)
		}
	}
}
