package apiserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store"
)

// Policy decides requests; *policy.Engine is one. Decide must be safe for
// concurrent use.
type Policy interface {
	Decide(req policy.Request) policy.Decision
}

// Records is what PolicyGate reads to describe a request: the session,
// template or user it is about, and the teams of their owners.
// store.Store has all of it. Unknown ids and names are errors wrapping
// store.ErrNotFound.
type Records interface {
	GetSession(ctx context.Context, id string) (store.Session, error)
	GetTemplate(ctx context.Context, name string) (store.Template, error)
	GetUser(ctx context.Context, id string) (store.User, error)
	GetUserByName(ctx context.Context, name string) (store.User, error)
	TeamsOf(ctx context.Context, userID string) ([]string, error)
	GetToken(ctx context.Context, id string) (store.Token, error)
}

var _ Records = store.Store(nil)

// PolicyGate is a Config.Authorize that decides every request with a
// policy: Authorize turns the request's Action into a policy.Request
// through verbRules (the principal from the request's context, the
// resource read from Records, the arguments as the policy's context) and
// refuses what the policy denies with 403 forbidden, the decision's
// reason as the message.
type PolicyGate struct {
	Policy  Policy
	Records Records
}

// resourceOf says which resource a verb is about, and where its record
// comes from.
type resourceOf int

const (
	// onServer: Cove::Server::"cove", the resource of what concerns no
	// one session, template or user.
	onServer resourceOf = iota
	// onSession: the session Action.SessionID names.
	onSession
	// onTemplate: the template Action.Template names.
	onTemplate
	// onClone: session.create's, decided by its handler: the template
	// Action.Template names when the body asks for a clone of it, else
	// the Server.
	onClone
	// onTokenUser: the user whose tokens they are: Action.User (by name),
	// else the user of the token Action.Token, else the caller itself.
	// An admin's token.list that names no user is of every user's tokens,
	// and is decided as user.admin on the Server.
	onTokenUser
	// onSecretOwner: the owner whose secrets they are: the Team
	// Action.Team names, the Template Action.Template names, the user
	// Action.User names, else the caller itself; with Action.All, the
	// Server.
	onSecretOwner
)

// verbRule is what decides one route verb.
type verbRule struct {
	action policy.Action
	on     resourceOf
	// write is the context.write of a session.files verb: whether it
	// changes files.
	write bool
}

