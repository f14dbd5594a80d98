package session

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Routing between the servers that share a store (issue 19).
//
// Each server with an embedded node advertises the URL other servers
// reach it at (Node.URL, AdvertiseNode); a 'cove node' that serves
// sessions (a Linked manager of its own) has the URL of the server that
// holds its control connection, which relays the calls over it. A call
// about a session is carried out by the server whose node holds it, or
// by the node itself: the API server forwards it there (package
// routing, apiserver's Config.Router). The manager's part
// is placement, which with Config.Route may choose another server's node
// for a new session and says so with *ElsewhereError, and deliveries,
// which the holder's server makes (deliversFor). A call forwarded here is
// marked (Here): it acts on this node or not at all, so that a call is
// forwarded once and never loops.

// ElsewhereError is the refusal of a create that placement put on Node,
// another server's embedded node: the API server carries the request
// there (unchanged) rather than failing it. Unwrapped as an *api.Error
// (503, naming the node) by a caller that does not route.
type ElsewhereError struct {
	Node store.Node
}

func (e *ElsewhereError) Error() string {
	return fmt.Sprintf("placed on node %s (%s), whose server is %s: the call is carried out there", e.Node.Name, e.Node.ID, e.Node.URL)
}

// Unwrap makes the refusal an api.Error for callers that do not route.
func (e *ElsewhereError) Unwrap() error {
	return api.Errorf(api.CodeUnavailable, "%s", e.Error())
}

// refusedKey carries the nodes whose servers refused a create routed to
// them for want of room (RefusedBy).
type refusedKey struct{}

// RefusedBy marks ctx as that of a create placed again after the servers
// of nodes refused it for want of room (IsNoRoom): placement passes
// those nodes over.
func RefusedBy(ctx context.Context, nodes ...string) context.Context {
	return context.WithValue(ctx, refusedKey{}, append(slices.Clip(refusedBy(ctx)), nodes...))
}

// refusedBy is the nodes RefusedBy marked ctx with.
func refusedBy(ctx context.Context) []string {
	v, _ := ctx.Value(refusedKey{}).([]string)
	return v
}

// IsNoRoom reports whether err refuses a create or wake for want of room
// now: no node fits, or this host's admission is full. Nothing was made:
// the create may be placed again on another node.
func IsNoRoom(err error) bool { return isHostFull(err) }

// hereKey marks a context routed here.
type hereKey struct{}

// Here marks ctx as the context of a call another server routed to this
// one: it is carried out on this server's node, or refused, never
// forwarded again (placement then considers this node alone).
func Here(ctx context.Context) context.Context { return context.WithValue(ctx, hereKey{}, true) }

// routedHere reports whether ctx is marked by Here.
func routedHere(ctx context.Context) bool {
	v, _ := ctx.Value(hereKey{}).(bool)
	return v
}

// unusable is why node n takes no new session from this server ("" if
// it does): this server's own node does, unless it runs none; another
// node does when calls are routed (Config.Route), it has a URL and the
// call was not routed here already. That node is another server's
// embedded node, at its server's advertise URL, or a 'cove node' that
// serves sessions, at the URL of the server holding its control
// connection (which relays the calls over it).
func (m *Manager) unusable(ctx context.Context, n store.Node) string {
	switch {
	case n.ID == m.cfg.Node && !m.cfg.NoNode:
		return ""
	case routedHere(ctx):
		return "the call was routed to another node's server"
	case !m.cfg.Route:
		return "calls are not routed to other servers (this server advertises no URL: --advertise-url)"
	case !n.Embedded && n.URL == "":
		return "it runs no sessions ('cove node' started without the shared store, --db), or its control connection is to a server that advertises no URL (--advertise-url)"
	case n.URL == "":
		return "its server advertises no URL (--advertise-url)"
	}
	return ""
}

// AdvertiseNode records url as where the other servers reach the server
// of node id (Node.URL), reading the node again on a conflict; "" says
// it cannot be reached (its sessions are not routed to).
func AdvertiseNode(ctx context.Context, st store.Store, id, url string) error {
	return advertiseNode(ctx, st, id, func(n *store.Node) *string { return &n.URL }, url)
}

// AdvertiseNodeE2B records url as where the other servers reach the E2B
// API of node id's server (store.Node.E2BURL), as AdvertiseNode does.
func AdvertiseNodeE2B(ctx context.Context, st store.Store, id, url string) error {
	return advertiseNode(ctx, st, id, func(n *store.Node) *string { return &n.E2BURL }, url)
}

// advertiseNode sets the field of node id's record that field points to
// to url, retrying a lost compare-and-swap.
func advertiseNode(ctx context.Context, st store.Store, id string, field func(*store.Node) *string, url string) error {
	err := store.ChangeNode(ctx, st, id, func(n *store.Node) bool {
		if *field(n) == url {
			return false
		}
		*field(n) = url
		return true
	})
	if err != nil {
		return fmt.Errorf("node: advertise %s: %w", id, err)
	}
	return nil
}

// deliversFor reports whether this server makes the deliveries of
// session id: its node holds it (or no node registry is used), or the
// node that holds it is dead or removed and this server runs VMs (the
// wake moves the session here), or draining with the session parked and
// stored and this server's node takes sessions (the same). Another live
// node's server makes them.
func (m *Manager) deliversFor(ctx context.Context, id string) bool {
	if m.cfg.Node == "" && !m.cfg.NoNode {
		return true
	}
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return !m.cfg.NoNode // the delivery fails, saying why
	}
	if m.holds(rec, m.cfg.Node) && !m.cfg.NoNode {
		return !m.movesAway(ctx, rec)
	}
	n, err := m.cfg.Store.GetNode(ctx, rec.Node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return !m.cfg.NoNode
	case err != nil:
		return false
	}
	// A draining node's stored parked session wakes on a node that takes
	// sessions (drain.go).
	draining := n.Admin == store.NodeDraining && rec.State == api.StateParked && rec.StoredManifest != ""
	return (n.Dead || draining && m.nodeSchedulable(ctx)) && !m.cfg.NoNode
}

// rehome moves the paths of a parked session's machine record that lie
// in its session dir on another node (from) into this node's (to), and
// those in the other node's home into this node's (see homes.go): a
// session that wakes here from a dead or draining node's stored snapshot
// has its files restored from the object store into this node's dir,
// not read from where the other node kept them, and reads the kernel,
// image and template version files this node keeps. The last stored
// snapshot's record moves the same.
func rehome(b []byte, from, to string) []byte {
	mach, err := decodeMachine(b)
	if err != nil || from == to || from == "" {
		return b
	}
	return relocate(mach, from, to, homeOf(from), homeOf(to)).encode()
}

// sessionDirOf is the session dir a parked machine record names: that of
// its RAM file; "" if it names none.
func sessionDirOf(b []byte) string {
	mach, err := decodeMachine(b)
	if err != nil || mach.Parked == nil || mach.Parked.Mem == "" {
		return ""
	}
	return filepath.Dir(mach.Parked.Mem)
}
