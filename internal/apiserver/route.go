package apiserver

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
)

// Routing (issue 19): any server answers any call, and each call about a
// session is carried out by the server whose embedded node holds it; a
// node drain, by that node's server (which parks its sessions).
//
// The gate asks Config.Router, once the bearer token is checked and
// before the policy decides, where a call about a session goes; one for
// another server is forwarded there unchanged (its Authorization header
// too: identities are in the shared store, so that server authenticates
// it the same, decides with its policy and sequences it in its audit
// log) by httputil.ReverseProxy, which carries streams (flushed at once)
// and upgrades (the exec WebSocket). A create that placement puts on
// another server's node (*session.ElsewhereError) is forwarded there
// with the body it came with. What is forwarded carries routing.Header;
// a server that receives it acts on its own node or refuses (409),
// never forwarding again. A server that cannot be reached is a 503
// naming the node and why: the call changed nothing, and a retry through
// any server (once that one is back, or its node is marked dead and the
// session moves) goes through.

// newRouteTransport is the transport of routed calls (bounded dial and
// dead-peer detection: routing.NewTransport).
func newRouteTransport() *http.Transport { return routing.NewTransport() }

// Router says which server carries out a call about a session;
// *routing.Router is one.
type Router interface {
	// Session returns the target of a call about session id, or ok
	// false for this server.
	Session(ctx context.Context, id string) (t routing.Target, ok bool, err error)
	// Wake is Session for a call that may wake the session (wakes): a
	// parked session of a draining node wakes on another node.
	Wake(ctx context.Context, id string) (t routing.Target, ok bool, err error)
	// Drain returns the target of a drain of node idOrName, or ok
	// false for this server.
	Drain(ctx context.Context, idOrName string) (t routing.Target, ok bool, err error)
	// Node is this server's embedded node ("" for none), sent in
	// routing.Header.
	Node() string
}

// routeSession forwards r, a call about act.SessionID, to the server
// Router names, if another: handled says it was (or was refused); r
// comes back marked session.Here when another server forwarded it here.
func (s *Server) routeSession(w http.ResponseWriter, r *http.Request, act Action) (_ *http.Request, handled bool, err error) {
	if s.router == nil {
		return r, false, nil
	}
	if by := r.Header.Get(routing.Header); by != "" {
		if node := s.router.Node(); by == node && node != "" {
			// Forwarded by this very server: another node advertises a
			// URL that reaches this one (two hosts each advertising
			// 127.0.0.1, say).
			return r, true, api.Errorf(api.CodeUnavailable, "session %s: the call was routed to another node's server and reached this one (node %s) again: that node's advertised URL (--advertise-url) reaches this server; set each server's to an address the others reach it at", act.SessionID, node)
		}
		r = r.WithContext(session.Here(r.Context()))
		return s.routedHere(w, r, act, by)
	}
	if act.Verb == "node.drain" {
		// Drained by the node's own server, which parks its sessions.
		t, ok, err := s.router.Drain(r.Context(), r.PathValue("id"))
		if err != nil || !ok {
			return r, err != nil, err
		}
		return r, true, s.forward(w, r, act, t)
	}
	if act.SessionID == "" {
		return r, false, nil
	}
	t, ok, err := s.routeOf(r.Context(), act)
	if err != nil || !ok {
		return r, err != nil, err
	}
	err = s.forward(w, r, act, t)
	if act.Verb == "session.get" && api.IsCode(err, api.CodeUnavailable) {
		// An inspect reads the shared store: answered here when the
		// holder's server cannot be (what only that node knows, such as
		// whether its files were evicted, is as the record says).
		s.log.Warn("inspect answered here: the holder's server could not be reached", "session", act.SessionID, "node", t.NodeID, "err", err)
		return r, false, nil
	}
	return r, true, err
}

