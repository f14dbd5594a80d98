package policy

// Action is one thing a request asks to do. Each is the Cedar entity
// Cove::Action::"NAME" and applies to the principals and resources that
// cove.cedarschema declares for it; a policy that names an action with a
// resource it does not apply to fails to load.
type Action string

// The actions of the API. Each comment names the resource the caller
// passes (see Resource) and the Context fields it fills in.
const (
	// SessionCreate boots a session. Resource: the Server, or, for a clone
	// of a template, that Template (Context.Template names it too).
	SessionCreate Action = "session.create"
	// SessionList lists sessions. Resource: the Server. The caller then
	// shows only the sessions for which SessionRead is allowed.
	SessionList Action = "session.list"
	// SessionRead shows one session (get, inspect). Resource: the Session.
	SessionRead Action = "session.read"
	// SessionExec runs a command in a session, over HTTP or a WebSocket.
	// Resource: the Session; Context.Argv is the command line (the API
	// decides exec once it has read it, so a permit may depend on it).
	SessionExec Action = "session.exec"
	// SessionFiles reads or changes files in a session (read, stat, list,
	// write, remove, mkdir). Resource: the Session; Context.Path is the
	// guest path and Context.Write whether the call changes anything.
	SessionFiles Action = "session.files"
	// SessionPark parks a session to disk. Resource: the Session. A
	// session's agent may park its own session.
	SessionPark Action = "session.park"
	// SessionWake wakes a parked session. Resource: the Session.
	SessionWake Action = "session.wake"
	// SessionDelete stops a session and forgets it. Resource: the Session.
	SessionDelete Action = "session.delete"
	// SessionRevoke invalidates a session's identity tokens without
	// stopping it (the kill switch). Resource: the Session.
	SessionRevoke Action = "session.revoke"
	// SessionCheckpoint takes, removes and rolls back to a session's
	// checkpoints, and forks the session (a fork is a copy of its whole
	// machine, owned as it is). Resource: the Session.
	SessionCheckpoint Action = "session.checkpoint"
	// SessionEvents reads a session's events. Resource: the Session. A
	// session's agent may read its own events.
	SessionEvents Action = "session.events"

	// TemplateCreate creates a template. Resource: the Server.
	TemplateCreate Action = "template.create"
	// TemplateList lists templates. Resource: the Server. The caller then
	// shows only the templates for which TemplateRead is allowed.
	TemplateList Action = "template.list"
	// TemplateRead shows one template and its versions. Resource: the
	// Template.
	TemplateRead Action = "template.read"
	// TemplateDelete deletes a template. Resource: the Template.
	TemplateDelete Action = "template.delete"
	// TemplateRebuild builds a new version of a template. Resource: the
	// Template.
	TemplateRebuild Action = "template.rebuild"

	// ImageBuild builds a base image, which every user shares. Resource:
	// the Server.
	ImageBuild Action = "image.build"
	// ImageList lists the base images. Resource: the Server.
	ImageList Action = "image.list"

	// HookAdmin lists, sets and removes webhook secrets. Resource: the
	// Server. (Webhook deliveries are signed, not authorized by policy.)
	HookAdmin Action = "hook.admin"
	// UserAdmin adds, lists and removes users and teams. Resource: the
	// Server.
	UserAdmin Action = "user.admin"

	// TokenCreate mints an API token. Resource: the User the token is for
	// (the caller itself, or another user when an admin mints one).
	TokenCreate Action = "token.create"
	// TokenList lists a user's API tokens (never their values). Resource:
	// the User whose tokens they are.
	TokenList Action = "token.list"
	// TokenRevoke revokes an API token. Resource: the User whose token it
	// is.
	TokenRevoke Action = "token.revoke"

	// PolicyRead shows the policy in force. Resource: the Server.
	PolicyRead Action = "policy.read"

	// AuditRead reads the audit log: its entries, inclusion proofs,
	// checkpoint and verifier key, and the export stream. Resource: the
	// Server. The default policy grants it to admins only.
	AuditRead Action = "audit.read"
	// AuditAdmin adds and removes the witnesses the audit log hands its
	// checkpoints to. Resource: the Server. The default policy grants it
	// to admins only.
	AuditAdmin Action = "audit.admin"

	// ObjectsAdmin runs a garbage collection of the object store now.
	// Resource: the Server. The default policy grants it to admins only.
	ObjectsAdmin Action = "objects.admin"

	// NodesAdmin lists, inspects, cordons, uncordons, drains and removes
	// the nodes (the VM hosts). Resource: the Server. The default policy
	// grants it to admins only.
	NodesAdmin Action = "nodes.admin"

	// SecretWrite sets (creates or replaces) a secret, the credential the
	// egress proxy adds to a session's requests. Resource: the secret's
	// owner: the User (its own, or another's when an admin sets one), the
	// Team, or the Template whose secret it is.
	SecretWrite Action = "secret.write"
	// SecretList lists secrets (their names, hosts and headers, never
	// their values). Resource: the owner whose secrets they are, as for
	// SecretWrite, or the Server for every secret of every owner.
	SecretList Action = "secret.list"
	// SecretDelete removes a secret. Resource: its owner, as for
	// SecretWrite.
	SecretDelete Action = "secret.delete"

	// SessionEgress is a connection or request a session's guest makes
	// through the egress proxy; no API route asks it. Principal: the
	// session's Agent; resource: the Session; Context.Host, Port, Method,
	// Path say where it goes, and Context.Allowed whether the session's
	// rules (its own, its template's, the operator's) allow it. The
	// default policy follows the rules; a forbid narrows them, a permit
	// widens them.
	SessionEgress Action = "session.egress"
)

// Actions returns every action, in the order of the constants above.
func Actions() []Action {
	return []Action{
		SessionCreate, SessionList, SessionRead, SessionExec, SessionFiles,
		SessionPark, SessionWake, SessionDelete, SessionRevoke, SessionEvents, SessionCheckpoint,
		TemplateCreate, TemplateList, TemplateRead, TemplateDelete, TemplateRebuild,
		ImageBuild, ImageList,
		HookAdmin, UserAdmin,
		TokenCreate, TokenList, TokenRevoke,
		PolicyRead, AuditRead, AuditAdmin, ObjectsAdmin, NodesAdmin,
		SecretWrite, SecretList, SecretDelete,
		SessionEgress,
	}
}
