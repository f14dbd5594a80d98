package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// Checkpoints, rollback and fork of a session (see package session).

func (s *Server) createCheckpoint(w http.ResponseWriter, r *http.Request) error {
	var req api.CheckpointRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	liftDeadlines(w) // the RAM copy of a large guest takes a while
	c, err := s.sessions.CreateCheckpoint(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, c)
}

func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request) error {
	list, err := s.sessions.ListCheckpoints(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, list)
}

func (s *Server) getCheckpoint(w http.ResponseWriter, r *http.Request) error {
	c, err := s.sessions.GetCheckpoint(r.Context(), r.PathValue("id"), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, c)
}

func (s *Server) deleteCheckpoint(w http.ResponseWriter, r *http.Request) error {
	if err := s.sessions.DeleteCheckpoint(r.Context(), r.PathValue("id"), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) rollbackSession(w http.ResponseWriter, r *http.Request) error {
	var req api.RollbackRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Checkpoint == "" {
		return api.Errorf(api.CodeInvalid, "rollback: checkpoint is required")
	}
	liftDeadlines(w)
	sess, err := s.sessions.Rollback(r.Context(), r.PathValue("id"), req.Checkpoint)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

func (s *Server) forkSession(w http.ResponseWriter, r *http.Request) error {
	var req api.ForkRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	liftDeadlines(w)
	forks, err := s.sessions.Fork(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, api.ForkResponse{Sessions: forks})
}
