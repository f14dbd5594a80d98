package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

// linkJoinToken is the join token of the fleet's servers that hold
// nodes' control connections.
const linkJoinToken = "covebench-link-join-token"

// linkServer is a fleet server running no node (cove server
// --node=false) that holds nodes' control connections (its nodelink
// Hub, advertising its loopback URL), as cove server wires one.
type linkServer struct {
	url  string
	hub  *nodelink.Hub
	stop func()
}

// linkServer starts server name with no node, holding nodes' control
// connections.
func (f *fleet) linkServer(ctx context.Context, name string) (*linkServer, error) {
	st, err := sqlite.Open(ctx, f.db)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return nil, err
	}
	s := &linkServer{url: "http://" + ln.Addr().String()}
	mgr, err := session.New(session.Config{Store: st, Driver: f.driver, Images: f.images, Dir: filepath.Join(f.dir, name),
		TemplateDir: filepath.Join(f.dir, name, "templates"), DefaultMemoryMiB: f.memMiB, NoNode: true, Route: true,
		ServerID: name, Log: f.log})
	if err != nil {
		st.Close()
		ln.Close()
		return nil, err
	}
	s.hub = nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: linkJoinToken, Log: f.log})
	s.hub.SetURL(s.url)
	srv := apiserver.New(apiserver.Config{Sessions: mgr, Log: f.log, Nodes: mgr, Router: routing.New(st, ""),
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st}), NodeLink: s.hub})
	go func() { _ = http.Serve(ln, srv.Handler()) }()
	s.stop = func() {
		ln.Close()
		s.hub.Close()
		mgr.Close()
		st.Close()
	}
	return s, nil
}

// linkedNode starts a session-serving node (cove node with the shared
// store): it joins through via, runs a session manager of its own
// (Linked) whose API server its agent serves over its control
// connection, and connects; it returns once via relays its calls (via
// in another process, hub nil: once its record names via).
func (f *fleet) linkedNode(ctx context.Context, name string, via *linkServer) (id string, stop func(), err error) {
	st, err := sqlite.Open(ctx, f.db)
	if err != nil {
		return "", nil, err
	}
	home := filepath.Join(f.dir, name, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		st.Close()
		return "", nil, err
	}
	var h http.Handler = http.NotFoundHandler()
	var mgr *session.Manager
	agent := nodelink.NewAgent(nodelink.AgentConfig{Server: via.url, JoinToken: linkJoinToken, Name: name, Home: home,
		Heartbeat: time.Hour, Serves: true, Log: f.log,
		Probe:   func(context.Context) (store.NodeCapacity, error) { return fleetCapacity, nil },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) })})
	if id, err = agent.Join(ctx); err != nil {
		st.Close()
		return "", nil, fmt.Errorf("node %s: join: %w", name, err)
	}
	mgr, err = session.New(session.Config{Store: st, Driver: f.driver, Images: f.images, Dir: filepath.Join(f.dir, name),
		TemplateDir: filepath.Join(f.dir, name, "templates"), DefaultMemoryMiB: f.memMiB, Node: id, Linked: true,
		ServerID: name, Log: f.log})
	if err != nil {
		st.Close()
		return "", nil, err
	}
	h = apiserver.New(apiserver.Config{Sessions: mgr, Log: f.log, Nodes: mgr, Router: routing.New(st, id),
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})}).Handler()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(runCtx) }()
	stop = func() {
		cancel()
		<-done
		mgr.StopAll(context.Background())
		mgr.Close()
		st.Close()
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, err := st.GetNode(ctx, id)
		if err == nil && n.URL == via.url && (via.hub == nil || via.hub.Connected(id)) {
			return id, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("node %s did not connect: %+v, %v", name, n, err)
		}
	}
}