// routedHere decides a call that server by forwarded here: carried out
// here, or relayed over the control connection of the node it is for
// when that node's connection is to this server (the one hop past a
// forward: a 'cove node' is reached through the server holding its
// connection), or refused: never forwarded to another server again.
func (s *Server) routedHere(w http.ResponseWriter, r *http.Request, act Action, by string) (_ *http.Request, handled bool, err error) {
	switch {
	case act.Verb == "node.drain":
		t, ok, err := s.router.Drain(r.Context(), r.PathValue("id"))
		if err != nil || !ok || !s.linkedHere(t) {
			// Here: this server's node, or one drained where the call
			// lands (set draining).
			return r, err != nil, err
		}
		return r, true, s.forward(w, r, act, t)
	case act.SessionID == "":
		// A create the forwarding server placed on a node: relayed to
		// it when its connection is here, else carried out here.
		to := r.Header.Get(routing.HeaderTo)
		if to == "" || to == s.router.Node() {
			return r, false, nil
		}
		t := routing.Target{NodeID: to, NodeName: to, URL: s.ownURL()}
		if _, ok := s.linkTransport(to); !ok {
			if act.Verb == "session.create" {
				// Nothing was made: the forwarding server places it
				// again, passing this node over.
				w.Header().Set(noRoomHeader, "1")
			}
			return r, true, notConnected(t)
		}
		return r, true, s.forward(w, r, act, t)
	}
	t, ok, err := s.routeOf(r.Context(), act)
	switch {
	case err != nil && api.CodeOf(err) == api.CodeInternal:
		return r, true, err // the store cannot say (503 when unavailable)
	case err == nil && !ok:
		return r, false, nil
	case ok && s.linkedHere(t):
		err = s.forward(w, r, act, t)
		if act.Verb == "session.get" && api.IsCode(err, api.CodeUnavailable) {
			return r, false, nil // as an unrouted inspect's
		}
		return r, true, err
	}
	where := "another node"
	if ok {
		where = "node " + t.NodeName + " (" + t.NodeID + ")"
	}
	return r, true, api.Errorf(api.CodeConflict, "session %s: the call was routed here by %s, but %s holds the session: not routed again (retry: the next call is routed afresh)", act.SessionID, by, where)
}

// linkedHere reports whether t is a node this server reaches through its
// control connection: one connected here, or one whose URL is this
// server's (its connection dropped: forward answers 503 then).
func (s *Server) linkedHere(t routing.Target) bool {
	_, connected := s.linkTransport(t.NodeID)
	_, here := routing.LinkedHere(t, connected, s.ownURL())
	return here
}

// relayTransport is the transport over the control connection of t's
// node when this server relays the calls for it (routing.LinkedHere).
func (s *Server) relayTransport(t routing.Target) (http.RoundTripper, bool) {
	rt, connected := s.linkTransport(t.NodeID)
	if relay, _ := routing.LinkedHere(t, connected, s.ownURL()); !relay {
		return nil, false
	}
	return rt, true
}

// linkTransport is the transport to node id over its control connection
// to this server, ok false when it has none here.
func (s *Server) linkTransport(id string) (http.RoundTripper, bool) {
	if s.nodeLink == nil {
		return nil, false
	}
	return s.nodeLink.Transport(id)
}

// ownURL is the URL the other servers reach this server at (nil for
// none): that of the nodes whose control connection is here.
func (s *Server) ownURL() *url.URL {
	if s.nodeLink == nil {
		return nil
	}
	return routing.OwnURL(s.nodeLink.URL())
}

// notConnectedError is the refusal of a call for a node whose calls go
// through this server's end of its control connection, which is down.
type notConnectedError struct{ error }

func (e notConnectedError) Unwrap() error { return e.error }

// notConnected is the 503 of a call for node t while its control
// connection to this server is down: nothing changed.
func notConnected(t routing.Target) error {
	name := t.NodeName
	if name != t.NodeID {
		name += " (" + t.NodeID + ")"
	}
	return notConnectedError{api.Errorf(api.CodeUnavailable, "node %s is not connected to this server (its control connection dropped): retry; the call changed nothing", name)}
}

// wakes reports whether a call of verb may wake its session: a wake, and
// the calls that wake a parked session first (exec, files).
func wakes(verb string) bool {
	return verb == "session.wake" || verb == "session.exec" || strings.HasPrefix(verb, "file.")
}

// routeOf asks the router where act is carried out.
func (s *Server) routeOf(ctx context.Context, act Action) (routing.Target, bool, error) {
	if wakes(act.Verb) {
		return s.router.Wake(ctx, act.SessionID)
	}
	return s.router.Session(ctx, act.SessionID)
}

