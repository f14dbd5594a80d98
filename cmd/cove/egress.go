package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/cove-dev/cove/internal/broker"
	"github.com/cove-dev/cove/internal/egress"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/store"
)

// secretCredentials gives the broker the secrets of a session's owner,
// its owner's teams and its template, decrypted, as the proxy's
// credentials.
type secretCredentials struct{ r *secret.Resolver }

func (s secretCredentials) For(ctx context.Context, owner, template string) ([]egress.Credential, error) {
	plain, err := s.r.For(ctx, owner, template)
	if err != nil {
		return nil, err
	}
	creds := make([]egress.Credential, 0, len(plain))
	for _, p := range plain {
		creds = append(creds, egress.Credential{Name: p.OwnerKind + ":" + p.Owner + "/" + p.Name, Hosts: p.Hosts, Header: p.Header, Value: p.Value})
	}
	return creds, nil
}

// newEgress builds the egress proxy and its broker: the installation's CA
// (made at first start under COVE_HOME), the roots upstreams are verified
// against (the system's and --upstream-ca), and the operator's rules. Each
// decision goes to the audit log: an allow before it takes effect (and not
// at all if the log cannot take it), a deny best effort.
func newEgress(cfg serverConfig, st store.Store, creds broker.Credentials, policies *policy.Engine, auditLog broker.Auditor, log *slog.Logger) (*broker.Broker, error) {
	ca, err := egress.LoadOrCreateCA(cfg.Home)
	if err != nil {
		return nil, fmt.Errorf("server: egress: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.UpstreamCA != "" {
		pem, err := os.ReadFile(cfg.UpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("server: --upstream-ca: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server: --upstream-ca %s: no PEM certificate in it", cfg.UpstreamCA)
		}
	}
	operator, err := egress.ParseRules(cfg.EgressAllow)
	if err != nil {
		return nil, fmt.Errorf("server: --egress-allow: %w", err)
	}
	dial, err := resolveDialer(cfg.EgressResolve)
	if err != nil {
		return nil, err
	}
	proxy, err := egress.New(egress.Config{CA: ca, UpstreamRoots: roots, Log: log, DialContext: dial,
		OnDecision: broker.AuditDenials(auditLog, log)})
	if err != nil {
		return nil, fmt.Errorf("server: egress: %w", err)
	}
	return broker.New(broker.Config{Proxy: proxy, CA: ca, Store: st, Credentials: creds, Operator: operator, Log: log,
		Authorize: egressPolicy(st, policies), Audit: auditLog}), nil
}

// egressPolicy gives the policy the last word on each egress decision:
// the session's agent asks session.egress on its session, with where it
// goes and whether the session's rules allow it (context.allowed). The
// rules' reason is kept where the policy agrees with them.
func egressPolicy(st store.Store, policies *policy.Engine) func(context.Context, store.Session, egress.Target, bool, string) (bool, string) {
	return func(ctx context.Context, rec store.Session, t egress.Target, ok bool, why string) (bool, string) {
		teams, err := st.TeamsOf(ctx, rec.Owner)
		if err != nil {
			return false, "the policy cannot be asked: " + err.Error()
		}
		method := t.Method
		if t.Connect {
			method = ""
		}
		d := policies.Decide(policy.Request{
			Principal: policy.Principal{Type: policy.PrincipalAgent, ID: rec.ID, Owner: rec.Owner, Name: rec.Agent},
			Action:    policy.SessionEgress,
			Resource: policy.Resource{Type: policy.ResourceSession, ID: rec.ID, Owner: rec.Owner, Teams: teams,
				Agent: rec.Agent, Template: rec.Template},
			Context: policy.Context{Host: t.Host, Port: t.Port, Method: method, Path: t.Path, Allowed: ok},
		})
		switch {
		case d.Allow == ok:
			return ok, why
		case d.Allow:
			return true, d.Reason
		default:
			return false, d.Reason
		}
	}
}

// resolveDialer returns the proxy's dialer when names are pinned
// (--egress-resolve HOST=IP, as curl's --resolve: split-horizon names,
// internal services); nil (the proxy's own dialer) when none are.
func resolveDialer(pins []string) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	if len(pins) == 0 {
		return nil, nil
	}
	to := map[string]netip.Addr{}
	for _, p := range pins {
		host, ip, ok := strings.Cut(p, "=")
		addr, err := netip.ParseAddr(ip)
		if !ok || host == "" || err != nil {
			return nil, fmt.Errorf("server: --egress-resolve %q: want HOST=IP", p)
		}
		to[strings.ToLower(strings.TrimSuffix(host, "."))] = addr
	}
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if ip, ok := to[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
			addr = net.JoinHostPort(ip.String(), port)
		}
		return d.DialContext(ctx, network, addr)
	}, nil
}
