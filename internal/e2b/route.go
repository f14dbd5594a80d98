package e2b

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// Routing (issue 19): any server's E2B API answers any call, and each
// call about a sandbox is carried out by the server whose embedded node
// holds it, at that server's advertised E2B URL (store.Node.E2BURL,
// --e2b-advertise-url), as cove's own API routes to Node.URL:
//   - control-plane calls that name a sandbox (get, kill, timeout, pause,
//     connect, metrics, snapshots, fork; a create from a snapshot by its
//     sandbox) once the API key is checked here: the holder checks it
//     again, decides with its policy and audits the call;
//   - envd calls (by E2b-Sandbox-Id or the 49983-ID host) before the
//     access token is checked: the token is the holder's (each server
//     signs with its own e2b.key), so the holder checks it;
//   - a create that placement puts on another server's node is forwarded
//     there with its body; where that server advertises no E2B URL the
//     create is placed on this server's node instead.
//
// What is forwarded carries routing.Header; a server that receives it
// acts on its own node or refuses (409), never forwarding again, but
// for one more hop: a session-serving node ('cove node') whose control
// connection is to this server (Config.Links) is reached by relaying
// the call over that connection to the node's own E2B API, marked
// nodelink.HeaderAPI (the node's E2BURL is this server's, set by the Hub
// when it connects). A forwarded call names the node in
// routing.HeaderTo; one that reaches this server directly is relayed
// when its sandbox's node is connected here.

// Router says which server carries out a call about a sandbox;
// routing.NewE2B's *routing.Router is one.
type Router interface {
	// Session returns the target of a call about session id, or ok
	// false for this server.
	Session(ctx context.Context, id string) (t routing.Target, ok bool, err error)
	// Wake is Session for a call that wakes the sandbox (a connect): a
	// paused sandbox of a draining node wakes on another node.
	Wake(ctx context.Context, id string) (t routing.Target, ok bool, err error)
	// Target is the target of a node placement chose (its E2B URL).
	Target(n store.Node) (routing.Target, error)
	// Node is this server's embedded node ("" for none).
	Node() string
}

// Links reaches the session-serving nodes connected to this server;
// *nodelink.Hub is one.
type Links interface {
	// Transport is a transport to node id's handler over its control
	// connection, ok false when it has none to this server.
	Transport(id string) (http.RoundTripper, bool)
	// E2BURL is the URL the other servers reach this server's E2B API
	// at: the E2BURL of the nodes connected here.
	E2BURL() string
}

// authedKey marks a context whose API key routed() has checked.
type authedKey struct{}

// routedHere reports whether another server forwarded r here.
func routedHere(r *http.Request) bool { return r.Header.Get(routing.Header) != "" }

// routed wraps a control-plane handler of a route with {id}, a sandbox:
// the API key is checked, then the call is forwarded to the sandbox's
// holder if that is another server, else h serves it (with the principal
// in its context: principal() does not check the key again).
func (s *Server) routed(h http.HandlerFunc) http.HandlerFunc {
	return s.routedBy(func(r *http.Request) string { return r.PathValue("id") }, h)
}

// routedWake is routed for a call that wakes the sandbox (a connect):
// routed by Router.Wake, so that a paused sandbox of a draining node
// wakes on another node (its access token then that server's, which
// the connect answers).
func (s *Server) routedWake(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.routed(h)(w, r.WithContext(context.WithValue(r.Context(), wakeKey{}, true)))
	}
}

// wakeKey marks the context of a call routedWake routes.
type wakeKey struct{}

// routedBy is routed for a route whose sandbox idOf says ("" for none:
// served here).
func (s *Server) routedBy(idOf func(*http.Request) string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, ok := s.principal(w, r)
		if !ok {
			return
		}
		r = r.WithContext(context.WithValue(ctx, authedKey{}, true))
		if s.route(w, r, idOf(r), false) {
			return
		}
		h(w, r)
	}
}

