package e2b

import (
	"context"
	"net/http"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store"
)

// accessTokenIssuer marks, in the audit log, the actions done with a
// sandbox's envd access token: they act for the sandbox's owner, who
// holds no other credential there.
const accessTokenIssuer = "e2b-access-token"

// auditedVerbs are the control plane's verbs that change something: each
// is announced in the audit log before it is done (as cove's API gate
// does), or refused with 503.
var auditedVerbs = map[string]bool{"session.create": true, "session.delete": true, "session.park": true, "session.wake": true,
	"session.checkpoint": true, "session.checkpoint.delete": true, "session.fork": true}

// actorOf is p in the audit log (as apiserver words it).
func actorOf(p identity.Principal) audit.Actor {
	switch p.Kind {
	case identity.KindAdminToken:
		return audit.Actor{Kind: audit.ActorUser, User: store.OwnerAdmin}
	case identity.KindAgent:
		return audit.Actor{Kind: audit.ActorAgent, User: p.User.ID, Session: p.Session}
	}
	return audit.Actor{Kind: audit.ActorUser, User: p.User.ID, Issuer: p.User.Issuer, Subject: p.User.Subject}
}

// announce appends an allowed action to the audit log before it is done;
// a log that cannot take it refuses the action (CodeUnavailable).
func (s *Server) announce(ctx context.Context, actor audit.Actor, action string, target audit.Target) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if _, err := s.cfg.Audit.Append(ctx, audit.Entry{Actor: actor, Action: action, Target: target, Decision: audit.Allow}); err != nil {
		s.log.ErrorContext(ctx, "e2b: audit: action refused: its entry cannot be logged", "action", action, "session", target.Session, "err", err)
		return api.Errorf(api.CodeUnavailable, "audit log unavailable: %s refused, as it cannot be recorded; try again later", action)
	}
	return nil
}

// announceEnvd announces an envd action on the request's sandbox, done
// for its owner with its access token.
func (s *Server) announceEnvd(r *http.Request, action string, target audit.Target) error {
	target.Session = sandboxID(r)
	owner, _ := r.Context().Value(ownerKey{}).(string)
	return s.announce(r.Context(), audit.Actor{Kind: audit.ActorUser, User: owner, Issuer: accessTokenIssuer}, action, target)
}

// refused appends a deny entry, best effort (the answer is the same
// whatever the log says): a refused API key or access token as
// auth.failed by an anonymous actor, a policy's denial as the verb by the
// principal.
func (s *Server) refused(ctx context.Context, actor audit.Actor, action string, target audit.Target, why string) {
	if s.cfg.Audit == nil {
		return
	}
	e := audit.Entry{Actor: actor, Action: action, Target: target, Decision: audit.Deny, Outcome: &audit.Outcome{Error: why}}
	if _, err := s.cfg.Audit.Append(context.WithoutCancel(ctx), e); err != nil {
		s.log.ErrorContext(ctx, "e2b: audit: refusal not logged", "action", action, "err", err)
	}
}