// verbRules is the one table from the route verbs (routes.go) to the
// policy actions that decide them (internal/policy/actions.go). Every
// verb of the route table is here or in publicVerbs; a test walks the
// OpenAPI document to check it. A verb in neither is denied.
var verbRules = map[string]verbRule{
	"session.create": {policy.SessionCreate, onClone, false},
	"session.list":   {policy.SessionList, onServer, false},
	"session.get":    {policy.SessionRead, onSession, false},
	"session.delete": {policy.SessionDelete, onSession, false},
	"session.park":   {policy.SessionPark, onSession, false},
	"session.wake":   {policy.SessionWake, onSession, false},
	"session.exec":   {policy.SessionExec, onSession, false},
	"session.revoke": {policy.SessionRevoke, onSession, false},
	"session.events": {policy.SessionEvents, onSession, false},

	"session.checkpoint":        {policy.SessionCheckpoint, onSession, false},
	"session.checkpoint.list":   {policy.SessionRead, onSession, false},
	"session.checkpoint.get":    {policy.SessionRead, onSession, false},
	"session.checkpoint.delete": {policy.SessionCheckpoint, onSession, false},
	"session.rollback":          {policy.SessionCheckpoint, onSession, false},
	"session.fork":              {policy.SessionCheckpoint, onSession, false},

	"file.read":   {policy.SessionFiles, onSession, false},
	"file.stat":   {policy.SessionFiles, onSession, false},
	"file.list":   {policy.SessionFiles, onSession, false},
	"file.write":  {policy.SessionFiles, onSession, true},
	"file.remove": {policy.SessionFiles, onSession, true},
	"file.mkdir":  {policy.SessionFiles, onSession, true},

	"image.list":  {policy.ImageList, onServer, false},
	"image.build": {policy.ImageBuild, onServer, false},

	"template.create":   {policy.TemplateCreate, onServer, false},
	"template.list":     {policy.TemplateList, onServer, false},
	"template.get":      {policy.TemplateRead, onTemplate, false},
	"template.versions": {policy.TemplateRead, onTemplate, false},
	"template.delete":   {policy.TemplateDelete, onTemplate, false},
	"template.rebuild":  {policy.TemplateRebuild, onTemplate, false},
	// Sizing the pool changes the template as a rebuild does.
	"template.pool": {policy.TemplateRebuild, onTemplate, false},

	"hook.secret.list":   {policy.HookAdmin, onServer, false},
	"hook.secret.put":    {policy.HookAdmin, onServer, false},
	"hook.secret.delete": {policy.HookAdmin, onServer, false},

	"user.create": {policy.UserAdmin, onServer, false},
	"user.list":   {policy.UserAdmin, onServer, false},
	"user.delete": {policy.UserAdmin, onServer, false},

	"team.list":          {policy.UserAdmin, onServer, false},
	"team.member.add":    {policy.UserAdmin, onServer, false},
	"team.member.remove": {policy.UserAdmin, onServer, false},

	"token.create": {policy.TokenCreate, onTokenUser, false},
	"token.list":   {policy.TokenList, onTokenUser, false},
	"token.revoke": {policy.TokenRevoke, onTokenUser, false},

	"secret.put":    {policy.SecretWrite, onSecretOwner, false},
	"secret.list":   {policy.SecretList, onSecretOwner, false},
	"secret.delete": {policy.SecretDelete, onSecretOwner, false},

	"audit.entries":    {policy.AuditRead, onServer, false},
	"audit.proof":      {policy.AuditRead, onServer, false},
	"audit.checkpoint": {policy.AuditRead, onServer, false},
	"audit.key":        {policy.AuditRead, onServer, false},
	"audit.export":     {policy.AuditRead, onServer, false},

	"audit.witness.list":   {policy.AuditRead, onServer, false},
	"audit.witness.add":    {policy.AuditAdmin, onServer, false},
	"audit.witness.remove": {policy.AuditAdmin, onServer, false},

	"objects.gc": {policy.ObjectsAdmin, onServer, false},

	"node.list":     {policy.NodesAdmin, onServer, false},
	"node.get":      {policy.NodesAdmin, onServer, false},
	"node.cordon":   {policy.NodesAdmin, onServer, false},
	"node.uncordon": {policy.NodesAdmin, onServer, false},
	"node.drain":    {policy.NodesAdmin, onServer, false},
	"node.remove":   {policy.NodesAdmin, onServer, false},
}

// publicVerbs are the route verbs no policy decides, each with why.
var publicVerbs = map[string]string{
	"health.get":  "served without a token, outside /v1",
	"metrics.get": "served without a token, outside /v1",
	"openapi.get": "the API's own description, for any authenticated caller",
	"signin.get":  "how to sign in, for a client that has no token yet; outside /v1",
	"whoami.get":  "whom the caller's own token acts for, for any authenticated caller",
	// Verifiers of session tokens (AWS, GCP, a company's APIs) fetch
	// these anonymously.
	"issuer.discovery": "cove's OpenID issuer metadata, public, outside /v1",
	"issuer.jwks":      "cove's token-signing public keys, public, outside /v1",
	verbHookReceive:    "webhook senders sign each delivery, and Config.Hooks checks it",
	verbNodeJoin:       "a node joins with the join token, which Config.NodeLink checks",
	verbNodeConnect:    "a node connects with its credential, which Config.NodeLink checks",
}

