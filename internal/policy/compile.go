package policy

import (
	_ "embed"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// The embedded policy and schema. A test checks that the default policy
// validates against the schema and that the schema declares exactly the
// actions of Actions.
var (
	//go:embed default.cedar
	defaultPolicy []byte
	//go:embed cove.cedarschema
	schemaSource []byte
)

// DefaultName is the name under which the default policy is in force.
const DefaultName = "default.cedar"

// MaxPolicyBytes is the largest policy document Check and Load accept.
const MaxPolicyBytes = 1 << 20

// Error is a policy document that did not check: each of its problems at
// its place in the document.
type Error struct {
	// File names the document: the path given to Load, or "" for Check.
	File     string
	Problems []Problem
}

// Problem is one thing wrong with a policy document.
type Problem struct {
	// Line and Column locate the problem, from 1; 0 when Cedar gave no
	// position. A problem of one policy is located at the policy's start.
	Line, Column int
	// Policy is the @id of the policy at fault; "" when it has none (its
	// position says which it is) and for a syntax error.
	Policy string
	Msg    string
}

// String is "LINE:COL: [policy "ID": ]MSG", or MSG alone with no position.
func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "%d:%d: ", p.Line, p.Column)
	}
	if p.Policy != "" {
		fmt.Fprintf(&b, "policy %q: ", p.Policy)
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error lists the problems, one a line, each prefixed "FILE:" when File
// is set, the way compilers report.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			if p.Line > 0 {
				b.WriteByte(':')
			} else {
				b.WriteString(": ")
			}
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// compiled is one policy document, parsed and validated: what an Engine
// holds in force.
type compiled struct {
	name   string
	src    []byte
	set    *cedar.PolicySet
	schema *coveSchema
	// label names each policy in reasons: `policy "ID"` or
	// "the policy at line N".
	label map[cedar.PolicyID]string
}

// cedarPos finds "<input>:LINE:COL" in Cedar's parse errors, which carry
// their position only in their text.
var cedarPos = regexp.MustCompile(`<input>:(\d+):(\d+):? ?`)

// compile parses src and validates every policy in it against the schema.
// It returns every problem it finds, not only the first.
func compile(name string, src []byte) (*compiled, error) {
	if len(src) > MaxPolicyBytes {
		return nil, &Error{File: name, Problems: []Problem{{
			Msg: fmt.Sprintf("policy is %d bytes; the limit is %d", len(src), MaxPolicyBytes),
		}}}
	}
	list, err := cedar.NewPolicyListFromBytes(name, src)
	if err != nil {
		return nil, &Error{File: name, Problems: []Problem{parseProblem(err)}}
	}
	sch, err := loadSchema()
	if err != nil {
		return nil, err
	}
	c := &compiled{name: name, src: src, set: cedar.NewPolicySet(), schema: sch, label: make(map[cedar.PolicyID]string, len(list))}
	var problems []Problem
	for _, p := range list {
		pos := p.Position()
		id, label := policyID(p)
		at := Problem{Line: pos.Line, Column: pos.Column}
		if _, ok := p.Annotations()["id"]; ok {
			at.Policy = string(id)
		}
		if _, dup := c.label[id]; dup {
			at.Msg = "another policy has this @id"
			problems = append(problems, at)
			continue
		}
		c.label[id] = label
		c.set.Add(id, p)
		if err := sch.validator.Policy("", (*xast.Policy)(p.AST())); err != nil {
			for _, msg := range validationMessages(err) {
				at.Msg = msg
				problems = append(problems, at)
			}
		}
	}
	if problems == nil && !hasPermit(list) {
		// An empty or truncated file would deny every request, admins'
		// included, and lock everyone out until the file is fixed.
		problems = append(problems, Problem{Msg: noPermit})
	}
	if problems != nil {
		return nil, &Error{File: name, Problems: problems}
	}
	return c, nil
}

// noPermit is the problem of a document without a permit.
const noPermit = "the policy has no permit, so it would deny every request, " +
	"admins' included (an empty or cut-short file?); start from the built-in one, internal/policy/default.cedar"

// hasPermit reports whether list holds a permit.
func hasPermit(list cedar.PolicyList) bool {
	for _, p := range list {
		if p.Effect() == cedar.Permit {
			return true
		}
	}
	return false
}

