package apiserver

import (
	"context"
	"net/http"
	"strings"

	"github.com/cove-dev/cove/api"
)

// Nodes manages the nodes, the VM hosts (/v1/nodes); *session.Manager
// is one. Unknown nodes are *api.Error CodeNotFound; removing a node that
// holds sessions and is not dead is CodeConflict.
type Nodes interface {
	// Nodes lists every node, ordered by name.
	Nodes(ctx context.Context) ([]api.Node, error)
	// Node returns the node with the given id or name.
	Node(ctx context.Context, idOrName string) (api.Node, error)
	CordonNode(ctx context.Context, idOrName string) (api.Node, error)
	UncordonNode(ctx context.Context, idOrName string) (api.Node, error)
	// DrainNode sets the node draining and parks its running sessions.
	DrainNode(ctx context.Context, idOrName string) (api.DrainResult, error)
	RemoveNode(ctx context.Context, idOrName string) error
}

// nodeParam is the {id} of a /v1/nodes route: a node's id or name.
func nodeParam(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if id == "" || len(id) > 253 || strings.ContainsAny(id, " /\\\x00") {
		return "", api.Errorf(api.CodeInvalid, "node %q: want a node's id or name", id)
	}
	return id, nil
}

func (s *Server) nodesOr503() (Nodes, error) {
	if s.nodes == nil {
		return nil, api.Errorf(api.CodeUnavailable, "nodes: this server keeps no node registry")
	}
	return s.nodes, nil
}

// listNodes serves GET /v1/nodes.
func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	ns, err := s.nodesOr503()
	if err != nil {
		return err
	}
	list, err := ns.Nodes(r.Context())
	if err != nil {
		return err
	}
	for i := range list {
		s.linkState(&list[i])
	}
	return writeJSON(w, http.StatusOK, api.NodeList{Nodes: list})
}

// getNode serves GET /v1/nodes/{id}: by id or by name.
// A node connected to this server is asked its version (askNode).
func (s *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	return s.nodeOp(w, r, func(ns Nodes, ctx context.Context, id string) (api.Node, error) {
		n, err := ns.Node(ctx, id)
		if err == nil {
			s.askNode(ctx, &n)
		}
		return n, err
	})
}

// cordonNode serves POST /v1/nodes/{id}/cordon.
func (s *Server) cordonNode(w http.ResponseWriter, r *http.Request) error {
	return s.nodeOp(w, r, Nodes.CordonNode)
}

// uncordonNode serves POST /v1/nodes/{id}/uncordon.
func (s *Server) uncordonNode(w http.ResponseWriter, r *http.Request) error {
	return s.nodeOp(w, r, Nodes.UncordonNode)
}

func (s *Server) nodeOp(w http.ResponseWriter, r *http.Request, op func(Nodes, context.Context, string) (api.Node, error)) error {
	ns, err := s.nodesOr503()
	if err != nil {
		return err
	}
	id, err := nodeParam(r)
	if err != nil {
		return err
	}
	n, err := op(ns, r.Context(), id)
	if err != nil {
		return err
	}
	s.linkState(&n)
	return writeJSON(w, http.StatusOK, n)
}

// drainNode serves POST /v1/nodes/{id}/drain.
func (s *Server) drainNode(w http.ResponseWriter, r *http.Request) error {
	ns, err := s.nodesOr503()
	if err != nil {
		return err
	}
	id, err := nodeParam(r)
	if err != nil {
		return err
	}
	res, err := ns.DrainNode(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// removeNode serves DELETE /v1/nodes/{id}.
func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) error {
	ns, err := s.nodesOr503()
	if err != nil {
		return err
	}
	id, err := nodeParam(r)
	if err != nil {
		return err
	}
	if err := ns.RemoveNode(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
