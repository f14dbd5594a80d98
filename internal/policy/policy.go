// Package policy decides whether a principal may take an action on a
// resource, with Cedar (github.com/cedar-policy/cedar-go) as the engine.
//
// An Engine holds one policy document in force: the embedded default
// (default.cedar) or an operator's file. Every document is parsed and
// validated against the schema (cove.cedarschema) before it replaces the
// one in force, so a policy that does not check changes nothing. Decide
// builds the principal and resource entities from the Request (owner,
// teams, kind) and asks Cedar; its Decision carries a reason fit for a
// 403: the policies that decided it, or, when nothing permits, what was
// asked.
//
// The entities:
//
//	Cove::User::"ID"          kind; in its Cove::Team::"NAME"s
//	Cove::Agent::"SESSION"    a session's own identity token: session, owner, name
//	Cove::Session::"ID"       owner, agent, template; in its owner's teams
//	Cove::Template::"NAME"    owner; in its owner's teams
//	Cove::Team::"NAME"        a team; the resource of its secrets
//	Cove::Server::"cove"      the resource of server-wide actions
//	Cove::Action::"NAME"      one per Action constant
package policy

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/cedar-policy/cedar-go"
)

// Engine decides requests against the policy in force. The zero Engine
// has no policy and denies everything; call LoadDefault or Load. An
// Engine is safe for concurrent use: a load swaps the policy in whole,
// and a decision sees either the old policy or the new one.
type Engine struct {
	cur atomic.Pointer[compiled]
}

// New returns an Engine with the default policy in force.
func New() *Engine {
	e := new(Engine)
	e.LoadDefault()
	return e
}

// Default returns the text of the default policy, a starting point for an
// operator's own.
func Default() []byte { return slices.Clone(defaultPolicy) }

// LoadDefault puts the embedded default policy in force. The default is
// checked by this package's tests, so it panics only on a broken build.
func (e *Engine) LoadDefault() {
	c, err := compile(DefaultName, defaultPolicy)
	if err != nil {
		panic(fmt.Sprintf("policy: the default policy does not check: %v", err))
	}
	e.cur.Store(c)
}

// Load reads the policy document at path, checks it and puts it in force.
// On any error (unreadable, too large, a syntax or validation problem, no
// permit at all) the policy in force stays and the error says why; a document that does not
// check returns an *Error whose problems name their lines and columns.
func (e *Engine) Load(ctx context.Context, path string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("policy: load %s: %w", path, err)
	}
	src, err := readPolicy(path)
	if err != nil {
		return fmt.Errorf("policy: load %s: %w", path, err)
	}
	c, err := compile(path, src)
	if err != nil {
		return fmt.Errorf("policy: load %s: the policy in force stays:\n%w", path, err)
	}
	e.cur.Store(c)
	return nil
}

// readPolicy reads at most MaxPolicyBytes+1 bytes of path, so that compile
// refuses a larger file without reading all of it.
func readPolicy(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxPolicyBytes+1))
}

// Check parses src and validates it against the schema, as Load would,
// without putting it in force. A document with no permit (empty, only
// comments or forbids: it would deny everyone) does not check. A document that does not check returns an
// *Error (File "") listing every problem with its line and column.
func (e *Engine) Check(src []byte) error {
	_, err := compile("", src)
	return err
}

// Source returns the name (DefaultName or the path given to Load) and the
// text of the policy in force; "" and nil when none is.
func (e *Engine) Source() (name string, src []byte) {
	c := e.cur.Load()
	if c == nil {
		return "", nil
	}
	return c.name, slices.Clone(c.src)
}

// Decision is the answer to a Request.
type Decision struct {
	Allow bool
	// Reason says why, for a 403 and the log: the policies that permitted
	// or forbade the request, or what was asked when no policy permits it.
	Reason string
	// Policies are the ids of the policies that decided it: the permits
	// of an allow, the forbids of a denial; none for a default deny.
	Policies []string
}

// Decide asks the policy in force whether req is allowed. A request the
// schema does not admit (an unknown action, or a principal or resource of
// a type the action does not apply to, such as a session's identity token
// asking for anything but session.park or session.events) is denied before
// any policy is read.
func (e *Engine) Decide(req Request) Decision {
	c := e.cur.Load()
	if c == nil {
		return Decision{Reason: "no policy is loaded"}
	}
	if req.Principal.ID == "" {
		return Decision{Reason: fmt.Sprintf("%s refused: the request has no principal", req.Action)}
	}
	if reason := c.schema.misfit(req); reason != "" {
		return Decision{Reason: reason}
	}
	creq, entities := req.cedarRequest()
	dec, diag := cedar.Authorize(c.set, entities, creq)
	d := Decision{Allow: dec == cedar.Allow}
	for _, r := range diag.Reasons {
		d.Policies = append(d.Policies, string(r.PolicyID))
	}
	slices.Sort(d.Policies)
	switch {
	case d.Allow:
		d.Reason = "permitted by " + c.labels(diag.Reasons)
	case len(diag.Reasons) > 0:
		d.Reason = "forbidden by " + c.labels(diag.Reasons)
	default:
		d.Reason = fmt.Sprintf("no policy permits %s on %s for %s", req.Action, describeResource(req.Resource), describePrincipal(req.Principal))
	}
	if !d.Allow {
		// A policy that failed to evaluate is skipped: a permit that
		// failed may be why nothing permits.
		for _, de := range diag.Errors {
			d.Reason += fmt.Sprintf("; %s failed: %s", c.label[de.PolicyID], de.Message)
		}
	}
	return d
}

// misfit says why req does not fit the schema, or "" if it does. A request
// that does not fit is denied whatever the policy says: policies are
// validated only for the principal and resource types each action applies
// to, so this keeps, say, a session's identity token to the two actions
// the schema gives it even under a policy that permits any principal.
func (s *coveSchema) misfit(req Request) string {
	at, ok := s.applies[req.Action]
	if !ok {
		return fmt.Sprintf("unknown action %q", req.Action)
	}
	if !slices.Contains(at.principals, req.Principal.uid().Type) {
		if req.Principal.Type == PrincipalAgent {
			return fmt.Sprintf("a session's identity token may not %s (only %s)", req.Action, s.agentActions)
		}
		return fmt.Sprintf("%s does not apply to %s", req.Action, describePrincipal(req.Principal))
	}
	if !slices.Contains(at.resources, req.Resource.uid().Type) {
		return fmt.Sprintf("%s does not apply to %s", req.Action, describeResource(req.Resource))
	}
	return ""
}

// labels names the policies of reasons, in a stable order.
func (c *compiled) labels(reasons []cedar.DiagnosticReason) string {
	names := make([]string, len(reasons))
	for i, r := range reasons {
		names[i] = c.label[r.PolicyID]
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func describePrincipal(p Principal) string {
	if p.Type == PrincipalAgent {
		return "the agent of Session " + p.ID
	}
	return "User " + p.ID
}

func describeResource(r Resource) string {
	switch r.Type {
	case ResourceSession:
		return "Session " + r.ID
	case ResourceTemplate:
		return "Template " + r.ID
	case ResourceUser:
		return "User " + r.ID
	case ResourceTeam:
		return "Team " + r.ID
	default:
		return "Server " + ServerID
	}
}
