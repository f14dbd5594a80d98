// Package routing says which API server carries out a call about a
// session: the one whose embedded node holds it, or, for a 'cove node'
// that serves sessions, the one holding the node's control connection,
// which relays the call over it (issue 19). Several `cove server`
// processes share one store; each one with an embedded node advertises
// the URL the others reach it at (store.Node.URL), and a session-serving
// node's record has the URL of the server its control connection is to
// (nodelink.Hub sets it as the node connects). The API server
// (apiserver's Config.Router) forwards a call about another node's
// session to its node's URL, unchanged.
//
// The rules, for a call reaching server S about session X held by node N:
//   - N is S's own node (or X names none, from before nodes): S.
//   - N is alive and has a URL (another server's embedded node, or a
//     remote node serving sessions): N.URL. For a remote node the
//     server there relays the call over N's control connection (the
//     API server relays it itself, without the hop, when N's connection
//     is to S; apiserver/route.go). An embedded node whose server
//     advertises no URL is a 503 saying so.
//   - N is dead or removed: S, whose session layer moves a parked session
//     to its own node (or records it lost); a server that runs no node
//     sends the call to a live node's URL instead (the first by name
//     that is not cordoned or draining and has a URL).
//   - N is a remote node with no URL (`cove node` running no sessions
//     now, or connected to a server that advertises none): a 503 saying
//     so.
//   - A call that may wake X (Wake: a wake, an exec, a file call) where X
//     is parked, stored in the object store, and N is draining: X wakes
//     elsewhere (a drained node ends empty), so the call is carried out
//     by S when S's node takes sessions, else at the first live node by
//     name that does and has a URL (N included: it sends the wake
//     away). A cordoned N's sessions wake back on it (cordoned: no new
//     sessions; draining: move away), and so does one never stored (its
//     files are on N alone) or one no other node takes (N says why in
//     its log).
//
// A drain of node N (Drain) goes to N's URL likewise, where N's sessions
// are parked; a dead N, or one with no URL, is drained (set draining)
// where the call arrives.
package routing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Header marks a request one server forwarded to another. Its value is
// the forwarding server's node id ("-" for a server that runs none). A
// request that carries it is carried out where it arrives, or refused:
// never forwarded again.
const Header = "Cove-Routed-By"

// HeaderTo, on a forwarded request, names the node the forwarding server
// sent it to (Target.NodeID). The server that receives it relays it over
// that node's control connection when the node is a 'cove node' whose
// connection is to it: how a create placed on such a node elsewhere
// reaches it.
const HeaderTo = "Cove-Routed-To"

// Lookup is what a Router reads of the store.
type Lookup interface {
	GetSession(ctx context.Context, id string) (store.Session, error)
	GetNode(ctx context.Context, id string) (store.Node, error)
	GetNodeByName(ctx context.Context, name string) (store.Node, error)
	ListNodes(ctx context.Context) ([]store.Node, error)
}

// Target is the server a call is forwarded to: the node's name and id,
// for errors and logs, and its server's URL.
type Target struct {
	NodeID   string
	NodeName string
	URL      *url.URL
}

// TargetOf is the target of node n, which must advertise a URL.
func TargetOf(n store.Node) (Target, error) {
	u, err := ParseURL(n.URL)
	if err != nil {
		return Target{}, api.Errorf(api.CodeUnavailable, "node %s (%s): its server's URL: %v", n.Name, n.ID, err)
	}
	return Target{NodeID: n.ID, NodeName: n.Name, URL: u}, nil
}

// SameServer reports whether a and b are URLs of the same server (scheme
// and host alike, paths alike but for a trailing slash); false if either
// is nil.
func SameServer(a, b *url.URL) bool {
	return a != nil && b != nil && strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host) &&
		strings.TrimSuffix(a.Path, "/") == strings.TrimSuffix(b.Path, "/")
}

