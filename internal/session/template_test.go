package session_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestTemplateClones builds a template, restores clones of it and checks
// each has the setup's result and the start command running, its own
// random state, its own disk, and can be parked and woken; a template with
// clones cannot be removed.
func TestTemplateClones(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	tpl, err := r.mgr.CreateTemplate(ctx, api.CreateTemplateRequest{
		Name:  "py",
		Setup: []string{"mkdir -p /work && echo ready > /work/setup", "echo second >> /work/setup"},
		Start: "sleep 100000",
	})
	if err != nil {
		t.Fatal(err)
	}
	if tpl.State != api.TemplateReady || tpl.Snapshot == nil {
		t.Fatalf("template is %s, snapshot %v", tpl.State, tpl.Snapshot)
	}
	_, err = r.mgr.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "py"})
	wantCode(t, "second template with the same name", err, api.CodeConflict)
	_, err = r.mgr.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bad", Setup: []string{"exit 3"}})
	wantCode(t, "template whose setup fails", err, api.CodeInvalid)

	var ids []string
	randoms := map[string]bool{}
	for i := 0; i < 3; i++ {
		start := time.Now()
		s, err := r.mgr.Create(ctx, api.CreateSessionRequest{Template: "py"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("clone %d ready after %s", i, time.Since(start).Round(time.Millisecond))
		ids = append(ids, s.ID)
		if s.Template != "py" {
			t.Fatalf("clone's template is %q", s.Template)
		}
		if got := r.sh(t, s.ID, "cat /work/setup"); got != "ready\nsecond\n" {
			t.Fatalf("clone %d: setup output %q", i, got)
		}
		if got := strings.TrimSpace(r.sh(t, s.ID, "ps | grep -q '[s]leep 100000' && echo running || ps")); got != "running" {
			t.Fatalf("clone %d: start command not running: %s", i, got)
		}
		rnd := strings.TrimSpace(r.sh(t, s.ID, "head -c 16 /dev/urandom | od -An -tx1"))
		if randoms[rnd] {
			t.Fatalf("clone %d reads the same random bytes as another clone: %s", i, rnd)
		}
		randoms[rnd] = true
		r.sh(t, s.ID, "echo "+s.ID+" > /work/me")
	}
	for _, id := range ids {
		if got := strings.TrimSpace(r.sh(t, id, "cat /work/me")); got != id {
			t.Fatalf("clone %s sees %q: disks are shared", id, got)
		}
	}
	// A clone parks and wakes like any session.
	if _, err := r.mgr.Park(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(r.sh(t, ids[0], "cat /work/me")); got != ids[0] {
		t.Fatalf("clone after park/wake: %q", got)
	}
	wantCode(t, "remove a template with clones", r.mgr.DeleteTemplate(ctx, "py"), api.CodeConflict)
	for _, id := range ids {
		if err := r.mgr.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.mgr.DeleteTemplate(ctx, "py"); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Create(ctx, api.CreateSessionRequest{Template: "py"})
	wantCode(t, "clone of a removed template", err, api.CodeNotFound)
}

// TestWarmPool checks a template's pool fills, a create claims a ready
// clone, and the pool refills.
func TestWarmPool(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "warm", Pool: 2}); err != nil {
		t.Fatal(err)
	}
	ready := func(n int) bool {
		tpl, err := r.mgr.GetTemplate(ctx, "warm")
		return err == nil && tpl.PoolReady >= n
	}
	if !waitFor(time.Minute, func() bool { return ready(2) }) {
		t.Fatal("pool did not fill")
	}
	start := time.Now()
	s, err := r.mgr.Create(ctx, api.CreateSessionRequest{Template: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("claimed a pooled clone in %s", time.Since(start))
	if got := strings.TrimSpace(r.sh(t, s.ID, "echo hi")); got != "hi" {
		t.Fatalf("pooled clone: %q", got)
	}
	// The claimed clone's guest requests reach the host under its id (its
	// listen stream opened in the pool): a refused park comes back at once.
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "bad expression"}}, nil)
	if res.status.Code != 1 || !strings.Contains(res.stderr, "^") {
		t.Fatalf("park with a bad expression from a pooled clone: exit %d, stderr %q", res.status.Code, res.stderr)
	}
	if !waitFor(time.Minute, func() bool { return ready(2) }) {
		t.Fatal("pool did not refill")
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.DeleteTemplate(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
}
