package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cove-dev/cove/internal/agentproto"
)

// Checkpoints asked for from inside the guest.
//
// 'cove-agent checkpoint' sends a GuestCheckpoint request and waits. The
// host pauses the guest and saves it with the request unanswered, lets it
// run again, and answers: the tool prints the checkpoint's name. A guest
// later restored from that checkpoint (a rollback, a fork) wakes with the
// same request unanswered, and its tool waiting still; the host tells the
// restored guest so (agentproto.OpRestored, naming the request) before it
// opens the connection's listen stream, and the tool returns again, in
// that timeline, saying how it came back. A guest whose connection ended
// with the request unanswered, and whose next listen stream opened
// without such a word, was not restored: the tool fails (the host went
// away; the checkpoint may or may not have been made).
//
// 'cove-agent rollback NAME' sends a GuestRollback request. The host
// answers only a refusal (an unknown name: nothing changed); a rollback
// stops this guest, and the guest restored from NAME goes on, where its
// 'cove-agent checkpoint' returns "rolled back". Since that call fails
// (a distinct exit status), a line such as
//
//	cove-agent checkpoint --name before && risky-step || cove-agent rollback before
//
// would then ask for the same rollback again, for ever. So a guest whose
// checkpoint call returned "rolled back to NAME" refuses a rollback to NAME
// (Already), without asking the host, until it takes another checkpoint;
// --again (ToolRequest.Again) rolls back all the same.

// checkpoint asks the host for a checkpoint (request id on l) and returns
// the tool's reply: in this timeline, or in one restored from it.
func (a *Agent) checkpoint(ctx context.Context, l *listener, id int64, answers chan agentproto.GuestReply, req ToolRequest) ToolReply {
	restored := make(chan agentproto.Restored, 1)
	a.mu.Lock()
	if a.restoring == nil {
		a.restoring = map[int64]chan agentproto.Restored{}
	}
	a.restoring[id] = restored
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.restoring, id)
		a.mu.Unlock()
	}()
	// A failed write does not mean the host never read the request: yamux
	// can report the session's end for a frame it already sent, and a
	// guest saved while this write waited for that word wakes from the
	// checkpoint with the write failing. So a write error waits, as a
	// connection that ended unanswered does, for the next listen stream.
	if err := l.fw.json(agentproto.FrameRequest, agentproto.GuestRequest{ID: id, Kind: agentproto.GuestCheckpoint, Name: req.Name}); err == nil {
		select {
		case r := <-answers:
			if r.Error != "" || r.Checkpoint == "" {
				return ToolReply{Error: "checkpoint: " + cmp.Or(r.Error, "the host named no checkpoint")}
			}
			a.mu.Lock()
			a.rolledBackTo = "" // a new checkpoint: see rollbackGuard
			a.mu.Unlock()
			return ToolReply{Checkpoint: r.Checkpoint}
		case n := <-restored:
			return a.restoredReply(n)
		case <-l.done:
		case <-ctx.Done():
			return ToolReply{Error: "checkpoint: the agent is stopping"}
		}
	}
	// The connection ended unanswered. A guest restored from this
	// checkpoint is told so before its next listen stream opens.
	if _, err := a.nextListener(ctx, l, hostReturnLimit); err != nil {
		return ToolReply{Error: fmt.Sprintf("checkpoint: the host went away before it answered (%v); the checkpoint may or may not have been made", err)}
	}
	select {
	case n := <-restored:
		return a.restoredReply(n)
	default:
		return ToolReply{Error: "checkpoint: the host went away before it answered; the checkpoint may or may not have been made"}
	}
}

// restoredReply is a checkpoint call's reply in a guest restored from its
// checkpoint, as n says.
func (a *Agent) restoredReply(n agentproto.Restored) ToolReply {
	a.mu.Lock()
	a.rolledBackTo = ""
	if n.Kind == agentproto.RestoredRollback {
		a.rolledBackTo = n.Checkpoint
	}
	a.mu.Unlock()
	return ToolReply{Checkpoint: n.Checkpoint, Restored: n.Kind, Parent: n.Parent}
}