// snapshotSandbox is the sandbox of the snapshot id SANDBOX:NAME in the
// path ("" for another id): its checkpoint is on the sandbox's node.
func snapshotSandbox(r *http.Request) string {
	if id, _, ok := parseSnapshotID(r.PathValue("id")); ok {
		return id
	}
	return ""
}

// route forwards r, a call about sandbox id, to its holder's server if
// that is another: handled says it was answered (forwarded or refused).
// envd says how to answer a refusal. (ServeHTTP marks a call forwarded
// here session.Here: it acts on this node or is refused.)
func (s *Server) route(w http.ResponseWriter, r *http.Request, id string, envd bool) (handled bool) {
	if s.cfg.Router == nil || id == "" {
		return false
	}
	by := r.Header.Get(routing.Header)
	if node := s.cfg.Router.Node(); by != "" && by == node {
		// Forwarded by this very server: another node advertises an E2B
		// URL that reaches this one.
		s.refuse(w, r, envd, api.Errorf(api.CodeUnavailable, "sandbox %s: the call was routed to another node's server and reached this one (node %s) again: that node's advertised E2B URL (--e2b-advertise-url) reaches this server; set each server's to an address the others reach its E2B API at", id, node))
		return true
	}
	lookup := s.cfg.Router.Session
	if wakes, _ := r.Context().Value(wakeKey{}).(bool); wakes {
		lookup = s.cfg.Router.Wake
	}
	t, ok, err := lookup(r.Context(), id)
	switch {
	case err != nil:
	case !ok:
		return false
	case s.linkedHere(t):
		err = s.relay(w, r, t, id, envd)
	case by != "":
		err = api.Errorf(api.CodeConflict, "sandbox %s: the call was routed here by %s, but node %s (%s) holds it: not routed again (retry: the next call is routed afresh)",
			id, by, t.NodeName, t.NodeID)
	default:
		err = s.forward(w, withSandbox(r, id, envd), t)
	}
	if err != nil {
		s.refuse(w, r, envd, err)
	}
	return true
}

// withSandbox is r, an envd call (envd) about sandbox id, naming it in
// E2b-Sandbox-Id: an envd host name (49983-ID.domain) is not carried
// past a forward or a relay, whose Host is the target's.
func withSandbox(r *http.Request, id string, envd bool) *http.Request {
	if !envd || id == "" || r.Header.Get("E2b-Sandbox-Id") == id {
		return r
	}
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", id)
	return r
}

// forward carries r to t's server; an error (503) when it could not be
// reached, nothing written then.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, t routing.Target) error {
	s.log.DebugContext(r.Context(), "e2b: routing a call", "method", r.Method, "path", r.URL.Path, "node", t.NodeID, "to", t.URL.String())
	err := routing.Forward(w, r, t, s.cfg.Router.Node(), s.routeRT, s.log)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return nil // the client went away: no one to answer
	}
	return api.Errorf(api.CodeUnavailable, "node %s (%s): its server's E2B API %s could not be reached: %v; the call changed nothing here: retry",
		t.NodeName, t.NodeID, t.URL.Redacted(), err)
}

// refuse answers err in the form of the route: envd's (a Connect error
// for the RPCs) or the control plane's.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, envd bool, err error) {
	status, msg := s.statusOf(r, "route", err)
	switch {
	case envd && isRPC(r):
		code := codeUnavailable
		if status == http.StatusConflict {
			code = codeFailedPrecondition
		}
		writeUnaryError(w, rpcErrorf(code, "%s", msg))
	case envd:
		writeEnvdError(w, status, "%s", msg)
	default:
		writeControlError(w, status, "%s", msg)
	}
}

