package api

import (
	"context"
	"net/http"
	"net/url"
)

// CreateCheckpoint saves a running session's whole machine while it runs
// on. A parked session, or a name in use, is an *Error with CodeConflict.
func (c *Client) CreateCheckpoint(ctx context.Context, id string, req CheckpointRequest) (Checkpoint, error) {
	var out Checkpoint
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/checkpoints"), nil, req, &out)
	return out, err
}

// ListCheckpoints lists a session's checkpoints, oldest first.
func (c *Client) ListCheckpoints(ctx context.Context, id string) ([]Checkpoint, error) {
	var out []Checkpoint
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, "/checkpoints"), nil, nil, &out)
	return out, err
}

// GetCheckpoint returns one checkpoint of a session.
func (c *Client) GetCheckpoint(ctx context.Context, id, name string) (Checkpoint, error) {
	var out Checkpoint
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, "/checkpoints/"+url.PathEscape(name)), nil, nil, &out)
	return out, err
}

// DeleteCheckpoint removes one checkpoint of a session.
func (c *Client) DeleteCheckpoint(ctx context.Context, id, name string) error {
	return c.doJSON(ctx, http.MethodDelete, sessionPath(id, "/checkpoints/"+url.PathEscape(name)), nil, nil, nil)
}

// Rollback puts a session back to its checkpoint name and returns it
// running. An unknown name is an *Error with CodeNotFound.
func (c *Client) Rollback(ctx context.Context, id, name string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/rollback"), nil, RollbackRequest{Checkpoint: name}, &s)
	return s, err
}

// Fork makes sessions from a session's checkpoint (req.From) or from its
// running state, and returns them running.
func (c *Client) Fork(ctx context.Context, id string, req ForkRequest) ([]Session, error) {
	var out ForkResponse
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/fork"), nil, req, &out)
	return out.Sessions, err
}