// forward carries r to t's server and copies its answer back, or, for a
// node whose control connection is to this server, relays it to the
// node over that connection; a server or node that cannot be reached is
// an error (503) for the gate to answer, as nothing was written then.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, act Action, t routing.Target) error {
	by := s.router.Node()
	if by == "" {
		by = "-"
	}
	if s.nodeLink != nil {
		if rt, ok := s.relayTransport(t); ok {
			s.log.Debug("relaying a call over a node's control connection", "action", act, "node", t.NodeID, "name", t.NodeName)
			t.URL = cmp.Or(t.URL, &url.URL{Scheme: "http", Host: t.NodeID})
			// What is relayed is for the node's cove API, whatever the
			// caller says: the E2B API's relay sets the header.
			r.Header.Del(nodelink.HeaderAPI)
			failed := routing.Forward(w, r, t, by, rt, s.log)
			switch {
			case failed == nil:
				return nil
			case errors.Is(failed, context.Canceled):
				return reported(failed)
			}
			if _, ok := s.linkTransport(t.NodeID); !ok {
				return api.Errorf(api.CodeUnavailable, "node %s (%s): its control connection to this server dropped during the call (%v): retry (through any server) once it is back", t.NodeName, t.NodeID, failed)
			}
			return api.Errorf(api.CodeUnavailable, "node %s (%s): relaying the call over its control connection failed: %v; retry (through any server)", t.NodeName, t.NodeID, failed)
		}
		if routing.SameServer(t.URL, s.ownURL()) {
			return notConnected(t)
		}
	}
	s.log.Debug("routing a call", "action", act, "node", t.NodeID, "name", t.NodeName, "to", t.URL.String())
	failed := routing.Forward(w, r, t, by, s.routeRT, s.log)
	if failed == nil {
		return nil
	}
	if errors.Is(failed, context.Canceled) {
		return reported(failed) // the client went away
	}
	return api.Errorf(api.CodeUnavailable, "node %s (%s): its server %s could not be reached: %v; the call changed nothing here: retry (through any server)",
		t.NodeName, t.NodeID, t.URL.Redacted(), failed)
}

// bufferCreate reads the body of a create that may be forwarded, and
// gives r a copy to decode; nil when the create is not routed.
func (s *Server) bufferCreate(r *http.Request, act Action) ([]byte, error) {
	if s.router == nil || act.Verb != "session.create" || r.Header.Get(routing.Header) != "" {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBytes+1))
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "read the request body: %v", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}

// noRoomHeader marks a create's 503 as a refusal for want of room now
// (session.IsNoRoom): nothing was made, and the server that forwarded it
// places it again on another node.
const noRoomHeader = "Cove-No-Room"

// maxReplacements bounds how many times one create is placed again after
// a node's server refused it for want of room.
const maxReplacements = 8

// forwardCreate carries a create that placement put on another server's
// node (err a *session.ElsewhereError) there, with its body; other
// errors come back as they are. A node whose server refuses it for want
// of room (its room taken since it was placed: a 503 with noRoomHeader)
// is passed over and the create placed again (handle runs the handler
// anew, with session.RefusedBy), here or on another node, until one
// takes it or none fits.
func (s *Server) forwardCreate(w http.ResponseWriter, r *http.Request, act Action, body []byte, err error, handle func(*http.Request) error) error {
	var refused []string
	for {
		var e *session.ElsewhereError
		if body == nil || !errors.As(err, &e) {
			return err
		}
		t, terr := routing.TargetOf(e.Node)
		if terr != nil {
			return terr
		}
		r2 := r.Clone(r.Context())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.ContentLength = int64(len(body))
		if len(refused) >= maxReplacements {
			return s.forward(w, r2, act, t)
		}
		bw := &bufferedAnswer{header: http.Header{}}
		ferr := s.forward(bw, r2, act, t)
		_, down := errors.AsType[notConnectedError](ferr)
		switch {
		case ferr != nil && !down:
			return ferr
		case !down && (bw.status != http.StatusServiceUnavailable || bw.header.Get(noRoomHeader) == ""):
			bw.copyTo(w)
			return nil
		}
		// No room there, or a node whose connection to this server is
		// down: nothing was made.
		refused = append(refused, t.NodeID)
		s.log.Info("a node refused a create placed on it for want of room, or is not connected: placed again", "node", t.NodeID, "name", t.NodeName, "refused_by", refused, "not_connected", down)
		r3 := r.Clone(session.RefusedBy(r.Context(), refused...))
		r3.Body = io.NopCloser(bytes.NewReader(body))
		r3.ContentLength = int64(len(body))
		err = handle(r3)
	}
}

// bufferedAnswer holds a forwarded create's answer (small JSON) until the
// forwarding server knows whether to pass it on or place the create
// again.
type bufferedAnswer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedAnswer) Header() http.Header { return b.header }

func (b *bufferedAnswer) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedAnswer) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// Flush does nothing: the answer is passed on whole.
func (b *bufferedAnswer) Flush() {}

// copyTo passes the answer on to w.
func (b *bufferedAnswer) copyTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(cmp.Or(b.status, http.StatusOK))
	_, _ = w.Write(b.body.Bytes())
}
