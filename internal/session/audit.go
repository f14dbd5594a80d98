package session

import (
	"context"
	"sync"

	"github.com/cove-dev/cove/internal/audit"
)

// Auditor sequences entries in the audit log; *audit.Log is one (see
// apiserver.Auditor).
type Auditor interface {
	Append(ctx context.Context, e audit.Entry) (uint64, error)
}

// AuditEvents makes an OnEvent that records in the audit log what the
// session layer does that no API call asked for (the API server records
// those at its gate): each Begin as an announcement (decision allow) whose
// failed append refuses the action, each Done as its outcome, with Ref the
// announcement's index. The actor is cove itself, or for what a guest
// asks (cove-agent park, cove-agent token) the agent of its session.
func AuditEvents(a Auditor) func(context.Context, Event) error {
	h := &auditHook{a: a, begun: map[uint64]uint64{}}
	return h.onEvent
}

type auditHook struct {
	a     Auditor
	mu    sync.Mutex
	begun map[uint64]uint64 // guarded by mu; Event.Seq → the announcement's index
}

func (h *auditHook) onEvent(ctx context.Context, ev Event) error {
	if ev.Cause == CauseAPI {
		return nil
	}
	e := audit.Entry{Action: string(ev.Kind), Actor: audit.Actor{Kind: audit.ActorCove},
		Target: audit.Target{Session: ev.Session, Template: ev.Template, Trigger: ev.Trigger, Audience: ev.Audience}}
	if ev.Cause == CauseGuest {
		e.Actor = audit.Actor{Kind: audit.ActorAgent, Session: ev.Session}
	}
	if ev.Phase == Begin {
		e.Decision = audit.Allow
		idx, err := h.a.Append(ctx, e)
		if err != nil {
			return err
		}
		h.mu.Lock()
		h.begun[ev.Seq] = idx
		h.mu.Unlock()
		return nil
	}
	o := audit.Outcome{DurationMS: ev.Duration.Milliseconds()}
	if ev.Err != nil {
		o.Error = ev.Err.Error()
	}
	e.Outcome = &o
	h.mu.Lock()
	idx, ok := h.begun[ev.Seq]
	delete(h.begun, ev.Seq)
	h.mu.Unlock()
	if ok {
		e.Ref = &idx
	}
	_, err := h.a.Append(ctx, e)
	return err
}