// createElsewhere carries a create that placement put on another
// server's node (err a *session.ElsewhereError) there, with body: it
// returns handled true once answered. Where that server advertises no
// E2B URL, retry (non-nil) is the context to create on this server's own
// node with.
func (s *Server) createElsewhere(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, err error) (handled bool, retry context.Context) {
	var e *session.ElsewhereError
	if s.cfg.Router == nil || body == nil || !errors.As(err, &e) {
		return false, nil
	}
	t, terr := s.cfg.Router.Target(e.Node)
	if terr != nil {
		s.log.InfoContext(r.Context(), "e2b: create placed here: the node placement chose serves no E2B API", "node", e.Node.ID, "why", terr)
		return false, session.Here(ctx)
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	forward := s.forward
	if s.linkedHere(t) {
		forward = func(w http.ResponseWriter, r *http.Request, t routing.Target) error {
			return s.relay(w, r, t, "", false)
		}
	}
	if err := forward(w, r2, t); err != nil {
		s.fail(w, r, "create sandbox", err)
	}
	return true, nil
}

// relayTo relays r, a call another server forwarded here for a
// session-serving node connected here (routing.HeaderTo names it), over
// that node's control connection: handled says it was answered. Any
// other call is this server's (or route's) to decide.
func (s *Server) relayTo(w http.ResponseWriter, r *http.Request) (handled bool) {
	to := r.Header.Get(routing.HeaderTo)
	if s.cfg.Links == nil || s.cfg.Router == nil || !routedHere(r) || to == "" || to == s.cfg.Router.Node() {
		return false
	}
	if _, ok := s.cfg.Links.Transport(to); !ok {
		// Not connected here (now): decided as any forwarded call (a
		// call about a sandbox of a node whose E2BURL is this server's
		// is a 503 saying its connection dropped).
		return false
	}
	t := routing.Target{NodeID: to, NodeName: to, URL: s.ownURL()}
	envd := sandboxOf(r) != "" || r.URL.Path == "/files"
	if err := s.relay(w, r, t, sandboxOf(r), envd); err != nil {
		s.refuse(w, r, envd, err)
	}
	return true
}

// linkedHere reports whether t is a session-serving node this server
// reaches over its control connection (routing.LinkedHere): its record's
// E2BURL is this server's (its connection dropped: relay answers 503
// then).
func (s *Server) linkedHere(t routing.Target) bool {
	if s.cfg.Links == nil {
		return false
	}
	_, connected := s.cfg.Links.Transport(t.NodeID)
	_, here := routing.LinkedHere(t, connected, s.ownURL())
	return here
}

// ownURL is this server's E2B URL (nil for none).
func (s *Server) ownURL() *url.URL {
	if s.cfg.Links == nil {
		return nil
	}
	return routing.OwnURL(s.cfg.Links.E2BURL())
}

// relay carries r, a call about sandbox id ("" for a create) of node t,
// over t's control connection to this server, to the node's E2B API; an
// error (503) when the connection is down or failed before an answer,
// nothing written then (withSandbox names an envd call's sandbox).
func (s *Server) relay(w http.ResponseWriter, r *http.Request, t routing.Target, id string, envd bool) error {
	rt, ok := s.cfg.Links.Transport(t.NodeID)
	if !ok {
		return api.Errorf(api.CodeUnavailable, "node %s (%s) is not connected to this server (its control connection dropped): retry; the call changed nothing", t.NodeName, t.NodeID)
	}
	s.log.DebugContext(r.Context(), "e2b: relaying a call over a node's control connection", "method", r.Method, "path", r.URL.Path, "node", t.NodeID)
	r = withSandbox(r, id, envd).Clone(r.Context())
	r.Header.Set(nodelink.HeaderAPI, nodelink.APIE2B)
	t.URL = &url.URL{Scheme: "http", Host: t.NodeID}
	err := routing.Forward(w, r, t, s.cfg.Router.Node(), rt, s.log)
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return nil
	}
	return api.Errorf(api.CodeUnavailable, "node %s (%s): relaying the call over its control connection failed: %v; retry (through any server)", t.NodeName, t.NodeID, err)
}
