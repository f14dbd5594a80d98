package policy

import (
	"github.com/cedar-policy/cedar-go"
)

// Entity types of the Cove namespace (see cove.cedarschema).
const (
	typeUser     cedar.EntityType = "Cove::User"
	typeAgent    cedar.EntityType = "Cove::Agent"
	typeTeam     cedar.EntityType = "Cove::Team"
	typeSession  cedar.EntityType = "Cove::Session"
	typeTemplate cedar.EntityType = "Cove::Template"
	typeServer   cedar.EntityType = "Cove::Server"
	typeAction   cedar.EntityType = "Cove::Action"
)

// ServerID is the id of the one Cove::Server entity.
const ServerID = "cove"

// Kind is what sort of user a principal is.
type Kind string

// The kinds of user. The default policy gives admins everything and
// treats engineers and service accounts alike.
const (
	KindEngineer Kind = "engineer"
	KindService  Kind = "service" // CI and bots
	KindAdmin    Kind = "admin"
)

// PrincipalType tells a user from a session's agent.
type PrincipalType int

const (
	// PrincipalUser is an engineer, service account or admin,
	// authenticated by an API token or an OIDC ID token:
	// Cove::User::"ID". It is the zero value.
	PrincipalUser PrincipalType = iota
	// PrincipalAgent is a session's agent, authenticated by the session's
	// own identity token: Cove::Agent::"SESSION-ID".
	PrincipalAgent
)

// Principal is who asks.
type Principal struct {
	Type PrincipalType
	// ID is the user's id, or for an agent the id of its session.
	ID string
	// Kind is a user's kind.
	Kind Kind
	// Teams are the teams a user is in.
	Teams []string
	// Owner is the user an agent acts for (its session's owner).
	Owner string
	// Name is an agent's name (--agent), "" if none.
	Name string
}

// ResourceType is the sort of thing a request acts on.
type ResourceType int

const (
	// ResourceServer is Cove::Server::"cove", the resource of actions on
	// no one session or template. It is the zero value.
	ResourceServer ResourceType = iota
	// ResourceSession is Cove::Session::"ID".
	ResourceSession
	// ResourceTemplate is Cove::Template::"NAME".
	ResourceTemplate
	// ResourceUser is Cove::User::"ID", the resource of the token actions
	// and of a user's own secrets.
	ResourceUser
	// ResourceTeam is Cove::Team::"NAME", the resource of a team's
	// secrets. A user is in it when the user is a member.
	ResourceTeam
)

// Resource is what a request acts on; which one each action takes is in
// its doc. The zero Resource is the Server.
type Resource struct {
	Type ResourceType
	// ID is the session's id, the template's name, the user's id or the
	// team's name; the Server's is always ServerID.
	ID string
	// Owner is the user who owns a session or template.
	Owner string
	// Teams are the teams a session or template is in (its owner's, as
	// the caller records them), or the teams of a user.
	Teams []string
	// Agent is a session's agent name, "" if none.
	Agent string
	// Template is the template a session was cloned from, "" if none.
	Template string
	// Kind is a user's kind.
	Kind Kind
}

// Context carries a request's arguments, which policies read as context.*.
// Fields an action does not use stay empty.
type Context struct {
	// Argv is the command line of session.exec: context.argv is the set
	// of its words and context.command its first.
	Argv []string
	// Template is the template a session.create clones
	// (context.template).
	Template string
	// Path is the guest path of session.files (context.path).
	Path string
	// Write is whether a session.files call changes files
	// (context.write).
	Write bool
	// Host, Port and Method are where a session.egress goes
	// (context.host, context.port, context.method; Path is its path),
	// and Allowed whether the session's rules allow it (context.allowed).
	Host    string
	Port    int
	Method  string
	Allowed bool
}

// Request is one decision to make.
type Request struct {
	Principal Principal
	Action    Action
	Resource  Resource
	Context   Context
}

// uid is the principal's entity id.
func (p Principal) uid() cedar.EntityUID {
	if p.Type == PrincipalAgent {
		return cedar.NewEntityUID(typeAgent, cedar.String(p.ID))
	}
	return cedar.NewEntityUID(typeUser, cedar.String(p.ID))
}