// policyID is a policy's @id, or "line N" for one without; label is how
// reasons name it.
func policyID(p *cedar.Policy) (id cedar.PolicyID, label string) {
	if s, ok := p.Annotations()["id"]; ok {
		return cedar.PolicyID(s), fmt.Sprintf("policy %q", string(s))
	}
	line := p.Position().Line
	return cedar.PolicyID(fmt.Sprintf("line %d", line)), fmt.Sprintf("the policy at line %d", line)
}

// parseProblem turns a Cedar parse error into a Problem with its position.
func parseProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "parser error: ")
	m := cedarPos.FindStringSubmatchIndex(msg)
	if m == nil {
		return Problem{Msg: "syntax error: " + msg}
	}
	line, _ := strconv.Atoi(msg[m[2]:m[3]])
	col, _ := strconv.Atoi(msg[m[4]:m[5]])
	rest := strings.TrimSpace(msg[m[1]:])
	if !strings.HasPrefix(msg[:m[0]], "parse error at") {
		return Problem{Line: line, Column: col, Msg: "syntax error: " + rest}
	}
	// "parse error at <input>:L:C "TOKEN": WHY"
	tok, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return Problem{Line: line, Column: col, Msg: "syntax error: " + rest}
	}
	why := strings.TrimPrefix(rest[len(tok):], ": ")
	if tok == `""` {
		return Problem{Line: line, Column: col, Msg: "syntax error at end of input: " + why}
	}
	return Problem{Line: line, Column: col, Msg: "syntax error at " + tok + ": " + why}
}

// actionRef finds the action that a validation message is about.
var actionRef = regexp.MustCompile(`Cove::Action::"[^"]*"`)

// validationMessages are the messages of a policy's validation error,
// sorted, with those that differ only in the action they are about (a
// condition is checked once for each action in scope) said once.
func validationMessages(err error) []string {
	var msgs []string
	for _, e := range leaves(err) {
		msgs = append(msgs, e.Error())
	}
	slices.Sort(msgs)
	var out []string
	count := map[string]int{} // by message with its action blanked
	for _, m := range msgs {
		key := actionRef.ReplaceAllString(m, "ACTION")
		if count[key]++; count[key] == 1 {
			out = append(out, m)
		}
	}
	for i, m := range out {
		if n := count[actionRef.ReplaceAllString(m, "ACTION")]; n > 1 {
			loc := actionRef.FindStringIndex(m)
			m = fmt.Sprintf("%s and %d other actions%s", m[:loc[1]], n-1, m[loc[1]:])
		}
		// The likeliest slip: a condition on a user's attribute in a
		// policy whose scope lets the principal be an Agent too.
		if strings.Contains(m, "on entity type `Cove::Agent` not found") {
			m += " (the principal may be a session's Agent here: add `principal is Cove::User` to the scope)"
		}
		out[i] = m
	}
	return out
}

// leaves flattens joined errors.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	return []error{err}
}

// coveSchema is the embedded schema, resolved, and its validator.
type coveSchema struct {
	resolved  *resolved.Schema
	validator *validate.Validator
	// applies holds, for each action, the principal and resource types
	// it applies to.
	applies map[Action]appliesTo
	// agentActions lists, sorted, the actions an Agent principal may ask.
	agentActions string
}

type appliesTo struct {
	principals, resources []cedar.EntityType
}

// loadSchema resolves the embedded schema, once.
var loadSchema = sync.OnceValues(func() (*coveSchema, error) {
	var s schema.Schema
	s.SetFilename("cove.cedarschema")
	if err := s.UnmarshalCedar(schemaSource); err != nil {
		return nil, fmt.Errorf("policy: parse schema: %w", err)
	}
	r, err := s.Resolve()
	if err != nil {
		return nil, fmt.Errorf("policy: resolve schema: %w", err)
	}
	applies := make(map[Action]appliesTo, len(r.Actions))
	var agent []string
	for uid, a := range r.Actions {
		if a.AppliesTo == nil {
			continue
		}
		applies[Action(uid.ID)] = appliesTo{principals: a.AppliesTo.Principals, resources: a.AppliesTo.Resources}
		if slices.Contains(a.AppliesTo.Principals, typeAgent) {
			agent = append(agent, string(uid.ID))
		}
	}
	slices.Sort(agent)
	return &coveSchema{
		resolved:     r,
		validator:    validate.New(r),
		applies:      applies,
		agentActions: strings.Join(agent, ", "),
	}, nil
})