// Authorize decides a: nil to go on, a 403 forbidden error with the
// policy's reason for a denial, a 404 (or, for a token's user named in a
// body, a 400) for a session, template, user or token that does not
// exist, or the store's error.
func (g *PolicyGate) Authorize(ctx context.Context, a Action) error {
	if _, ok := publicVerbs[a.Verb]; ok {
		return nil
	}
	rule, ok := verbRules[a.Verb]
	if !ok {
		return forbidden("%s refused: no policy action decides it", a.Verb)
	}
	p, ok := identity.FromContext(ctx)
	if !ok {
		return forbidden("%s refused: the request has no principal", a.Verb)
	}
	if err := scopeError(p, a.Verb); err != nil {
		return err
	}
	req, err := g.request(ctx, p, rule, a)
	if err != nil {
		return err
	}
	if d := g.Policy.Decide(req); !d.Allow {
		return forbidden("%s", d.Reason)
	}
	return nil
}

// request builds the policy.Request of a.
func (g *PolicyGate) request(ctx context.Context, p identity.Principal, rule verbRule, a Action) (policy.Request, error) {
	principal, err := g.principal(ctx, p)
	if err != nil {
		return policy.Request{}, err
	}
	req := policy.Request{Principal: principal, Action: rule.action}
	switch rule.on {
	case onSession:
		req.Resource, err = g.session(ctx, a.SessionID)
		req.Context.Argv = a.Argv
		if rule.action == policy.SessionFiles {
			req.Context.Path, req.Context.Write = a.Path, rule.write
		}
	case onTemplate:
		req.Resource, err = g.template(ctx, a.Template)
	case onClone:
		if a.Template != "" {
			req.Resource, err = g.template(ctx, a.Template)
			req.Context.Template = a.Template
		}
	case onTokenUser:
		req.Resource, err = g.tokenUser(ctx, p, principal, a)
		if a.Verb == "token.list" && a.User == "" && p.IsAdmin() {
			req.Action, req.Resource = policy.UserAdmin, policy.Resource{}
		}
	case onSecretOwner:
		req.Resource, err = g.secretOwner(ctx, p, principal, a)
	}
	return req, err
}

// principal is p as the policy sees it. The admin token is an admin named
// store.OwnerAdmin; it gets here only for the identity verbs, as the gate
// refuses it all others first (bootstrapOnly).
func (g *PolicyGate) principal(ctx context.Context, p identity.Principal) (policy.Principal, error) {
	switch p.Kind {
	case identity.KindAdminToken:
		return policy.Principal{ID: store.OwnerAdmin, Kind: policy.KindAdmin}, nil
	case identity.KindAgent:
		var name string
		rec, err := g.Records.GetSession(ctx, p.Session)
		switch {
		case err == nil:
			name = rec.Agent
		case !errors.Is(err, store.ErrNotFound): // a gone session's token is decided nameless
			return policy.Principal{}, fmt.Errorf("authorize: session %s: %w", p.Session, err)
		}
		return policy.Principal{Type: policy.PrincipalAgent, ID: p.Session, Owner: p.User.ID, Name: name}, nil
	}
	return policy.Principal{ID: p.User.ID, Kind: policy.Kind(p.User.Kind), Teams: p.Teams}, nil
}

// session is the session id as the policy sees it: its owner, its owner's
// teams, its agent and template.
func (g *PolicyGate) session(ctx context.Context, id string) (policy.Resource, error) {
	rec, err := g.Records.GetSession(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return policy.Resource{}, api.Errorf(api.CodeNotFound, "session %q not found", id)
	}
	if err != nil {
		return policy.Resource{}, fmt.Errorf("authorize: session %s: %w", id, err)
	}
	teams, err := g.teams(ctx, rec.Owner)
	if err != nil {
		return policy.Resource{}, err
	}
	return policy.Resource{Type: policy.ResourceSession, ID: id, Owner: rec.Owner, Teams: teams,
		Agent: rec.Agent, Template: rec.Template}, nil
}

