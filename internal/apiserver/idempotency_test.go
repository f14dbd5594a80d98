package apiserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestFakeIdempotentCreate: a create with an Idempotency-Key, retried
// with it by the same user, answers the same session (200) and makes no
// other; a retry that asks for something else is a 409, and so is one
// after the session's removal. Another user's same key is a create of
// its own. A bad key (empty, over 255 bytes, not printable ASCII) is a
// 400 that makes nothing.
func TestFakeIdempotentCreate(t *testing.T) {
	e := newPolicyEnv(t)
	alice := e.person(t, "alice", "")
	bob := e.person(t, "bob", "")
	keyed := func(p person, key string, req api.CreateSessionRequest) *http.Response {
		return e.doJSON("POST", "/v1/sessions", req, append(p.auth(), api.IdempotencyHeader, key)...)
	}
	req := api.CreateSessionRequest{Agent: "review-bot", Env: map[string]string{"A": "1", "B": "2"}}
	first := decode[api.Session](t, keyed(alice, "k1", req), http.StatusCreated)
	again := decode[api.Session](t, keyed(alice, "k1", req), http.StatusOK)
	if again.ID != first.ID || again.State != api.StateRunning || again.Owner != alice.ID {
		t.Fatalf("the retry with alice's key: %+v; want session %s, running", again, first.ID)
	}
	if ids := e.sessionIDs(t, alice.auth()...); !slices.Equal(ids, []string{first.ID}) {
		t.Fatalf("alice's sessions after the retry: %v; want %s alone", ids, first.ID)
	}
	other := req
	other.Agent = "fixer"
	body := wantError(t, keyed(alice, "k1", other), http.StatusConflict, api.CodeConflict)
	if !strings.Contains(body.Message, "asked for something else") || !strings.Contains(body.Message, first.ID) {
		t.Errorf("a retry asking for something else: %q; want it to say so and name %s", body.Message, first.ID)
	}

	bobs := decode[api.Session](t, keyed(bob, "k1", req), http.StatusCreated)
	if bobs.ID == first.ID || bobs.Owner != bob.ID {
		t.Fatalf("bob's create with alice's key: %+v; want a session of his own", bobs)
	}

	// " ": a value all space arrives empty.
	for name, key := range map[string]string{
		"empty": " ", "256 bytes": strings.Repeat("k", 256), "a tab": "a\tb", "not ASCII": "clé",
	} {
		body := wantError(t, keyed(alice, key, api.CreateSessionRequest{}), http.StatusBadRequest, api.CodeInvalid)
		if !strings.Contains(body.Message, api.IdempotencyHeader) {
			t.Errorf("key %s: %q; want it to name the header", name, body.Message)
		}
	}
	if ids := e.sessionIDs(t, alice.auth()...); !slices.Equal(ids, []string{first.ID}) {
		t.Fatalf("alice's sessions after bad keys: %v; want %s alone", ids, first.ID)
	}

	resp := e.do("DELETE", "/v1/sessions/"+first.ID, nil, alice.auth()...)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	body = wantError(t, keyed(alice, "k1", req), http.StatusConflict, api.CodeConflict)
	if !strings.Contains(body.Message, "removed") {
		t.Errorf("a retry after the removal: %q; want it to say the session was removed", body.Message)
	}
	if ids := e.sessionIDs(t, alice.auth()...); len(ids) != 0 {
		t.Errorf("alice's sessions after the retry of a removed one: %v; want none", ids)
	}
}

// loseAnswer is a transport whose every answer is lost: the call is
// made and answered, then then runs (a server killed as its answer was
// written) and the client sees a cut connection.
type loseAnswer struct{ then func() }

func (l loseAnswer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	l.then()
	return nil, errors.New("connection reset by peer (the answer was lost)")
}

// TestFakeRouteIdempotentCreateServerKilled: a create with a key through
// C (a server with no node) is forwarded to A, where it is made; C dies
// as its answer is written, and the client never learns the session's id.
// The retry with the key through B answers that session: one session,
// one VM, on A.
func TestFakeRouteIdempotentCreateServerKilled(t *testing.T) {
	r := newRouteRig(t)
	a, b, c := r.server("host-a", true), r.server("host-b", true), r.server("api-c", false)
	ctx := context.Background()
	r.cordon(b)
	key := api.NewIdempotencyKey()
	req := api.CreateSessionRequest{Agent: "review-bot"}
	lost := api.NewClient(c.srv.URL, r.token)
	lost.HTTP = &http.Client{Transport: loseAnswer{then: c.kill}}
	if _, err := lost.CreateSessionKeyed(ctx, key, req); err == nil {
		t.Fatal("the create through C answered although its answer was lost")
	}
	all, err := a.client.ListSessions(ctx)
	if err != nil || len(all) != 1 || all[0].Node != a.node {
		t.Fatalf("sessions after the lost answer: %+v, %v; want the one made on A", all, err)
	}
	if _, err := b.client.UncordonNode(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	s, err := b.client.CreateSessionKeyed(ctx, key, req)
	if err != nil || s.ID != all[0].ID || s.State != api.StateRunning {
		t.Fatalf("the retry with the key through B: %+v, %v; want session %s", s, err, all[0].ID)
	}
	if all, err = b.client.ListSessions(ctx); err != nil || len(all) != 1 {
		t.Errorf("sessions after the retry: %+v, %v; want one", all, err)
	}
	if vms := r.driver.Running(); len(vms) != 1 || vms[0] != s.ID {
		t.Errorf("VMs after the retry: %v; want %s alone", vms, s.ID)
	}
	b.echo(t, s.ID, "retried")
}

// TestFakeRouteIdempotentCreateGivenUp: a create with a key through C,
// forwarded to A, whose guest is slow to answer; C dies mid-call. The
// client's retry with the key through A, while A's create is still under
// way, waits for it: A gives the create up (its caller gone) and frees
// the key, and the retry makes the one session.
func TestFakeRouteIdempotentCreateGivenUp(t *testing.T) {
	r := newRouteRig(t)
	a, c := r.server("host-a", true), r.server("api-c", false)
	ctx := context.Background()
	key := api.NewIdempotencyKey()
	r.killMidCreate(c, func() error {
		_, err := c.client.CreateSessionKeyed(ctx, key, api.CreateSessionRequest{})
		return err
	})
	s, err := a.client.CreateSessionKeyed(ctx, key, api.CreateSessionRequest{})
	if err != nil || s.Node != a.node || s.State != api.StateRunning {
		t.Fatalf("the retry with the key through A: %+v, %v", s, err)
	}
	if !strings.Contains(a.logs.String(), "create given up") {
		t.Errorf("A did not give the first create up")
	}
	all, err := a.client.ListSessions(ctx)
	if err != nil || len(all) != 1 || all[0].ID != s.ID {
		t.Errorf("sessions after the retry: %+v, %v; want the retry's alone", all, err)
	}
	if vms := r.driver.Running(); len(vms) != 1 || vms[0] != s.ID {
		t.Errorf("VMs after the retry: %v; want the retry's alone", vms)
	}
	a.echo(t, s.ID, "retried")
}