// LinkedHere says what this server does with a call for node t, given
// whether the node's control connection is here (connected) and the URL
// the other servers reach this server at (own, nil for none). relay: the
// call goes over that connection (t's record names this server, or there
// is nothing to compare; a node whose record names another server
// connected there since, and its connection here is a stale one yet to
// be found dead). here: the call is this server's to carry, relayed, or
// refused (503) when the connection dropped while the record names this
// server.
func LinkedHere(t Target, connected bool, own *url.URL) (relay, here bool) {
	relay = connected && (own == nil || t.URL == nil || SameServer(t.URL, own))
	return relay, relay || SameServer(t.URL, own)
}

// OwnURL parses a server's own advertised URL: nil for none or one that
// does not parse (then no record can be compared with it).
func OwnURL(s string) *url.URL {
	if s == "" {
		return nil
	}
	u, err := ParseURL(s)
	if err != nil {
		return nil
	}
	return u
}

// ParseURL checks an advertised URL: http or https, a host, no query or
// fragment.
func ParseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("advertised URL %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("advertised URL %q: want http://HOST:PORT or https://HOST:PORT (a path at most)", s)
	}
	return u, nil
}

// Router decides where session calls go. Make one with New (cove's API)
// or NewE2B (the E2B-compatible API).
type Router struct {
	st   Lookup
	node string // this server's embedded node; "" when it runs none
	e2b  bool   // targets are the nodes' E2B URLs (Node.E2BURL)
}

// New makes a Router over st for a server whose embedded node is node
// ("" for a server that runs none).
func New(st Lookup, node string) *Router { return &Router{st: st, node: node} }

// NewE2B is New for the E2B-compatible API: its targets are the URLs of
// the holders' servers' E2B APIs (Node.E2BURL, --e2b-advertise-url).
func NewE2B(st Lookup, node string) *Router { return &Router{st: st, node: node, e2b: true} }

// urlOf is the URL of n's server that this router's calls go to, and
// the flag that sets it.
func (r *Router) urlOf(n store.Node) (url, flag string) {
	if r.e2b {
		return n.E2BURL, "--e2b-advertise-url"
	}
	return n.URL, "--advertise-url"
}

// Target is the target of node n for this router's calls: an *api.Error
// (503) when n's server advertises no URL for them.
func (r *Router) Target(n store.Node) (Target, error) {
	u, flag := r.urlOf(n)
	if u == "" {
		return Target{}, api.Errorf(api.CodeUnavailable, "node %s (%s): its server advertises no URL for this API (%s)", n.Name, n.ID, flag)
	}
	n.URL = u
	return TargetOf(n)
}

// Node is this server's embedded node ("" for none): the value of Header
// on what it forwards.
func (r *Router) Node() string { return r.node }

// Session says where a call about session id is carried out: ok false
// for this server (an unknown session included: this server answers
// 404), else the target. An error is a store that cannot say, or a node
// that cannot be reached by routing (its server advertises no URL), as
// an *api.Error.
func (r *Router) Session(ctx context.Context, id string) (t Target, ok bool, err error) {
	return r.session(ctx, id, false)
}

// Wake is Session for a call that may wake session id (a wake, an exec,
// a file call): one about a parked session, stored in the object store,
// whose node is draining goes to a node that takes sessions (this
// server's when it does), where the session wakes, restored from the
// object store. With none, it goes to the holder's server as Session's.
func (r *Router) Wake(ctx context.Context, id string) (t Target, ok bool, err error) {
	return r.session(ctx, id, true)
}

