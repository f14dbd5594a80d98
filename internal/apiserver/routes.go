package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/internal/issuer"
)

// route is one row of the route table.
type route struct {
	Method string
	// Path is an http.ServeMux path pattern; its {wildcards} are spelled
	// as in the OpenAPI document.
	Path string
	// Verb is the Action verb Config.Authorize sees.
	Verb string
	// NoToken serves the route without the bearer token: it is public, or
	// its callers sign their requests and the handler checks that.
	NoToken bool
	handle  func(s *Server, w http.ResponseWriter, r *http.Request) error
}

// Values of route.NoToken, for the table.
const (
	bearer  = false // the gate checks the bearer token
	noToken = true  // the gate checks no token
)

// githubHookPath is the route of GitHub's deliveries; its Action.Hook is
// "github".
const githubHookPath = "/v1/hooks/github"

// verbHookReceive is the verb of the webhook routes, which the gate also
// counts in cove_webhooks_total.
const verbHookReceive = "hook.receive"

// routes is the whole HTTP surface. A test checks it against
// api/openapi.yaml both ways: every path under /v1 needs the token except
// the webhooks, whose senders sign their deliveries instead, and the
// nodes' join and connect, which carry the join token or the node's
// credential instead.
var routes = []route{
	{"GET", "/healthz", "health.get", noToken, (*Server).health},
	{"GET", "/metrics", "metrics.get", noToken, (*Server).serveMetrics},
	{"GET", "/v1/openapi.json", "openapi.get", bearer, (*Server).openAPI},
	{"GET", "/auth/oidc", "signin.get", noToken, (*Server).serveSignIn},
	{"GET", "/v1/whoami", "whoami.get", bearer, (*Server).whoAmI},
	{"GET", issuer.DiscoveryPath, "issuer.discovery", noToken, (*Server).serveIssuer},
	{"GET", issuer.JWKSPath, "issuer.jwks", noToken, (*Server).serveIssuer},

	{"POST", "/v1/sessions", "session.create", bearer, (*Server).createSession},
	{"GET", "/v1/sessions", "session.list", bearer, (*Server).listSessions},
	{"GET", "/v1/sessions/watch", "session.list", bearer, (*Server).watchSessions},
	{"GET", "/v1/sessions/{id}", "session.get", bearer, (*Server).getSession},
	{"DELETE", "/v1/sessions/{id}", "session.delete", bearer, (*Server).deleteSession},
	{"POST", "/v1/sessions/{id}/park", "session.park", bearer, (*Server).parkSession},
	{"POST", "/v1/sessions/{id}/wake", "session.wake", bearer, (*Server).wakeSession},
	{"POST", "/v1/sessions/{id}/revoke", "session.revoke", bearer, (*Server).revokeSession},
	{"GET", "/v1/sessions/{id}/events", "session.events", bearer, (*Server).sessionEvents},
	{"POST", "/v1/sessions/{id}/checkpoints", "session.checkpoint", bearer, (*Server).createCheckpoint},
	{"GET", "/v1/sessions/{id}/checkpoints", "session.checkpoint.list", bearer, (*Server).listCheckpoints},
	{"GET", "/v1/sessions/{id}/checkpoints/{name}", "session.checkpoint.get", bearer, (*Server).getCheckpoint},
	{"DELETE", "/v1/sessions/{id}/checkpoints/{name}", "session.checkpoint.delete", bearer, (*Server).deleteCheckpoint},
	{"POST", "/v1/sessions/{id}/rollback", "session.rollback", bearer, (*Server).rollbackSession},
	{"POST", "/v1/sessions/{id}/fork", "session.fork", bearer, (*Server).forkSession},

	{"POST", "/v1/sessions/{id}/exec", "session.exec", bearer, (*Server).exec},
	{"GET", "/v1/sessions/{id}/exec/ws", "session.exec", bearer, (*Server).execWS},

	{"GET", "/v1/sessions/{id}/files", "file.read", bearer, (*Server).getFile},
	{"PUT", "/v1/sessions/{id}/files", "file.write", bearer, (*Server).putFile},
	{"DELETE", "/v1/sessions/{id}/files", "file.remove", bearer, (*Server).removeFile},
	{"GET", "/v1/sessions/{id}/files/stat", "file.stat", bearer, (*Server).statFile},
	{"GET", "/v1/sessions/{id}/files/list", "file.list", bearer, (*Server).listDir},
	{"GET", "/v1/sessions/{id}/files/watch", "file.list", bearer, (*Server).watchDir},
	{"POST", "/v1/sessions/{id}/files/mkdir", "file.mkdir", bearer, (*Server).mkdir},

	{"GET", "/v1/images", "image.list", bearer, (*Server).listImages},
	{"POST", "/v1/images/{name}/build", "image.build", bearer, (*Server).buildImage},

	{"POST", "/v1/templates", "template.create", bearer, (*Server).createTemplate},
	{"GET", "/v1/templates", "template.list", bearer, (*Server).listTemplates},
	{"GET", "/v1/templates/{name}", "template.get", bearer, (*Server).getTemplate},
	{"DELETE", "/v1/templates/{name}", "template.delete", bearer, (*Server).deleteTemplate},
	{"GET", "/v1/templates/{name}/versions", "template.versions", bearer, (*Server).listTemplateVersions},
	{"POST", "/v1/templates/{name}/rebuild", "template.rebuild", bearer, (*Server).rebuildTemplate},
	{"PUT", "/v1/templates/{name}/pool", "template.pool", bearer, (*Server).setTemplatePool},

	{"POST", githubHookPath, verbHookReceive, noToken, (*Server).receiveGitHubHook},
	{"POST", "/v1/hooks/{name}", verbHookReceive, noToken, (*Server).receiveHook},
	{"GET", "/v1/hook-secrets", "hook.secret.list", bearer, (*Server).listHookSecrets},
	{"PUT", "/v1/hook-secrets/{name}", "hook.secret.put", bearer, (*Server).putHookSecret},
	{"DELETE", "/v1/hook-secrets/{name}", "hook.secret.delete", bearer, (*Server).deleteHookSecret},

	{"POST", "/v1/users", "user.create", bearer, (*Server).createUser},
	{"GET", "/v1/users", "user.list", bearer, (*Server).listUsers},
	{"DELETE", "/v1/users/{name}", "user.delete", bearer, (*Server).deleteUser},
	{"GET", "/v1/teams", "team.list", bearer, (*Server).listTeams},
	{"PUT", "/v1/teams/{team}/members/{user}", "team.member.add", bearer, (*Server).addTeamMember},
	{"DELETE", "/v1/teams/{team}/members/{user}", "team.member.remove", bearer, (*Server).removeTeamMember},
	{"POST", "/v1/tokens", "token.create", bearer, (*Server).createToken},
	{"GET", "/v1/tokens", "token.list", bearer, (*Server).listTokens},
	{"POST", "/v1/tokens/{id}/revoke", "token.revoke", bearer, (*Server).revokeToken},

	{"PUT", "/v1/secrets/{name}", "secret.put", bearer, (*Server).putSecret},
	{"GET", "/v1/secrets", "secret.list", bearer, (*Server).listSecrets},
	{"DELETE", "/v1/secrets/{name}", "secret.delete", bearer, (*Server).deleteSecret},

	{"GET", "/v1/audit/entries", "audit.entries", bearer, (*Server).auditEntries},
	{"GET", "/v1/audit/proof/{index}", "audit.proof", bearer, (*Server).auditProof},
	{"GET", "/v1/audit/checkpoint", "audit.checkpoint", bearer, (*Server).auditCheckpointGet},
	{"GET", "/v1/audit/key", "audit.key", bearer, (*Server).auditKey},
	{"GET", "/v1/audit/export", "audit.export", bearer, (*Server).auditExport},
	{"GET", "/v1/audit/witnesses", "audit.witness.list", bearer, (*Server).auditWitnesses},
	{"POST", "/v1/audit/witnesses", "audit.witness.add", bearer, (*Server).addAuditWitness},
	{"DELETE", "/v1/audit/witnesses", "audit.witness.remove", bearer, (*Server).removeAuditWitness},

	{"POST", "/v1/admin/gc", "objects.gc", bearer, (*Server).collectGarbage},

	{"GET", "/v1/nodes", "node.list", bearer, (*Server).listNodes},
	{"GET", "/v1/nodes/{id}", "node.get", bearer, (*Server).getNode},
	{"POST", "/v1/nodes/{id}/cordon", "node.cordon", bearer, (*Server).cordonNode},
	{"POST", "/v1/nodes/{id}/uncordon", "node.uncordon", bearer, (*Server).uncordonNode},
	{"POST", "/v1/nodes/{id}/drain", "node.drain", bearer, (*Server).drainNode},
	{"DELETE", "/v1/nodes/{id}", "node.remove", bearer, (*Server).removeNode},

	// Nodes: a join carries the join token, a connect the node's
	// credential, which Config.NodeLink checks.
	{"POST", "/v1/nodes/join", verbNodeJoin, noToken, (*Server).joinNode},
	{"GET", "/v1/nodes/connect", verbNodeConnect, noToken, (*Server).connectNode},
}
