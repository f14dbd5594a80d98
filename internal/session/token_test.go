package session_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/issuer"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/sessiontoken"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// TestFakeSessionTokens: the identity token a guest gets names its
// session's owner and agent, a clone's own (not its template's); a park
// kills the tokens minted before it (the snapshot holds them) and none is
// minted while parked; after the wake a fresh one holds; revoke kills
// them at once and for good (the guest gets no new one, even after a park
// and wake), and the VM runs on; a clone woken by an event still acts for
// its owner; rm kills them.
func TestFakeSessionTokens(t *testing.T) {
	t.Parallel()
	const url = "https://cove.example.com"
	is, err := issuer.New(t.TempDir(), url)
	if err != nil {
		t.Fatal(err)
	}
	r := newFakeRigWith(t, func(c *session.Config) { c.Tokens = sessiontoken.Minter{Issuer: is} })
	ctx := context.Background()
	for _, id := range []string{testOwner, "u_bob"} {
		if err := r.store.PutUser(ctx, store.User{ID: id, Name: strings.TrimPrefix(id, "u_"), Kind: store.UserEngineer}); err != nil {
			t.Fatal(err)
		}
	}
	v := &sessiontoken.Verifier{Issuer: is, Audience: url, Records: r.store}
	mint := func(id string) string {
		t.Helper()
		tok, err := r.mgr.GuestToken(id, url)
		if err != nil {
			t.Fatalf("token of %s: %v", id, err)
		}
		return tok
	}
	live := func(tok, id, owner string) {
		t.Helper()
		p, err := v.Verify(ctx, tok)
		if err != nil || p.Session != id || p.User.ID != owner || p.Kind != identity.KindAgent {
			t.Fatalf("token of %s: %+v, %v; want the agent of %s for %s", id, p, err, id, owner)
		}
	}
	dead := func(tok, why string) {
		t.Helper()
		if _, err := v.Verify(ctx, tok); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("token %s: %v; want revoked", why, err)
		}
	}

	s := r.create(api.CreateSessionRequest{Agent: "review-bot"})
	tok := mint(s.ID)
	live(tok, s.ID, testOwner)
	c, err := is.Verify(tok, url)
	if err != nil || c.Agent != "review-bot" || c.Subject != testOwner {
		t.Fatalf("claims %+v, %v", c, err)
	}

	r.park(s.ID)
	dead(tok, "from before the park")
	if _, err := r.mgr.GuestToken(s.ID, url); err == nil || !strings.Contains(err.Error(), "parked") {
		t.Errorf("a token while parked: %v; want refused", err)
	}
	if _, err := r.mgr.Wake(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	dead(tok, "from before the park, after the wake")
	woke := mint(s.ID)
	live(woke, s.ID, testOwner)

	if _, err := r.mgr.Revoke(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	dead(woke, "after revoke")
	if got := r.get(s.ID); got.State != api.StateRunning {
		t.Errorf("revoke left the session %s, want running", got.State)
	}
	refused := func(when string) {
		t.Helper()
		if tok, err := r.mgr.GuestToken(s.ID, url); err == nil || !strings.Contains(err.Error(), "this session's identity was revoked") {
			t.Errorf("a token %s: %.20q, %v; want refused: this session's identity was revoked", when, tok, err)
		}
	}
	refused("after revoke")
	r.park(s.ID)
	if _, err := r.mgr.Wake(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	refused("after revoke, a park and a wake")
	if _, err := r.mgr.Revoke(ctx, "nope"); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("revoke of an unknown session: %v", err)
	}

	// A clone of tester's template, created by bob with his own agent.
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Agent: "builder"}); err != nil {
		t.Fatal(err)
	}
	clone, err := r.mgr.Create(ctx, "u_bob", api.CreateSessionRequest{Template: "web", Agent: "fixer"})
	if err != nil {
		t.Fatal(err)
	}
	ct := mint(clone.ID)
	live(ct, clone.ID, "u_bob")
	if cc, _ := is.Verify(ct, url); cc.Session != clone.ID || cc.Agent != "fixer" || cc.Subject != "u_bob" {
		t.Errorf("clone's claims %+v; want its own session, agent fixer, sub u_bob", cc)
	}

	// Woken by an event, the clone still acts for bob; its token from
	// before the park is dead.
	if _, err := r.mgr.ParkUntil(ctx, clone.ID, []string{"deploys:deploy-done"}, 0); err != nil {
		t.Fatal(err)
	}
	dead(ct, "from before park --until")
	ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"deploy-done"}`))
	if err != nil {
		t.Fatal(err)
	}
	ev.ID, ev.Received = "d1", time.Now()
	if _, err := r.mgr.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	r.eventually("the event wakes the clone", func() bool { return r.get(clone.ID).State == api.StateRunning })
	live(mint(clone.ID), clone.ID, "u_bob")

	last := mint(clone.ID)
	if err := r.mgr.Delete(ctx, clone.ID); err != nil {
		t.Fatal(err)
	}
	dead(last, "after rm")
}
