package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"log/slog"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/store"
)

// Auditor sequences entries in the audit log; *audit.Log is one. Append
// returns the entry's index once it is durable; any error means it is not
// (the gate then refuses the action it announced). It must be safe for
// concurrent use.
type Auditor interface {
	Append(ctx context.Context, e audit.Entry) (uint64, error)
}

// auditedVerbs are the verbs that change or reveal something: the gate
// (or, for decidedByHandler verbs, decide) appends their announcement
// after the policy allowed them and before the handler acts, and refuses
// the request with 503 when the log cannot take it. Listings and reads of
// metadata (session.list, session.get, template.list, token.list, …) are
// not logged; their denials are.
var auditedVerbs = map[string]bool{
	"session.create": true, "session.delete": true, "session.park": true,
	"session.wake": true, "session.revoke": true, "session.exec": true,
	"session.checkpoint": true, "session.checkpoint.delete": true, "session.rollback": true, "session.fork": true,

	"file.read": true, "file.write": true, "file.list": true, "file.stat": true,
	"file.remove": true, "file.mkdir": true,

	"image.build": true,

	"template.create": true, "template.delete": true, "template.rebuild": true, "template.pool": true,

	"hook.secret.put": true, "hook.secret.delete": true,

	"user.create": true, "user.delete": true,
	"team.member.add": true, "team.member.remove": true,
	"token.create": true, "token.revoke": true,

	"secret.put": true, "secret.delete": true,

	"audit.witness.add": true, "audit.witness.remove": true,

	"objects.gc": true,

	"node.cordon": true, "node.uncordon": true, "node.drain": true, "node.remove": true,
}

// auditAction is the entry's action for a verb: the verb itself, but for
// a token's creation, which the log calls by what it is, and a PTY attach.
func auditAction(a Action) string {
	switch {
	case a.Verb == "token.create":
		return "token.mint"
	case a.Verb == "session.exec" && a.TTY:
		return "session.pty"
	}
	return a.Verb
}

// auditState is what the gate knows of a request for the log: who asks,
// and the index of its announcement, which its outcome refers to.
type auditState struct {
	actor     audit.Actor
	announced bool   // the announcement is sequenced
	index     uint64 // its index
}

type auditKey struct{}

func auditStateOf(ctx context.Context) *auditState {
	st, _ := ctx.Value(auditKey{}).(*auditState)
	return st
}

// auditActor is p in the log: a user by its id and, for an OIDC user, its
// issuer and subject; an agent by its session and the user it acts for;
// the admin token as the user store.OwnerAdmin. Never a credential.
func auditActor(p identity.Principal) audit.Actor {
	switch p.Kind {
	case identity.KindAdminToken:
		return audit.Actor{Kind: audit.ActorUser, User: store.OwnerAdmin}
	case identity.KindAgent:
		return audit.Actor{Kind: audit.ActorAgent, User: p.User.ID, Session: p.Session}
	}
	return audit.Actor{Kind: audit.ActorUser, User: p.User.ID, Issuer: p.User.Issuer, Subject: p.User.Subject}
}

// auditTarget is what a is done to. Argv and Cwd are logged as given;
// env and stdin are not.
func auditTarget(a Action) audit.Target {
	return audit.Target{Session: a.SessionID, Template: a.Template, User: a.User, Path: a.Path,
		Argv: a.Argv, Cwd: a.Cwd, Secret: a.Secret, Token: a.Token, Image: a.Image, Team: a.Team, Hook: a.Hook, Witness: a.Witness, Node: a.Node}
}

// announce appends a's announcement (decision allow) when its verb is
// audited, before the action takes effect. A log that cannot take it
// refuses the action: 503 unavailable.
func (s *Server) announce(ctx context.Context, a Action) error {
	st := auditStateOf(ctx)
	if s.auditor == nil || !auditedVerbs[a.Verb] || st == nil {
		return nil
	}
	idx, err := s.auditor.Append(ctx, audit.Entry{Actor: st.actor, Action: auditAction(a), Target: auditTarget(a), Decision: audit.Allow})
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "audit: action refused: its entry cannot be logged", slog.Any("action", a), slog.Any("err", err))
		return api.Errorf(api.CodeUnavailable, "audit log unavailable: %s refused, as it cannot be recorded; try again later", a.Verb)
	}
	st.announced, st.index = true, idx
	return nil
}

// outcome appends how an announced action ended, referring to its
// announcement. The action has happened: a log that cannot take it is
// logged, and the announcement without an outcome stays as the record.
func (s *Server) outcome(ctx context.Context, a Action, o audit.Outcome) {
	st := auditStateOf(ctx)
	if s.auditor == nil || st == nil || !st.announced {
		return
	}
	ref := st.index
	// The request may be gone (a client that hung up): the outcome is
	// still recorded.
	ctx = context.WithoutCancel(ctx)
	if _, err := s.auditor.Append(ctx, audit.Entry{Actor: st.actor, Action: auditAction(a), Target: auditTarget(a), Outcome: &o, Ref: &ref}); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "audit: outcome not logged", slog.Any("action", a), slog.Uint64("ref", ref), slog.Any("err", err))
	}
}

// auditRefusal appends a deny entry for a request refused 401 (action
// auth.failed, actor anonymous) or 403 (the verb, actor the principal).
// Best effort: the answer stays 401 or 403 whatever the log says.
func (s *Server) auditRefusal(ctx context.Context, a Action, err error) {
	st := auditStateOf(ctx)
	if s.auditor == nil || st == nil {
		return
	}
	e := audit.Entry{Action: auditAction(a), Target: auditTarget(a), Decision: audit.Deny,
		Outcome: &audit.Outcome{Error: err.Error()}}
	switch api.CodeOf(err) {
	case api.CodeUnauthorized:
		e.Action, e.Actor = "auth.failed", audit.Actor{Kind: audit.ActorAnonymous}
	case api.CodeForbidden:
		e.Actor = st.actor
	default:
		return
	}
	if e.Action == "" {
		e.Action = "request"
	}
	if _, err := s.auditor.Append(context.WithoutCancel(ctx), e); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "audit: refusal not logged", slog.Any("action", a), slog.Any("err", err))
	}
}

// execOutcome is an exec's end in the log.
func execOutcome(st ExitStatus, err error, start time.Time) audit.Outcome {
	o := audit.Outcome{DurationMS: time.Since(start).Milliseconds()}
	switch {
	case err != nil:
		o.Error = err.Error()
	case st.TimedOut:
		o.Error = "timed out"
	case st.Signal != "":
		o.Error = "signal " + st.Signal
	}
	if err == nil {
		o.ExitCode = &st.Code
	}
	return o
}

// digest counts and hashes the bytes that pass through it, for a file
// transfer's outcome: size and SHA-256 of what moved, never the bytes.
type digest struct {
	h hash.Hash
	n int64
}

func newDigest() *digest { return &digest{h: sha256.New()} }

func (d *digest) Write(p []byte) (int, error) {
	d.h.Write(p)
	d.n += int64(len(p))
	return len(p), nil
}

func (d *digest) outcome(err error) audit.Outcome {
	n := d.n
	o := audit.Outcome{Size: &n, SHA256: hex.EncodeToString(d.h.Sum(nil))}
	if err != nil {
		o.Error = err.Error()
	}
	return o
}

// teeReader hashes what r gives into d.
func (d *digest) reader(r io.Reader) io.Reader { return io.TeeReader(r, d) }
