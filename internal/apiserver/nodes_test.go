package apiserver

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// The node routes in front of the real session manager with its embedded
// node "host-a" (the fake VMM driver, a real SQLite store), behind the
// policy gate as cove server wires them.

func newNodeEnv(t *testing.T) (*policyEnv, string) {
	t.Helper()
	var nodeID string
	mgr, st, _ := newFakeManager(t, func(c *session.Config) {
		n, err := session.RegisterEmbeddedNode(context.Background(), c.Store, "host-a",
			store.NodeCapacity{VCPUs: 4, MemoryMiB: 4096, DiskBytes: 1 << 40, Accel: "tcg"})
		if err != nil {
			t.Fatal(err)
		}
		c.Node, nodeID = n.ID, n.ID
	})
	e := &policyEnv{testEnv: &testEnv{t: t, images: &fakeImages{}, logs: &logSink{}, admin: &harnessAdmin{dir: &identity.Directory{Store: st}}},
		st: st, mgr: mgr, engine: policy.New()}
	e.server = New(Config{Sessions: mgr, Nodes: mgr, Images: e.images, Token: testToken,
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st}),
		Identities:    &identity.Directory{Store: st},
		Authorize:     (&PolicyGate{Policy: e.engine, Records: st}).Authorize,
		Log:           slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.srv = httptest.NewServer(e.server.Handler())
	t.Cleanup(e.srv.Close)
	return e, nodeID
}

func TestNodeRoutes(t *testing.T) {
	e, id := newNodeEnv(t)
	admin := e.person(t, "root", api.UserAdmin)
	bob := e.person(t, "bob", "")

	// Only admins: an engineer is refused, and no token is 401.
	wantDenied(t, e.do("GET", "/v1/nodes", nil, bob.auth()...), policy.NodesAdmin, "Server cove", "User "+bob.ID)
	wantDenied(t, e.do("POST", "/v1/nodes/host-a/cordon", nil, bob.auth()...), policy.NodesAdmin, "Server cove", "User "+bob.ID)
	wantError(t, e.do("GET", "/v1/nodes", nil, "Authorization", ""), http.StatusUnauthorized, api.CodeUnauthorized)

	list := decode[api.NodeList](t, e.do("GET", "/v1/nodes", nil, admin.auth()...), 200)
	if len(list.Nodes) != 1 {
		t.Fatalf("nodes = %+v, want the embedded node", list.Nodes)
	}
	n := list.Nodes[0]
	if n.ID != id || n.Name != "host-a" || n.State != api.NodeReady || !n.Embedded || n.Capacity.VCPUs != 4 {
		t.Errorf("node = %+v, want host-a ready, embedded, 4 vCPUs", n)
	}
	for _, ref := range []string{id, "host-a"} {
		if got := decode[api.Node](t, e.do("GET", "/v1/nodes/"+ref, nil, admin.auth()...), 200); got.ID != id {
			t.Errorf("GET /v1/nodes/%s = %s, want %s", ref, got.ID, id)
		}
	}
	wantError(t, e.do("GET", "/v1/nodes/nosuch", nil, admin.auth()...), http.StatusNotFound, api.CodeNotFound)
	wantError(t, e.do("POST", "/v1/nodes/nosuch/drain", nil, admin.auth()...), http.StatusNotFound, api.CodeNotFound)
	wantError(t, e.do("GET", "/v1/nodes/a%20b", nil, admin.auth()...), http.StatusBadRequest, api.CodeInvalid)

	// Cordoned: a create is refused with the reason; uncordoned, it works.
	if got := decode[api.Node](t, e.do("POST", "/v1/nodes/host-a/cordon", nil, admin.auth()...), 200); got.State != api.NodeCordoned {
		t.Errorf("cordon: state %s", got.State)
	}
	body := wantError(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}, admin.auth()...), http.StatusServiceUnavailable, api.CodeUnavailable)
	if !strings.Contains(body.Message, "no node fits: host-a: cordoned") {
		t.Errorf("refusal %q does not say why", body.Message)
	}
	if got := decode[api.Node](t, e.do("POST", "/v1/nodes/"+id+"/uncordon", nil, admin.auth()...), 200); got.State != api.NodeReady {
		t.Errorf("uncordon: state %s", got.State)
	}
	s := decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}, admin.auth()...), 201)
	if s.Node != id {
		t.Errorf("created session's node %q, want %q", s.Node, id)
	}
	wantError(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{NodeSelector: map[string]string{"": "x"}}, admin.auth()...),
		http.StatusBadRequest, api.CodeInvalid)

	// A node holding sessions is not removed; drained, they are parked.
	body = wantError(t, e.do("DELETE", "/v1/nodes/host-a", nil, admin.auth()...), http.StatusConflict, api.CodeConflict)
	if !strings.Contains(body.Message, "holds 1 sessions") {
		t.Errorf("409 %q does not say why", body.Message)
	}
	res := decode[api.DrainResult](t, e.do("POST", "/v1/nodes/host-a/drain", nil, admin.auth()...), 200)
	if res.Parked != 1 || res.Node.State != api.NodeDraining {
		t.Errorf("drain = %+v, want 1 parked, draining", res)
	}
	if got := decode[api.Session](t, e.do("GET", "/v1/sessions/"+s.ID, nil, admin.auth()...), 200); got.State != api.StateParked {
		t.Errorf("drained session is %s, want parked", got.State)
	}
	e.do("DELETE", "/v1/sessions/"+s.ID, nil, admin.auth()...)
	if resp := e.do("DELETE", "/v1/nodes/host-a", nil, admin.auth()...); resp.StatusCode != http.StatusNoContent {
		t.Errorf("remove an empty node: %d, want 204", resp.StatusCode)
	}
	wantError(t, e.do("GET", "/v1/nodes/host-a", nil, admin.auth()...), http.StatusNotFound, api.CodeNotFound)
}

// A server without a node registry answers the node routes 503.
func TestNodeRoutesWithoutRegistry(t *testing.T) {
	e := newEnv(t)
	wantError(t, e.do("GET", "/v1/nodes", nil), http.StatusServiceUnavailable, api.CodeUnavailable)
}