// entity is the principal as Cedar sees it.
func (p Principal) entity() cedar.Entity {
	if p.Type == PrincipalAgent {
		return cedar.Entity{
			UID: p.uid(),
			Attributes: cedar.NewRecord(cedar.RecordMap{
				"session": cedar.NewEntityUID(typeSession, cedar.String(p.ID)),
				"owner":   cedar.NewEntityUID(typeUser, cedar.String(p.Owner)),
				"name":    cedar.String(p.Name),
			}),
		}
	}
	return cedar.Entity{
		UID:        p.uid(),
		Parents:    teams(p.Teams),
		Attributes: cedar.NewRecord(cedar.RecordMap{"kind": cedar.String(p.Kind)}),
	}
}

// uid is the resource's entity id.
func (r Resource) uid() cedar.EntityUID {
	switch r.Type {
	case ResourceSession:
		return cedar.NewEntityUID(typeSession, cedar.String(r.ID))
	case ResourceTemplate:
		return cedar.NewEntityUID(typeTemplate, cedar.String(r.ID))
	case ResourceUser:
		return cedar.NewEntityUID(typeUser, cedar.String(r.ID))
	case ResourceTeam:
		return cedar.NewEntityUID(typeTeam, cedar.String(r.ID))
	default:
		return cedar.NewEntityUID(typeServer, ServerID)
	}
}

// entity is the resource as Cedar sees it.
func (r Resource) entity() cedar.Entity {
	e := cedar.Entity{UID: r.uid()}
	owner := cedar.NewEntityUID(typeUser, cedar.String(r.Owner))
	switch r.Type {
	case ResourceSession:
		e.Parents = teams(r.Teams)
		e.Attributes = cedar.NewRecord(cedar.RecordMap{
			"owner":    owner,
			"agent":    cedar.String(r.Agent),
			"template": cedar.String(r.Template),
		})
	case ResourceTemplate:
		e.Parents = teams(r.Teams)
		e.Attributes = cedar.NewRecord(cedar.RecordMap{"owner": owner})
	case ResourceUser:
		e.Parents = teams(r.Teams)
		e.Attributes = cedar.NewRecord(cedar.RecordMap{"kind": cedar.String(r.Kind)})
	}
	return e
}

// record is the context as Cedar sees it: every field of Args, always.
func (c Context) record() cedar.Record {
	words := make([]cedar.Value, len(c.Argv))
	for i, w := range c.Argv {
		words[i] = cedar.String(w)
	}
	var command string
	if len(c.Argv) > 0 {
		command = c.Argv[0]
	}
	return cedar.NewRecord(cedar.RecordMap{
		"argv":     cedar.NewSet(words...),
		"command":  cedar.String(command),
		"template": cedar.String(c.Template),
		"path":     cedar.String(c.Path),
		"write":    cedar.Boolean(c.Write),
		"host":     cedar.String(c.Host),
		"port":     cedar.Long(c.Port),
		"method":   cedar.String(c.Method),
		"allowed":  cedar.Boolean(c.Allowed),
	})
}

func teams(names []string) cedar.EntityUIDSet {
	if len(names) == 0 {
		return cedar.EntityUIDSet{}
	}
	uids := make([]cedar.EntityUID, len(names))
	for i, n := range names {
		uids[i] = cedar.NewEntityUID(typeTeam, cedar.String(n))
	}
	return cedar.NewEntityUIDSet(uids...)
}

// cedarRequest is req as Cedar sees it, with the entities the decision
// may read: the principal and the resource. The principal wins when both
// are the same user (token actions on oneself).
func (req Request) cedarRequest() (cedar.Request, cedar.EntityMap) {
	p, r := req.Principal.entity(), req.Resource.entity()
	entities := cedar.EntityMap{r.UID: r, p.UID: p}
	return cedar.Request{
		Principal: p.UID,
		Action:    cedar.NewEntityUID(typeAction, cedar.String(req.Action)),
		Resource:  r.UID,
		Context:   req.Context.record(),
	}, entities
}