// template is the named template as the policy sees it: its owner and
// its owner's teams.
func (g *PolicyGate) template(ctx context.Context, name string) (policy.Resource, error) {
	rec, err := g.Records.GetTemplate(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return policy.Resource{}, api.Errorf(api.CodeNotFound, "template %q not found", name)
	}
	if err != nil {
		return policy.Resource{}, fmt.Errorf("authorize: template %s: %w", name, err)
	}
	teams, err := g.teams(ctx, rec.Owner)
	if err != nil {
		return policy.Resource{}, err
	}
	return policy.Resource{Type: policy.ResourceTemplate, ID: name, Owner: rec.Owner, Teams: teams}, nil
}

// tokenUser is the user whose tokens a token verb is about (see
// onTokenUser); the caller is principal.
func (g *PolicyGate) tokenUser(ctx context.Context, p identity.Principal, principal policy.Principal, a Action) (policy.Resource, error) {
	var u store.User
	var err error
	switch {
	case a.User != "":
		u, err = g.Records.GetUserByName(ctx, a.User)
		if errors.Is(err, store.ErrNotFound) {
			if a.Verb == "token.create" { // named in the body, as the directory says
				return policy.Resource{}, api.Errorf(api.CodeInvalid, "user: no user %q", a.User)
			}
			return policy.Resource{}, api.Errorf(api.CodeNotFound, "no user %q", a.User)
		}
	case a.Token != "":
		var tok store.Token
		tok, err = g.Records.GetToken(ctx, a.Token)
		if errors.Is(err, store.ErrNotFound) {
			return policy.Resource{}, api.Errorf(api.CodeNotFound, "no token %q", a.Token)
		}
		if err == nil {
			u, err = g.Records.GetUser(ctx, tok.UserID)
			if errors.Is(err, store.ErrNotFound) { // removed: its tokens stay, under its id
				u, err = store.User{ID: tok.UserID}, nil
			}
		}
	case p.Kind == identity.KindUser:
		u = p.User
	default: // the admin token, which is no stored user
		return policy.Resource{Type: policy.ResourceUser, ID: principal.ID, Kind: principal.Kind}, nil
	}
	if err != nil {
		return policy.Resource{}, fmt.Errorf("authorize: %s: %w", a.Verb, err)
	}
	teams, err := g.teams(ctx, u.ID)
	if err != nil {
		return policy.Resource{}, err
	}
	return policy.Resource{Type: policy.ResourceUser, ID: u.ID, Kind: policy.Kind(u.Kind), Teams: teams}, nil
}

// secretOwner is the owner whose secrets a secret verb is about (see
// onSecretOwner); the caller is principal. A request that names more than
// one owner is a 400.
func (g *PolicyGate) secretOwner(ctx context.Context, p identity.Principal, principal policy.Principal, a Action) (policy.Resource, error) {
	named := 0
	for _, s := range []string{a.User, a.Team, a.Template} {
		if s != "" {
			named++
		}
	}
	switch {
	case named > 1 || (a.All && named > 0):
		return policy.Resource{}, api.Errorf(api.CodeInvalid, "owner: name at most one of user, team, template and all")
	case a.All:
		return policy.Resource{}, nil
	case a.Team != "":
		return policy.Resource{Type: policy.ResourceTeam, ID: a.Team}, nil
	case a.Template != "":
		return g.template(ctx, a.Template)
	}
	// A user's: the one named, else the caller (as for tokens).
	return g.tokenUser(ctx, p, principal, Action{Verb: a.Verb, User: a.User})
}

// teams are the teams of the user with id owner: none for the admin and
// for a user who is gone.
func (g *PolicyGate) teams(ctx context.Context, owner string) ([]string, error) {
	if owner == "" || owner == store.OwnerAdmin {
		return nil, nil
	}
	teams, err := g.Records.TeamsOf(ctx, owner)
	if err != nil {
		return nil, fmt.Errorf("authorize: teams of %s: %w", owner, err)
	}
	return teams, nil
}