func (r *Router) session(ctx context.Context, id string, wakes bool) (t Target, ok bool, err error) {
	rec, err := r.st.GetSession(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Target{}, false, nil
	}
	if err != nil {
		return Target{}, false, fmt.Errorf("route: session %s: %w", id, err)
	}
	moves := wakes && rec.State == api.StateParked && rec.StoredManifest != ""
	if rec.Node == r.node && r.node != "" && !moves {
		return Target{}, false, nil
	}
	if rec.Node == "" {
		if r.node != "" {
			return Target{}, false, nil
		}
		return r.anyNode(ctx, id)
	}
	n, err := r.st.GetNode(ctx, rec.Node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		n = store.Node{ID: rec.Node, Dead: true}
	case err != nil:
		return Target{}, false, fmt.Errorf("route: session %s: its node %s: %w", id, rec.Node, err)
	}
	switch {
	case n.Dead && r.node != "":
		return Target{}, false, nil
	case n.Dead:
		return r.anyNode(ctx, id)
	}
	if moves && n.Admin == store.NodeDraining {
		if r.takes(ctx) {
			return Target{}, false, nil // it wakes here
		}
		if t, ok, err := r.anyNode(ctx, id); err != nil || ok {
			return t, ok, err
		}
		// No other node takes it: its own server wakes it there.
	}
	if n.ID == r.node {
		return Target{}, false, nil
	}
	if u, flag := r.urlOf(n); u == "" {
		switch {
		case !n.Embedded && n.URL != "":
			return Target{}, false, api.Errorf(api.CodeUnavailable,
				"session %s is held by node %s (%s), a 'cove node' reached through its control connection to a server that serves no E2B API (--e2b-listen): use cove's API, or connect the node to a server that serves one", id, n.Name, n.ID)
		case !n.Embedded:
			return Target{}, false, api.Errorf(api.CodeUnavailable,
				"session %s is held by node %s (%s), a 'cove node' no server reaches now: it runs no sessions ('cove node' started without the shared store, --db), or its control connection is to a server that advertises no URL (--advertise-url)", id, n.Name, n.ID)
		}
		return Target{}, false, api.Errorf(api.CodeUnavailable,
			"session %s is held by node %s (%s), whose server advertises no URL (%s): call that server", id, n.Name, n.ID, flag)
	}
	t, err = r.Target(n)
	return t, err == nil, err
}

// Drain says where a drain of node idOrName (its id or name) is carried
// out: at its URL (its server's, or for a remote node serving sessions
// the server relaying to it), where the node's sessions are parked
// (another server could only set it draining), when the node is alive
// and has a URL. ok false: here (this server's own node, an unknown
// one, which is a 404 here, a dead one, or one with no URL, whose drain
// sets it draining and parks nothing).
func (r *Router) Drain(ctx context.Context, idOrName string) (t Target, ok bool, err error) {
	n, err := r.st.GetNode(ctx, idOrName)
	if errors.Is(err, store.ErrNotFound) {
		n, err = r.st.GetNodeByName(ctx, idOrName)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Target{}, false, nil
	case err != nil:
		return Target{}, false, fmt.Errorf("route: node %s: %w", idOrName, err)
	case n.ID == r.node || n.Dead || n.URL == "":
		return Target{}, false, nil
	}
	t, err = TargetOf(n)
	return t, err == nil, err
}

// takes reports whether this server's node takes sessions: it runs one,
// alive, neither cordoned nor draining (a store that cannot say: no).
func (r *Router) takes(ctx context.Context) bool {
	if r.node == "" {
		return false
	}
	n, err := r.st.GetNode(ctx, r.node)
	return err == nil && !n.Dead && n.Admin == ""
}

// anyNode is the target of a call about session id that its node does
// not carry out (it is gone, seen from a server that runs none, or
// draining, for a wake): the first live node by name that takes
// sessions and has a URL (an embedded node's server or a remote node
// serving sessions); ok false when there is none.
func (r *Router) anyNode(ctx context.Context, id string) (Target, bool, error) {
	nodes, err := r.st.ListNodes(ctx)
	if err != nil {
		return Target{}, false, fmt.Errorf("route: session %s: nodes: %w", id, err)
	}
	for _, n := range nodes {
		if u, _ := r.urlOf(n); !n.Dead && n.Admin == "" && u != "" {
			if t, err := r.Target(n); err == nil {
				return t, true, nil
			}
		}
	}
	// Carried out here: this server's session layer says why it cannot.
	return Target{}, false, nil
}
