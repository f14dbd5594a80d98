package session

import (
	"context"
	"errors"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
)

// Checkpoints and rollbacks a guest asks for itself ('cove-agent
// checkpoint', 'cove-agent rollback'), over its agent's listen stream.
//
// A guest's request acts as its session, as its park does: no policy is
// asked (the guest is the session, and reaches only its own), and each
// is told to Config.OnEvent with CauseGuest (the audit log's actor is the
// session's agent), which may refuse it. What it can do is what the API's
// checkpoint and rollback do, with the same errors (a parked session, an
// unknown or taken name: nothing changed).
//
// The tool that asked for a checkpoint waits for its answer while the
// guest is saved, so the checkpoint's memory holds the request
// unanswered. The checkpoint's manifest keeps its id
// (machine.GuestRequest). A guest restored from it — by a rollback (the
// parked record keeps the word to say, machine.Restore, so a server stop
// before the wake loses nothing), or as a fork — is told so on its first
// connection, before its requests are served (tellRestored), and its tool
// returns again there (see internal/agent/checkpoint.go for what it
// prints). A server stop between the wake's record and that word leaves
// the tool to fail on its own (its host went away).

// guestCheckpoint takes a checkpoint of session id for its guest's
// request req and returns its name.
func (m *Manager) guestCheckpoint(id string, req agentproto.GuestRequest) (string, error) {
	ctx := context.Background()
	// A bad name costs the host nothing: refused before it counts.
	if err := validCheckpointName(req.Name); err != nil {
		return "", err
	}
	if err := m.guestAllowed(id, "checkpoint"); err != nil {
		return "", err
	}
	done, err := m.guestTurn(ctx)
	if err != nil {
		return "", err
	}
	defer done()
	ev, err := m.beginEvent(ctx, Event{Kind: EventCheckpoint, Cause: CauseGuest, Session: id})
	if err != nil {
		return "", err
	}
	start := time.Now()
	c, err := m.createCheckpoint(ctx, id, api.CheckpointRequest{Name: req.Name}, req.ID)
	m.doneEvent(ctx, ev, start, err)
	if err != nil {
		return "", err
	}
	m.cfg.Log.Info("guest checkpointed its session", "session", id, "checkpoint", c.Name, "pause_ms", c.PauseMillis)
	return c.Name, nil
}

// guestRollback rolls session id back to the checkpoint its guest's
// request req names. An unknown name, or a session not running, is
// refused before anything changes.
func (m *Manager) guestRollback(id string, req agentproto.GuestRequest) error {
	ctx := context.Background()
	if req.Name == "" {
		return errors.New("rollback: no checkpoint named")
	}
	if err := validCheckpointName(req.Name); err != nil {
		return err
	}
	if _, err := m.cfg.Store.GetCheckpoint(ctx, id, req.Name); err != nil {
		return checkpointNotFound(id, req.Name, err)
	}
	if err := m.guestAllowed(id, "rollback"); err != nil {
		return err
	}
	done, err := m.guestTurn(ctx)
	if err != nil {
		return err
	}
	defer done()
	ev, err := m.beginEvent(ctx, Event{Kind: EventRollback, Cause: CauseGuest, Session: id})
	if err != nil {
		return err
	}
	start := time.Now()
	m.cfg.Log.Info("guest asks to roll back", "session", id, "checkpoint", req.Name)
	_, err = m.rollback(ctx, id, req.Name, CauseGuest)
	m.doneEvent(ctx, ev, start, err)
	if err != nil {
		m.cfg.Log.Warn("guest's rollback failed", "session", id, "checkpoint", req.Name, "err", err)
	}
	return err
}

// tellRestored tells the guest of l, on its connection c, what it was
// restored from, if it is yet to be told (live.restore). A connection
// that fails keeps it for the next (watchAgent connects again); a guest
// that says no tool waits for it (gone meanwhile) is told once only.
func (m *Manager) tellRestored(id string, l *live, c *agentproto.Client) {
	r := l.pendingRestore()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.answerTimeout())
	defer cancel()
	err := c.Restored(ctx, *r)
	var remote *agentproto.RemoteError
	if err != nil && !errors.As(err, &remote) {
		m.cfg.Log.Warn("tell the guest it was restored: the connection failed; telling the next one", "session", id, "err", err)
		return
	}
	l.agentMu.Lock()
	if l.restore == r {
		l.restore = nil
	}
	l.agentMu.Unlock()
	if err != nil {
		m.cfg.Log.Warn("guest not told it was restored", "session", id, "kind", r.Kind, "checkpoint", r.Checkpoint, "err", err)
		return
	}
	m.cfg.Log.Info("guest told it was restored", "session", id, "kind", r.Kind, "checkpoint", r.Checkpoint)
}