// linkRouteRows measures what a session-serving node reached over its
// control connection adds to an exec round trip (issue 19): n buffered
// execs (echo) of a session on node N, through server S (no node),
// which relays each over N's link to N's API; n of the same through S2
// (no node), forwarded to S, relayed; against n straight to server B,
// whose embedded node holds a session of its own; the three alternated.
// In-process (real loopback sockets, the real nodelink Hub and Agent),
// the fake VMM.
func linkRouteRows(n int) ([]row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("route: %d samples", n)
	}
	ctx := context.Background()
	f, err := newFleet(ctx)
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer f.close()
	b, err := f.server(ctx, "bench-b", 0, 0)
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer b.stop()
	s, err := f.linkServer(ctx, "bench-s")
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer s.stop()
	s2, err := f.linkServer(ctx, "bench-s2")
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer s2.stop()
	nodeID, stopNode, err := f.linkedNode(ctx, "bench-n", s)
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	defer stopNode()

	direct, viaS, viaS2 := f.client(b), f.clientAt(s.url), f.clientAt(s2.url)
	// B's session first, then N's with B cordoned: placement puts each
	// where it is measured.
	onB, err := direct.CreateSession(ctx, api.CreateSessionRequest{})
	if err == nil && onB.Node != b.node {
		err = fmt.Errorf("placed on %s, not B", onB.Node)
	}
	if err != nil {
		return nil, fmt.Errorf("route: create on B: %w", err)
	}
	defer b.mgr.Delete(context.Background(), onB.ID)
	if _, err := direct.CordonNode(ctx, b.node); err != nil {
		return nil, fmt.Errorf("route: cordon B: %w", err)
	}
	onN, err := viaS.CreateSession(ctx, api.CreateSessionRequest{})
	if err == nil && onN.Node != nodeID {
		err = fmt.Errorf("placed on %s, not the linked node", onN.Node)
	}
	if err != nil {
		return nil, fmt.Errorf("route: create on the linked node through S: %w", err)
	}
	defer viaS.DeleteSession(context.Background(), onN.ID)

	return linkedRows(ctx, n, "", direct, viaS, viaS2, onB.ID, onN.ID)
}

// linkedRows times n execs (echo) of session onN, held by a linked node,
// through viaS (the server holding its connection, which relays them)
// and through viaS2 (which forwards them to that server), against n of
// session onB straight to direct, the server whose embedded node holds
// it; the three alternated after 20 of each to warm up; the rows' names
// start with label.
func linkedRows(ctx context.Context, n int, label string, direct, viaS, viaS2 *api.Client, onB, onN string) ([]row, error) {
	exec := func(c *api.Client, id string) (float64, error) { return echoExec(ctx, c, id) }
	relayed := row{name: label + "exec round trip through a server with no node, relayed over a linked node's connection", unit: "ms"}
	twoHop := row{name: label + "the same through another server, forwarded to the node's server, relayed", unit: "ms"}
	embedded := row{name: label + "exec straight to the server whose embedded node holds the session", unit: "ms"}
	// A failed round trip (an answer cut short: see README, Routing
	// between servers) is counted, not timed; past 1% the run stops.
	failed := map[string]int{}
	for i := range n + 20 { // the first 20 of each warm up
		z, err := exec(direct, onB)
		if err != nil {
			return nil, fmt.Errorf("route: %sstraight to B: %w", label, err)
		}
		x, errS := exec(viaS, onN)
		y, errS2 := exec(viaS2, onN)
		for what, err := range map[string]error{"through S, relayed": errS, "through S2, forwarded, relayed": errS2} {
			if err == nil {
				continue
			}
			if failed[what]++; failed[what] > n/100 {
				return nil, fmt.Errorf("route: %s%s: %d failed, the last: %w", label, what, failed[what], err)
			}
			fmt.Fprintf(os.Stderr, "covebench: route: %s%s: %v (counted, not timed)\n", label, what, err)
		}
		if i >= 20 {
			if errS == nil {
				relayed.samples = append(relayed.samples, x)
			}
			if errS2 == nil {
				twoHop.samples = append(twoHop.samples, y)
			}
			embedded.samples = append(embedded.samples, z)
		}
	}
	if len(failed) != 0 {
		relayed.note = fmt.Sprintf("%d failed", failed["through S, relayed"])
		twoHop.note = fmt.Sprintf("%d failed", failed["through S2, forwarded, relayed"])
	}
	return []row{relayed, twoHop, embedded,
		addedRow(label+"added by the relay over the node's link (p50, p95 differences)", n, relayed, embedded),
		addedRow(label+"added by a forward and the relay (p50, p95 differences)", n, twoHop, embedded)}, nil
}
