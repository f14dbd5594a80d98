package apiserver

import (
	"context"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestFakeRoutePoolPerNode: a template with a pool of 2 on two nodes.
// Each node keeps its own pool, full for its first window (no history
// yet), then empty once a window passed without a create from it. A
// clone placed on A grows A's pool to 1 (the peak of creates under way
// at once), and B's stays empty; a window without creates empties A's
// again.
func TestFakeRoutePoolPerNode(t *testing.T) {
	r := newRouteRig(t)
	r.poolWindow = 1500 * time.Millisecond
	a, b := r.server("host-a", true), r.server("host-b", true)
	ctx := context.Background()
	if _, err := a.client.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "py", Pool: 2}); err != nil {
		t.Fatalf("template through A: %v", err)
	}
	t.Cleanup(func() {
		if err := a.mgr.DeleteTemplate(context.Background(), "py"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ready := func(s *routeServer) int {
		t.Helper()
		tp, err := s.mgr.GetTemplate(ctx, "py")
		if err != nil {
			t.Fatal(err)
		}
		return tp.PoolReady
	}
	waitReady := func(what string, s *routeServer, n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for ready(s) != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s's pool has %d ready, want %d", what, s.name, ready(s), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitReady("unused for a window", a, 0)
	waitReady("unused for a window", b, 0)

	r.cordon(b)
	s, err := a.client.CreateSession(ctx, api.CreateSessionRequest{Template: "py"})
	if err != nil || s.Node != a.node {
		t.Fatalf("clone through A: %+v, %v; want it on A", s, err)
	}
	if _, err := b.client.UncordonNode(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	waitReady("after a clone on A", a, 1)
	if n := ready(b); n != 0 {
		t.Errorf("B's pool after a clone on A: %d ready, want 0 (no demand on B)", n)
	}
	a.echo(t, s.ID, "cloned")
	if err := a.client.DeleteSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	waitReady("idle for a window after the clone", a, 0)
}
