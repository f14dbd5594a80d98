package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
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
