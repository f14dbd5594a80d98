package apiserver

import (
	"context"
	"net/http"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/nodelink"
)

// NodeLink serves the routes nodes use to join and to open their
// control connection (nodelink.Hub has them). They take no API token: a
// join carries the join token, a connect the node's credential, and
// NodeLink checks them. Each writes its answer on success; an error
// before the answer began (an *api.Error for the client's faults) is the
// gate's to answer.
type NodeLink interface {
	// Join serves POST /v1/nodes/join.
	Join(w http.ResponseWriter, r *http.Request) error
	// Connect serves GET /v1/nodes/connect, a WebSocket upgrade that
	// lasts as long as the node's connection.
	Connect(w http.ResponseWriter, r *http.Request) error
	// Connected reports whether node id has a control connection to
	// this server (its own embedded node always has).
	Connected(id string) bool
	// Info asks node id who it is over its connection.
	Info(ctx context.Context, id string) (nodelink.Info, error)
	// Transport is a transport to node id's handler over its control
	// connection, ok false when the node is not connected to this
	// server (its embedded node included): a session-serving node's
	// API calls are relayed to it so.
	Transport(id string) (http.RoundTripper, bool)
	// URL is the URL the other servers reach this server at ("" for
	// none): that of the session-serving nodes connected here.
	URL() string
}

// nodeInfoTimeout bounds how long an inspect waits for the node's own
// answer, which it goes without past it.
const nodeInfoTimeout = 2 * time.Second

// linkState sets n.Connected from the node's control connection to this
// server.
func (s *Server) linkState(n *api.Node) {
	if s.nodeLink != nil {
		n.Connected = s.nodeLink.Connected(n.ID)
	}
}

// askNode sets n.Connected and, for a remote node connected here, the
// agent's version, asked over its connection; a node that does not
// answer in time is shown without it, and the failure logged.
func (s *Server) askNode(ctx context.Context, n *api.Node) {
	s.linkState(n)
	if !n.Connected || n.Embedded {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, nodeInfoTimeout)
	defer cancel()
	info, err := s.nodeLink.Info(ctx, n.ID)
	if err != nil {
		s.log.Warn("node inspect: the node did not say who it is", "node", n.ID, "err", err)
		return
	}
	n.Version = info.Version
}

// Verbs of the node routes, which no policy decides (publicVerbs).
const (
	verbNodeJoin    = "node.join"
	verbNodeConnect = "node.connect"
)

// joinNode serves POST /v1/nodes/join.
func (s *Server) joinNode(w http.ResponseWriter, r *http.Request) error {
	if s.nodeLink == nil {
		return api.Errorf(api.CodeForbidden, "joining is disabled: start the server with --join-token-file")
	}
	return s.nodeLink.Join(w, r)
}

// connectNode serves GET /v1/nodes/connect.
func (s *Server) connectNode(w http.ResponseWriter, r *http.Request) error {
	if s.nodeLink == nil {
		return api.Errorf(api.CodeUnavailable, "node.connect: this server takes no nodes")
	}
	return s.nodeLink.Connect(w, r)
}