// rollbackGuard refuses req, a rollback, if this guest's checkpoint call
// returned "rolled back" to the same checkpoint and it took none since
// (see the comment at the top of this file), unless req.Again.
func (a *Agent) rollbackGuard(req ToolRequest) (ToolReply, bool) {
	a.mu.Lock()
	back := a.rolledBackTo
	a.mu.Unlock()
	if req.Again || back == "" || back != req.Name {
		return ToolReply{}, false
	}
	return ToolReply{Checkpoint: back, Restored: agentproto.RestoredRollback, Already: true}, true
}

// rollback asks the host to roll this session back (request id on l). It
// returns only if that did not happen: on success this guest is stopped.
func (a *Agent) rollback(ctx context.Context, l *listener, id int64, answers chan agentproto.GuestReply, req ToolRequest) ToolReply {
	// A failed write may have reached the host all the same (see
	// checkpoint), and a rollback ends the connection: it waits, as a
	// connection that ended unanswered does, for the host to come back.
	if err := l.fw.json(agentproto.FrameRequest, agentproto.GuestRequest{ID: id, Kind: agentproto.GuestRollback, Name: req.Name}); err == nil {
		select {
		case r := <-answers:
			return ToolReply{Error: "rollback: " + cmp.Or(r.Error, "the host refused without a reason")}
		case <-l.done:
		case <-ctx.Done():
			return ToolReply{Error: "rollback: the agent is stopping"}
		}
	}
	// The host ends the connection to roll back, and this guest stops: a
	// host that comes back to it did not roll it back.
	if _, err := a.nextListener(ctx, l, hostReturnLimit); err != nil {
		return ToolReply{Error: fmt.Sprintf("rollback: the host went away and did not come back (%v); the rollback may or may not happen", err)}
	}
	return ToolReply{Error: "rollback: the host went away before it answered; nothing was rolled back (this guest runs on)"}
}

// restored hands what a host says a guest was restored from to the
// checkpoint call it answers, if that one still waits.
func (a *Agent) restored(w io.Writer, req agentproto.Request) {
	if req.Restored == nil {
		respondErr(w, agentproto.CodeInvalid, errors.New("restored: from what?"))
		return
	}
	a.mu.Lock()
	ch := a.restoring[req.Restored.Request]
	a.mu.Unlock()
	if ch == nil {
		respondErr(w, agentproto.CodeNotFound, fmt.Errorf("restored: no checkpoint request %d waits", req.Restored.Request))
		return
	}
	select {
	case ch <- *req.Restored:
	default: // told twice: the first stands
	}
	respond(w, agentproto.Response{})
}

// CheckpointResult is what a checkpoint call returns: the checkpoint's
// Name; and in a guest restored from it, how (Restored: a
// agentproto.RestoredRollback or RestoredFork; "" where it was made) and,
// for a fork, the session it was made from (Parent).
type CheckpointResult struct {
	Name     string
	Restored string
	Parent   string
}

// Checkpoint asks the host, through the agent, to checkpoint this session
// (as name; "" for the host's default) and returns once it is made, or
// once a guest restored from it runs (see the top of this file). It is
// what 'cove-agent checkpoint' runs inside the guest.
func Checkpoint(ctx context.Context, name string) (CheckpointResult, error) {
	r, err := askAgent(ctx, ToolRequest{Kind: agentproto.GuestCheckpoint, Name: name})
	return CheckpointResult{Name: r.Checkpoint, Restored: r.Restored, Parent: r.Parent}, err
}

// ErrAlreadyRolledBack is Rollback's error when this guest's checkpoint
// call returned "rolled back" to that checkpoint already, and it took
// none since: nothing was done.
var ErrAlreadyRolledBack = errors.New("this guest was rolled back to that checkpoint already, and took no checkpoint since: nothing done (--again rolls back all the same)")

// Rollback asks the host, through the agent, to roll this session back to
// its checkpoint name; again overrides ErrAlreadyRolledBack. It returns
// only if that did not happen: on success this guest is stopped (the one
// restored from name goes on). It is what 'cove-agent rollback' runs.
func Rollback(ctx context.Context, name string, again bool) error {
	r, err := askAgent(ctx, ToolRequest{Kind: agentproto.GuestRollback, Name: name, Again: again})
	if err != nil {
		return err
	}
	if r.Already {
		return fmt.Errorf("rollback %s: %w", name, ErrAlreadyRolledBack)
	}
	return fmt.Errorf("rollback %s: the agent answered, but not why", name)
}
