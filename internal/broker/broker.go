// Package broker ties sessions to the egress proxy: for each connection a
// guest makes, it reads the session's record and builds what the proxy
// needs of it — the rules it may use (its own, its template's and the
// operator's), the credentials of its owner that the proxy adds on the
// way out, and whether its egress was revoked. It implements
// session.Egress.
package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/egress"
	"github.com/cove-dev/cove/internal/store"
)

// Credentials resolves the credentials a session's requests carry: those
// of its owner (the user, the user's teams) and of its template.
type Credentials interface {
	For(ctx context.Context, owner, template string) ([]egress.Credential, error)
}

// Config is what a Broker works with.
type Config struct {
	Proxy *egress.Proxy
	CA    *egress.CA
	Store store.Store
	// Credentials may be nil: no request carries a credential.
	Credentials Credentials
	// Operator are rules every session may use (cove server --egress-allow).
	Operator egress.Rules
	// Authorize, when set, has the last word on each decision (the
	// operator's policy); see egress.Session.Authorize.
	Authorize func(ctx context.Context, rec store.Session, t egress.Target, ruleAllowed bool, ruleReason string) (bool, string)
	// Audit, when set, sequences each allow in the audit log before it
	// takes effect (egress.Session.Admit): an allow the log cannot take
	// is a deny, "audit log unavailable". Denies are logged by
	// AuditDenials, best effort.
	Audit Auditor
	Log   *slog.Logger
}

// Auditor sequences entries in the audit log; *audit.Log is one.
type Auditor interface {
	Append(ctx context.Context, e audit.Entry) (uint64, error)
}

// egressEntry is an egress decision in the audit log: by the session's
// agent (or, for a template's build, cove itself), to a host, port,
// method and path, with the names of the credentials it carries.
func egressEntry(d egress.Decision, template string) audit.Entry {
	e := audit.Entry{Time: d.Time, Action: "egress",
		Actor:  audit.Actor{Kind: audit.ActorAgent, Session: d.Session, User: d.Owner},
		Target: audit.Target{Session: d.Session, Host: d.Host, Port: d.Port, Method: d.Method, Path: d.Path, Secret: d.Credential},
	}
	if template != "" {
		e.Actor = audit.Actor{Kind: audit.ActorCove}
		e.Target.Session, e.Target.Template = "", template
	}
	e.Decision = audit.Allow
	if !d.Allowed {
		e.Decision, e.Outcome = audit.Deny, &audit.Outcome{Error: d.Reason}
	}
	return e
}

// admit is an egress.Session.Admit that sequences each allow in the log.
func (b *Broker) admit(template string) func(ctx context.Context, d egress.Decision) error {
	if b.cfg.Audit == nil {
		return nil
	}
	return func(ctx context.Context, d egress.Decision) error {
		if _, err := b.cfg.Audit.Append(ctx, egressEntry(d, template)); err != nil {
			b.cfg.Log.Error("egress refused: the audit log cannot record it", "session", d.Session, "host", d.Host, "err", err)
			return fmt.Errorf("audit log unavailable: the request cannot be recorded, so it is refused")
		}
		return nil
	}
}

// AuditDenials is an egress.Config.OnDecision that appends each deny to
// a's log, best effort (a failure is logged): the allows were sequenced
// before they took effect (Config.Audit).
func AuditDenials(a Auditor, log *slog.Logger) func(egress.Decision) {
	return func(d egress.Decision) {
		if d.Allowed {
			return
		}
		template, ok := strings.CutPrefix(d.Session, buildPrefix)
		if !ok {
			template = ""
		}
		if _, err := a.Append(context.Background(), egressEntry(d, template)); err != nil {
			log.Error("audit: egress denial not logged", "session", d.Session, "host", d.Host, "err", err)
		}
	}
}

// buildPrefix starts the egress session id of a template's build.
const buildPrefix = "build of template "

// Broker implements session.Egress.
type Broker struct {
	cfg Config
}

// New returns a broker.
func New(cfg Config) *Broker {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Broker{cfg: cfg}
}

// Setup is what a guest needs: the CA whose certificates it must trust.
func (b *Broker) Setup() agentproto.EgressSetup {
	return agentproto.EgressSetup{CACert: b.cfg.CA.CertPEM()}
}

// Cut closes session id's open connections.
func (b *Broker) Cut(id string) {
	if n := b.cfg.Proxy.Cut(id); n > 0 {
		b.cfg.Log.Info("egress cut", "session", id, "connections", n)
	}
}

