package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// testOwner owns what the tests create when whose it is does not matter.
const testOwner = "u_tester"

// wantOwned fails the test unless session id is owner's, with agent, in
// what the manager answers and in the store's record.
func (r *fakeRig) wantOwned(id, owner, agent string) {
	r.t.Helper()
	if s := r.get(id); s.Owner != owner || s.Agent != agent {
		r.t.Errorf("session %s: owner %q, agent %q; want %q, %q", id, s.Owner, s.Agent, owner, agent)
	}
	rec, err := r.store.GetSession(context.Background(), id)
	if err != nil || rec.Owner != owner || rec.Agent != agent {
		r.t.Errorf("session %s's record: owner %q, agent %q (%v); want %q, %q", id, rec.Owner, rec.Agent, err, owner, agent)
	}
}

// TestFakeOwnerAndAgent protects ownership: a session records the owner
// its creator passed and its own agent; a clone, from the warm pool or
// restored, is its creator's with its own agent, never its template's;
// park, wake, an event's wake, a restart and a template's rebuild keep
// them; a malformed agent name is refused and creates nothing.
func TestFakeOwnerAndAgent(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	tp, err := r.mgr.CreateTemplate(ctx, "u_alice", api.CreateTemplateRequest{Name: "web", Pool: 1, Agent: "builder"})
	if err != nil {
		t.Fatal(err)
	}
	if tp.Owner != "u_alice" || tp.Agent != "builder" {
		t.Errorf("template: owner %q, agent %q; want u_alice, builder", tp.Owner, tp.Agent)
	}
	r.eventually("the pool fills", func() bool {
		tp, err := r.mgr.GetTemplate(ctx, "web")
		return err == nil && tp.PoolReady == 1
	})

	pooled, err := r.mgr.Create(ctx, "u_bob", api.CreateSessionRequest{Template: "web", Agent: "review-bot"})
	if err != nil {
		t.Fatal(err)
	}
	restored, err := r.mgr.Create(ctx, "u_carol", api.CreateSessionRequest{Template: "web"})
	if err != nil {
		t.Fatal(err)
	}
	booted, err := r.mgr.Create(ctx, store.OwnerAdmin, api.CreateSessionRequest{Agent: "ops.bot_2"})
	if err != nil {
		t.Fatal(err)
	}
	if pooled.Owner != "u_bob" || pooled.Agent != "review-bot" || pooled.Template != "web" {
		t.Errorf("clone from the pool: %+v; want u_bob's, agent review-bot, from web", pooled)
	}
	r.wantOwned(pooled.ID, "u_bob", "review-bot")
	r.wantOwned(restored.ID, "u_carol", "")
	r.wantOwned(booted.ID, store.OwnerAdmin, "ops.bot_2")

	r.park(pooled.ID)
	r.wantOwned(pooled.ID, "u_bob", "review-bot")
	if _, err := r.mgr.Wake(ctx, pooled.ID); err != nil {
		t.Fatal(err)
	}
	r.wantOwned(pooled.ID, "u_bob", "review-bot")

	// Woken by an event, a session still acts for its owner.
	if _, err := r.mgr.ParkUntil(ctx, restored.ID, []string{"deploys:done"}, 0); err != nil {
		t.Fatal(err)
	}
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := r.mgr.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	r.eventually("the event wakes the session", func() bool { return r.get(restored.ID).State == api.StateRunning })
	r.wantOwned(restored.ID, "u_carol", "")

	if _, err := r.mgr.RebuildTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the rebuild finishes", func() bool {
		tp, err := r.mgr.GetTemplate(ctx, "web")
		return err == nil && tp.Version == 2 && !tp.Rebuilding
	})
	r.restart()
	if tp, err := r.mgr.GetTemplate(ctx, "web"); err != nil || tp.Owner != "u_alice" || tp.Agent != "builder" {
		t.Errorf("template after a rebuild and a restart: %+v, %v; want u_alice's, agent builder", tp, err)
	}
	r.wantOwned(pooled.ID, "u_bob", "review-bot")
	r.wantOwned(booted.ID, store.OwnerAdmin, "ops.bot_2")

	// A malformed agent name is refused before anything is made.
	before, err := r.mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"Review Bot", "-x", "a/b", string(make([]byte, 65))} {
		if _, err := r.mgr.Create(ctx, "u_bob", api.CreateSessionRequest{Agent: bad}); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("create with agent %q: %v, want invalid_argument", bad, err)
		}
		if _, err := r.mgr.Create(ctx, "u_bob", api.CreateSessionRequest{Template: "web", Agent: bad}); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("clone with agent %q: %v, want invalid_argument", bad, err)
		}
		if _, err := r.mgr.CreateTemplate(ctx, "u_bob", api.CreateTemplateRequest{Name: "other", Agent: bad}); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("template with agent %q: %v, want invalid_argument", bad, err)
		}
	}
	if after, err := r.mgr.List(ctx); err != nil || len(after) != len(before) {
		t.Errorf("sessions after refused creates: %d (%v), want %d", len(after), err, len(before))
	}
	if _, err := r.mgr.GetTemplate(ctx, "other"); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("a refused template exists: %v", err)
	}
}
