package session

import (
	"context"
	"net"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/egress"
)

// Egress serves the connections programs in a guest make to the network:
// the guest agent carries each one to the host on a stream of the
// session's agent connection, so the session is known from the
// connection it came on, never from what the guest says.
type Egress interface {
	// Setup is what a guest needs to use the proxy (its CA certificate).
	Setup() agentproto.EgressSetup
	// Serve serves one connection of session id until it ends, and
	// closes it.
	Serve(ctx context.Context, c net.Conn, id string)
	// ServeBuild serves one connection of a build of the template named
	// template (its setup commands), with the template's rules and its
	// owner's credentials.
	ServeBuild(ctx context.Context, c net.Conn, template string)
	// Resolved records that a program in session id's guest tried to
	// resolve name itself (the guest has no DNS); ResolvedBuild, in a
	// build of template.
	Resolved(ctx context.Context, id, name string)
	ResolvedBuild(ctx context.Context, template, name string)
	// Cut closes the open connections of session id now.
	Cut(id string)
}

// Bounds on a request's egress rules.
const (
	maxAllowRules = 64
	maxAllowRule  = 512
)

// CheckAllow checks egress rules named field and returns them in their
// canonical form ("GitHub.com." is kept as "github.com").
func CheckAllow(field string, rules []string) ([]string, error) {
	if len(rules) > maxAllowRules {
		return nil, api.Errorf(api.CodeInvalid, "%s: %d rules; at most %d", field, len(rules), maxAllowRules)
	}
	var out []string
	for i, s := range rules {
		if len(s) > maxAllowRule {
			return nil, api.Errorf(api.CodeInvalid, "%s[%d]: longer than %d bytes", field, i, maxAllowRule)
		}
		r, err := egress.ParseRule(s)
		if err != nil {
			return nil, api.Errorf(api.CodeInvalid, "%s[%d]: %v", field, i, err)
		}
		out = append(out, r.String())
	}
	return out, nil
}

// serveEgress serves the egress connections the guest of session id
// opens, for as long as connection c lasts. (The guest was set up for
// egress when it booted: see bootIn.)
func (m *Manager) serveEgress(id string, c *agentproto.Client) {
	if e := m.cfg.Egress; e != nil {
		serveConnects(c, func(ctx context.Context, conn net.Conn) { e.Serve(ctx, conn, id) },
			func(ctx context.Context, name string) { e.Resolved(ctx, id, name) })
	}
}

// serveBuildEgress is serveEgress for the guest building a version of
// template name.
func (m *Manager) serveBuildEgress(name string, c *agentproto.Client) {
	if e := m.cfg.Egress; e != nil {
		serveConnects(c, func(ctx context.Context, conn net.Conn) { e.ServeBuild(ctx, conn, name) },
			func(ctx context.Context, host string) { e.ResolvedBuild(ctx, name, host) })
	}
}

func serveConnects(c *agentproto.Client, serve func(context.Context, net.Conn), resolved func(context.Context, string)) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	_ = c.ServeConnects(ctx, func(conn net.Conn) { serve(ctx, conn) }, func(name string) { resolved(ctx, name) })
}