// Serve serves one egress connection of session id.
func (b *Broker) Serve(ctx context.Context, c net.Conn, id string) {
	rec, err := b.cfg.Store.GetSession(ctx, id)
	if err != nil {
		// A warm pool's clone has no record until it is claimed; a
		// session being removed has none any more: nothing is allowed.
		rec = store.Session{ID: id}
	}
	s, err := b.session(ctx, rec)
	if err != nil {
		b.cfg.Log.Warn("egress: session rules", "session", id, "err", err)
		s = &egress.Session{ID: id, Owner: rec.Owner}
	}
	b.cfg.Proxy.ServeConn(ctx, c, s)
}

// Resolved records that a program in session id's guest tried to
// resolve name itself.
func (b *Broker) Resolved(ctx context.Context, id, name string) {
	rec, err := b.cfg.Store.GetSession(ctx, id)
	if err != nil {
		rec = store.Session{ID: id}
	}
	b.cfg.Proxy.RefuseResolve(&egress.Session{ID: id, Owner: rec.Owner}, name)
}

// ResolvedBuild is Resolved for a build of template name.
func (b *Broker) ResolvedBuild(ctx context.Context, name, host string) {
	t, _ := b.cfg.Store.GetTemplate(ctx, name)
	b.cfg.Proxy.RefuseResolve(&egress.Session{ID: buildPrefix + name, Owner: t.Owner}, host)
}

// ServeBuild serves one egress connection of a build of template name:
// the template's rules and the operator's, its owner's credentials.
func (b *Broker) ServeBuild(ctx context.Context, c net.Conn, name string) {
	id := buildPrefix + name
	t, err := b.cfg.Store.GetTemplate(ctx, name)
	var s *egress.Session
	if err == nil {
		s, err = b.build(t)
	}
	if err != nil {
		b.cfg.Log.Warn("egress: template rules", "template", name, "err", err)
		s = &egress.Session{ID: id, Owner: t.Owner}
	}
	b.cfg.Proxy.ServeConn(ctx, c, s)
}

func (b *Broker) build(t store.Template) (*egress.Session, error) {
	rules, err := egress.ParseRules(t.Allow)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", t.Name, err)
	}
	return &egress.Session{ID: buildPrefix + t.Name, Owner: t.Owner, Rules: append(append(egress.Rules(nil), b.cfg.Operator...), rules...),
		Admit: b.admit(t.Name), Credentials: b.credentials(t.Owner, t.Name)}, nil
}

// credentials gives the proxy owner's credentials and template's, looked
// up at each request; nil when there are none to look up.
func (b *Broker) credentials(owner, template string) func(context.Context) ([]egress.Credential, error) {
	if b.cfg.Credentials == nil || owner == "" {
		return nil
	}
	return func(ctx context.Context) ([]egress.Credential, error) {
		return b.cfg.Credentials.For(ctx, owner, template)
	}
}

// session is what the proxy knows of rec.
func (b *Broker) session(ctx context.Context, rec store.Session) (*egress.Session, error) {
	rules := append(egress.Rules(nil), b.cfg.Operator...)
	own, err := egress.ParseRules(rec.Allow)
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", rec.ID, err)
	}
	rules = append(rules, own...)
	if rec.Template != "" {
		t, err := b.cfg.Store.GetTemplate(ctx, rec.Template)
		if err == nil {
			tr, err := egress.ParseRules(t.Allow)
			if err != nil {
				return nil, fmt.Errorf("template %s: %w", t.Name, err)
			}
			rules = append(rules, tr...)
		}
	}
	s := &egress.Session{ID: rec.ID, Owner: rec.Owner, Rules: rules, Admit: b.admit(""),
		Credentials: b.credentials(rec.Owner, rec.Template)}
	id := rec.ID
	s.Authorize = func(ctx context.Context, t egress.Target, ok bool, why string) (bool, string) {
		// The record is read again for each decision: a revoke refuses
		// the next request of a connection that is still open.
		cur, err := b.cfg.Store.GetSession(ctx, id)
		if err != nil {
			return false, "the session is gone: " + err.Error()
		}
		if !cur.TokensRevokedAt.IsZero() {
			return false, "the session's identity and egress were revoked (cove session revoke)"
		}
		if b.cfg.Authorize != nil {
			return b.cfg.Authorize(ctx, cur, t, ok, why)
		}
		return ok, why
	}
	return s, nil
}
