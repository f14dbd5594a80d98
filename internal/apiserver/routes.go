package apiserver

import "net/http"

// route is one row of the route table.
type route struct {
	Method string
	// Path is an http.ServeMux path pattern; its {wildcards} are spelled
	// as in the OpenAPI document.
	Path string
	// Verb is the Action verb Config.Authorize sees.
	Verb   string
	handle func(s *Server, w http.ResponseWriter, r *http.Request) error
}

// routes is the whole HTTP surface. A test checks it against
// api/openapi.yaml both ways; every path under /v1 needs the token.
var routes = []route{
	{"GET", "/healthz", "health.get", (*Server).health},
	{"GET", "/metrics", "metrics.get", (*Server).serveMetrics},
	{"GET", "/v1/openapi.json", "openapi.get", (*Server).openAPI},

	{"POST", "/v1/sessions", "session.create", (*Server).createSession},
	{"GET", "/v1/sessions", "session.list", (*Server).listSessions},
	{"GET", "/v1/sessions/{id}", "session.get", (*Server).getSession},
	{"DELETE", "/v1/sessions/{id}", "session.delete", (*Server).deleteSession},
	{"POST", "/v1/sessions/{id}/park", "session.park", (*Server).parkSession},
	{"POST", "/v1/sessions/{id}/wake", "session.wake", (*Server).wakeSession},

	{"POST", "/v1/sessions/{id}/exec", "session.exec", (*Server).exec},
	{"GET", "/v1/sessions/{id}/exec/ws", "session.exec", (*Server).execWS},

	{"GET", "/v1/sessions/{id}/files", "file.read", (*Server).getFile},
	{"PUT", "/v1/sessions/{id}/files", "file.write", (*Server).putFile},
	{"DELETE", "/v1/sessions/{id}/files", "file.remove", (*Server).removeFile},
	{"GET", "/v1/sessions/{id}/files/stat", "file.stat", (*Server).statFile},
	{"GET", "/v1/sessions/{id}/files/list", "file.list", (*Server).listDir},
	{"POST", "/v1/sessions/{id}/files/mkdir", "file.mkdir", (*Server).mkdir},

	{"GET", "/v1/images", "image.list", (*Server).listImages},
	{"POST", "/v1/images/{name}/build", "image.build", (*Server).buildImage},

	{"POST", "/v1/templates", "template.create", (*Server).createTemplate},
	{"GET", "/v1/templates", "template.list", (*Server).listTemplates},
	{"GET", "/v1/templates/{name}", "template.get", (*Server).getTemplate},
	{"DELETE", "/v1/templates/{name}", "template.delete", (*Server).deleteTemplate},
}
