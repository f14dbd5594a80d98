// Package apiserver serves cove's REST API (docs/HTTP.md, api/openapi.yaml)
// over HTTP. It authenticates, decodes and validates requests and calls the
// session manager and image builder through the Sessions and Images
// interfaces; it holds no business logic of its own.
//
// Invariant: every request, whatever its route, passes through one function,
// (*Server).gate. For every request under /v1 the gate checks the bearer
// token before anything else: the admin token (in constant time), else
// through Config.Authenticator (API tokens, JWTs), and puts the
// identity.Principal in the request's context (identity.FromContext);
// without Config.Authorize only admins pass (cove server sets it to
// (*PolicyGate).Authorize, which decides with a Cedar policy: authz.go).
// The admin token only bootstraps: whatever Authorize would say, the gate
// refuses it every verb but the identity ones (bootstrapVerbs: users,
// teams, tokens, whoami) with 403.
// For every request that matched a /v1 route it then builds an Action
// from the URL and calls Config.Authorize before the handler reads the
// body (handlers that read more ask it again; see Action) — except for the
// verbs whose decision needs the body (session.create, session.exec,
// token.create, secret.put: decidedByHandler), where it checks only the token's
// scopes and the handler, always, decides once it has read the body. Once
// a verb that changes or reveals something (auditedVerbs) is allowed, its
// announcement is sequenced in Config.Audit's log before the handler acts
// (by decide, for the decidedByHandler verbs), or the request is refused
// with 503; 401s and 403s are logged as denials; and
// it logs every
// request (method, path, status, duration, action) and counts it in
// cove_http_requests_total. Handlers are reached only through the gate, so
// policy and audit hooks land in one place. Only GET /healthz,
// GET /metrics, GET /auth/oidc (how to sign in), cove's issuer documents
// and the webhook routes (POST /v1/hooks/…, marked NoToken in the route
// table) are served without a token; webhook senders sign their
// deliveries instead, which Config.Hooks checks, and the gate still builds
// their Action, calls Config.Authorize, logs and counts them.
//
// With Config.Router, a call about a session that another server's node
// holds is forwarded there once its token is checked here, before
// Authorize: that server decides, audits and carries it out (route.go).
//
// The server's deadlines (Timeouts, applied by HTTPServer) hold for
// everyone until the token is checked: once it is, the gate lifts the read
// and write deadlines, so exec, image builds, template builds, park, wake
// and file transfers outlast them. A webhook's body is paced instead (a
// minimum rate after a grace period), and the Receiver bounds what
// pending deliveries hold.
package apiserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/trigger"
)

// DefaultMaxFileBytes is the default limit on the body of PUT
// /v1/sessions/{id}/files (Config.MaxFileBytes).
const DefaultMaxFileBytes int64 = 4 << 30

// Config wires a Server. Sessions is required; the rest have defaults.
type Config struct {
	// Sessions is the session manager.
	Sessions Sessions
	// Images is the image builder; nil answers the image routes with 503.
	Images Images
	// Hooks receives webhook deliveries (POST /v1/hooks/…); nil answers
	// them with 503.
	Hooks Hooks
	// HookSecrets keeps the webhook secrets (/v1/hook-secrets); nil
	// answers those routes with 503.
	HookSecrets HookSecrets
	// Token is the admin token: the bearer token every /v1 request must
	// carry unless Authenticator accepts another. An empty Token accepts
	// no admin token; without an Authenticator that refuses every /v1
	// request.
	Token string
	// Authenticator, if set, is asked about every bearer credential that
	// is not Token (API tokens, JWTs); nil accepts Token alone. Until
	// Authorize is set, only admins get past the gate (403 for others).
	Authenticator Authenticator
	// Identities keeps users and API tokens (/v1/users, /v1/tokens); nil
	// answers those routes with 503.
	Identities Identities
	// Secrets keeps the secrets the egress proxy adds to sessions'
	// requests (/v1/secrets); nil answers those routes with 503.
	Secrets Secrets
	// GC runs a garbage collection of the object store now (POST
	// /v1/admin/gc); nil answers that route with 503.
	GC func(ctx context.Context) (api.GCResult, error)
	// Nodes manages the nodes (/v1/nodes); nil answers those routes
	// with 503.
	Nodes Nodes
	// Log receives one line per request; nil discards.
	Log *slog.Logger
	// Metrics is where the server's metrics go; nil makes a new set. Pass
	// one made by NewMetrics to share it with the session manager.
	Metrics *Metrics
	// Authorize, if set, is called for every request that matched a /v1
	// route, after the token was checked (for routes that need one) and
	// before the body is read; again by the handlers that read more of
	// the request in their body, and for each item of a list (see
	// Action). For session.create, session.exec, token.create and
	// secret.put, whose decision needs the body, only the handler calls it, once it has
	// read the body. A non-nil error refuses the request: an *api.Error chooses
	// the answer (CodeForbidden to deny, with the reason as its message);
	// any other error is a 500. (*PolicyGate).Authorize decides with a
	// policy.
	Authorize func(ctx context.Context, a Action) error
	// MaxFileBytes limits the body of a file upload; 0 means
	// DefaultMaxFileBytes.
	MaxFileBytes int64
	// Timeouts is how long the server waits on clients (see Timeouts and
	// HTTPServer); zero fields take the defaults.
	Timeouts Timeouts
	// SignIn lists the OIDC issuers whose ID tokens Authenticator
	// accepts, which GET /auth/oidc tells 'cove login'; nil: none.
	SignIn []api.OIDCIssuer
	// Issuer serves cove's OpenID issuer documents, GET
	// /.well-known/openid-configuration and /.well-known/jwks.json, to
	// anyone ((*issuer.Issuer).Handler of an issuer whose URL has no
	// path); nil answers them 404.
	Issuer http.Handler
	// Audit, if set, sequences every action that changes or reveals
	// something in the audit log before it takes effect, and the gate's
	// refusals (see auditedVerbs): a request whose announcement cannot be
	// logged is refused with 503 and does not happen. nil logs nothing.
	Audit Auditor
	// AuditLog is the audit log the /v1/audit routes read (policy action
	// audit.read, admins only by default); nil answers them with 503.
	AuditLog AuditLog
	// NodeLink serves the nodes' join and connect routes, which take no
	// API token; nil refuses joins (403) and connects (503).
	NodeLink NodeLink
	// Router, if set, routes each call about a session to the server
	// whose node holds it (route.go); nil carries out every call here.
	Router Router
	// RouteTransport carries routed calls; nil: http.DefaultTransport's
	// settings, with a connect given up after routing.DialTimeout.
	RouteTransport http.RoundTripper
}

// LogValue keeps the token out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("token_set", c.Token != ""),
		slog.Bool("images", c.Images != nil),
		slog.Bool("hooks", c.Hooks != nil),
		slog.Bool("hook_secrets", c.HookSecrets != nil),
		slog.Bool("authenticator", c.Authenticator != nil),
		slog.Bool("identities", c.Identities != nil),
		slog.Bool("secrets", c.Secrets != nil),
		slog.Bool("authorize", c.Authorize != nil),
		slog.Int64("max_file_bytes", c.MaxFileBytes),
		slog.Bool("audit", c.Audit != nil),
	)
}

// Action is what a request asks to do, as Config.Authorize sees it. The
// gate builds it from the method and URL alone, before the body is read.
// Where the body says what a policy weighs, the handler, not the gate,
// asks Authorize once it has read it, with the same verb and those fields
// set: session.create with the Template a clone comes from ("" for none),
// session.exec with the Argv it runs, token.create with the User the
// token is for ("" for the caller), secret.put with the User, Team or
// Template whose secret it is (none: the caller's own). A permit that depends on them (a
// command, a template) can thus allow what the URL alone would not. And
// the list routes ask about each item they would show (session.get,
// template.get) and leave out those denied.
type Action struct {
	// Verb names the operation: "session.create", "session.exec",
	// "file.write", … (the verb column of the route table in routes.go).
	Verb string
	// SessionID is the {id} of a session route.
	SessionID string
	// Path is the cleaned guest path ("path=") of a file route.
	Path string
	// Image is the {name} of an image route.
	Image string
	// Template is the {name} of a template route. It is empty for
	// "template.create", whose name is in the body, and is the template
	// of a clone in the second decision of "session.create".
	Template string
	// Hook is the hook name of a webhook route ("github" for
	// POST /v1/hooks/github) or of a hook-secret route.
	Hook string
	// User is the {name} of a user route, the ?user= of token.list, or
	// the user named in the body of token.create (second decision).
	User string
	// Token is the {id} of a token route.
	Token string
	// Node is the {id} of a node route: a node's id or name.
	Node string
	// Witness is the URL of an audit witness: the ?url= of
	// audit.witness.remove, the body's of audit.witness.add (its outcome).
	Witness string
	// Argv is the command line of session.exec, which its handler
	// decides with.
	Argv []string
	// Cwd and TTY are session.exec's working directory and whether it
	// runs on a terminal (a PTY attach): not weighed by the policy, but
	// recorded in the audit log.
	Cwd string
	TTY bool
	// Secret is the {name} of a secret route. Its owner is the ?user=,
	// ?team= or ?template= of secret.list and secret.delete, or what the
	// body of secret.put names (second decision), in User, Team or
	// Template; none of them: the caller's own.
	Secret string
	// Team is the team whose secrets a secret route is about.
	Team string
	// All is secret.list's ?all=true: every owner's secrets.
	All bool
}

// LogValue lists the action's non-empty fields.
func (a Action) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("verb", a.Verb)}
	if a.SessionID != "" {
		attrs = append(attrs, slog.String("session", a.SessionID))
	}
	if a.Path != "" {
		attrs = append(attrs, slog.String("path", a.Path))
	}
	if a.Image != "" {
		attrs = append(attrs, slog.String("image", a.Image))
	}
	if a.Template != "" {
		attrs = append(attrs, slog.String("template", a.Template))
	}
	if a.Hook != "" {
		attrs = append(attrs, slog.String("hook", a.Hook))
	}
	if a.User != "" {
		attrs = append(attrs, slog.String("user", a.User))
	}
	if a.Token != "" {
		attrs = append(attrs, slog.String("token", a.Token))
	}
	if a.Node != "" {
		attrs = append(attrs, slog.String("node", a.Node))
	}
	if a.Argv != nil {
		attrs = append(attrs, slog.Any("argv", a.Argv))
	}
	if a.Secret != "" {
		attrs = append(attrs, slog.String("secret", a.Secret))
	}
	if a.Team != "" {
		attrs = append(attrs, slog.String("team", a.Team))
	}
	if a.All {
		attrs = append(attrs, slog.Bool("all", true))
	}
	if a.Cwd != "" {
		attrs = append(attrs, slog.String("cwd", a.Cwd))
	}
	if a.TTY {
		attrs = append(attrs, slog.Bool("tty", true))
	}
	return slog.GroupValue(attrs...)
}

// Server is cove's HTTP API. Make one with New.
type Server struct {
	sessions     Sessions
	images       Images
	hooks        Hooks
	hookSecrets  HookSecrets
	identities   Identities
	secrets      Secrets
	gc           func(ctx context.Context) (api.GCResult, error)
	nodes        Nodes
	authn        Authenticator
	tokenSum     [sha256.Size]byte
	tokenSet     bool
	log          *slog.Logger
	metrics      *Metrics
	authorize    func(ctx context.Context, a Action) error
	maxFileBytes int64
	timeouts     Timeouts
	signIn       []api.OIDCIssuer
	issuer       http.Handler
	auditor      Auditor
	auditLog     AuditLog
	nodeLink     NodeLink
	router       Router
	routeRT      http.RoundTripper
	publicPaths  map[string]bool // "METHOD PATTERN" of the routes served without the token
	openAPIJSON  []byte
	openAPIErr   error
	mux          *http.ServeMux
}

// New makes a Server. It panics if cfg.Sessions is nil.
func New(cfg Config) *Server {
	if cfg.Sessions == nil {
		panic("apiserver: New: Config.Sessions is nil")
	}
	s := &Server{
		sessions:     cfg.Sessions,
		images:       cfg.Images,
		hooks:        cfg.Hooks,
		hookSecrets:  cfg.HookSecrets,
		identities:   cfg.Identities,
		secrets:      cfg.Secrets,
		gc:           cfg.GC,
		nodes:        cfg.Nodes,
		authn:        cfg.Authenticator,
		tokenSum:     sha256.Sum256([]byte(cfg.Token)),
		tokenSet:     cfg.Token != "",
		log:          cfg.Log,
		metrics:      cfg.Metrics,
		authorize:    cfg.Authorize,
		maxFileBytes: cfg.MaxFileBytes,
		timeouts:     cfg.Timeouts.withDefaults(),
		signIn:       cfg.SignIn,
		issuer:       cfg.Issuer,
		auditor:      cfg.Audit,
		auditLog:     cfg.AuditLog,
		nodeLink:     cfg.NodeLink,
		router:       cfg.Router,
		routeRT:      cfg.RouteTransport,
		publicPaths:  map[string]bool{},
	}
	if s.routeRT == nil {
		s.routeRT = newRouteTransport()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	if s.maxFileBytes <= 0 {
		s.maxFileBytes = DefaultMaxFileBytes
	}
	if !s.tokenSet && s.authn == nil {
		s.log.Warn("apiserver: no token configured; every /v1 request will be refused")
	}
	s.metrics.watchSessions(cfg.Sessions.List)
	s.openAPIJSON, s.openAPIErr = openAPIJSON()
	if s.openAPIErr != nil {
		s.log.Error("apiserver: openapi document", "err", s.openAPIErr)
	}

	s.mux = http.NewServeMux()
	for _, rt := range routes {
		s.mux.Handle(rt.Method+" "+rt.Path, s.gate(rt))
		if rt.NoToken {
			s.publicPaths[rt.Method+" "+rt.Path] = true
		}
	}
	s.mux.Handle("/", s.gate(route{}))
	return s
}

// Handler returns the HTTP handler serving every route.
func (s *Server) Handler() http.Handler { return s.mux }

// Metrics returns the server's metrics (Config.Metrics or the set New made).
func (s *Server) Metrics() *Metrics { return s.metrics }

// gate is the one function every request passes through; see the package
// doc for what it guarantees.
func (s *Server) gate(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		audited := &auditState{}
		r = r.WithContext(context.WithValue(r.Context(), auditKey{}, audited))
		act := Action{Verb: rt.Verb, SessionID: r.PathValue("id")}
		switch {
		case strings.HasPrefix(rt.Verb, "template."):
			act.Template = r.PathValue("name")
		case strings.HasPrefix(rt.Verb, "hook."):
			act.Hook = r.PathValue("name")
			if rt.Path == githubHookPath {
				act.Hook = trigger.GitHubHook
			}
		case strings.HasPrefix(rt.Verb, "user."):
			act.User = r.PathValue("name")
		case strings.HasPrefix(rt.Verb, "secret."):
			q := r.URL.Query()
			act.Secret = r.PathValue("name")
			act.User, act.Team, act.Template = q.Get("user"), q.Get("team"), q.Get("template")
			act.All = q.Get("all") == "true"
		case strings.HasPrefix(rt.Verb, "token."):
			act.SessionID, act.Token = "", r.PathValue("id")
			if rt.Verb == "token.list" {
				act.User = r.URL.Query().Get("user")
			}
		case strings.HasPrefix(rt.Verb, "audit.witness."):
			act.Witness = r.URL.Query().Get("url")
		case strings.HasPrefix(rt.Verb, "node."):
			act.SessionID, act.Node = "", r.PathValue("id")
		default:
			act.Image = r.PathValue("name")
		}
		if strings.HasPrefix(rt.Verb, "file.") {
			act.Path = cleanPath(r.URL.Query().Get("path"))
		}
		// private: a /v1 request, matched or not. The unmatched route
		// (no Path) needs the token under /v1, unless the path is served
		// only without it (a webhook's): its 405 asks for no token.
		private := isV1(rt.Path) || isV1(r.URL.Path)
		needsToken := !rt.NoToken && (rt.Path != "" || private)
		var allow []string
		if rt.Path == "" {
			var public bool
			allow, public = s.allowed(r)
			needsToken = needsToken && !public
		}

		var err error
		if needsToken {
			var p identity.Principal
			p, err = s.authenticate(rec, r)
			if err == nil {
				audited.actor = auditActor(p)
			}
			if err == nil && rt.Path != "" { // unmatched: 404 or 405 below
				err = bootstrapOnly(p, act.Verb)
			}
			if err == nil && s.authorize == nil {
				err = adminsOnly(p)
				if err == nil {
					err = scopeError(p, act.Verb)
				}
			}
			if err == nil {
				r = r.WithContext(identity.NewContext(r.Context(), p))
				// The client holds the token: its request may take as
				// long as it needs (see Timeouts).
				liftDeadlines(rec)
			} else {
				// Answer at once and close: the server would otherwise
				// wait for (some of) the body of a request it refuses.
				rec.Header().Set("Connection", "close")
			}
		}
		if rt.Verb == verbHookReceive {
			paceHookBody(rec, r, s.timeouts)
		}
		// Routed: carried out by the server whose node holds the
		// session, which decides and audits it (route.go).
		var routed bool
		var createBody []byte
		if err == nil && needsToken && rt.Path != "" {
			r, routed, err = s.routeSession(rec, r, act)
			if err == nil && !routed {
				createBody, err = s.bufferCreate(r, act)
			}
		}
		if err == nil && !routed && private && s.authorize != nil && act.Verb != "" {
			if decidedByHandler[act.Verb] {
				// The policy may weigh the body, which the handler
				// reads and then decides with; here, the scopes only.
				p, _ := identity.FromContext(r.Context())
				err = scopeError(p, act.Verb)
			} else {
				err = authorizeError(act.Verb, s.authorize(r.Context(), act))
			}
		}
		if err == nil && !routed && private && rt.Path != "" && !decidedByHandler[act.Verb] {
			// Allowed: sequenced in the audit log before the handler
			// acts, or refused (decidedByHandler verbs: in decide).
			err = s.announce(r.Context(), act)
		}
		if err == nil && rt.Path == "" {
			err = unmatched(rec, r, allow)
		} else if err == nil && !routed {
			err = rt.handle(s, rec, r)
			if err != nil && rec.status == 0 {
				err = s.forwardCreate(rec, r, act, createBody, err, func(r *http.Request) error { return rt.handle(s, rec, r) })
			}
		}
		if err != nil {
			s.auditRefusal(r.Context(), act, err)
		}
		started := rec.status != 0 // the handler began its answer
		if err != nil && !started {
			s.writeError(rec, r, act.Verb, err)
		}

		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.countRequest(r.Method, status)
		if rt.Verb == verbHookReceive {
			s.metrics.countWebhook(status)
		}
		level := slog.LevelInfo
		switch {
		case status >= 500:
			level = slog.LevelError
		case !private && status < 400:
			level = slog.LevelDebug
		}
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", status),
			slog.Duration("duration", time.Since(start)),
			slog.Any("action", act),
		}
		if err != nil {
			attrs = append(attrs, slog.Any("err", err))
		}
		s.log.LogAttrs(r.Context(), level, "http request", attrs...)

		// A handler that fails after its answer began cannot send an error
		// body; cut the connection so the client sees a broken answer
		// rather than a short one, unless it told the client in-band.
		var inBand *reportedError
		if err != nil && started && !errors.As(err, &inBand) {
			panic(http.ErrAbortHandler)
		}
	})
}

// authenticate checks the bearer token: the admin token in constant time,
// then, if there is one, with the Authenticator.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (identity.Principal, error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cove"`)
		return identity.Principal{}, api.Errorf(api.CodeUnauthorized, "missing bearer token (Authorization: Bearer TOKEN)")
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1 && s.tokenSet {
		return identity.Principal{Kind: identity.KindAdminToken}, nil
	}
	if s.authn == nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cove", error="invalid_token"`)
		return identity.Principal{}, api.Errorf(api.CodeUnauthorized, "invalid bearer token")
	}
	return authenticateWith(r.Context(), w, s.authn, strings.TrimSpace(token))
}

// allowed returns the methods the mux serves r's path with, other than
// r's, and whether every one of them is served without the token.
func (s *Server) allowed(r *http.Request) (allow []string, public bool) {
	public = true
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pat := s.mux.Handler(probe); pat != "" && pat != "/" {
			allow = append(allow, m)
			public = public && s.publicPaths[pat]
		}
	}
	return allow, public && len(allow) > 0
}

// unmatched answers requests that no route matched: 405 if the path has
// routes for other methods (allow), else 404.
func unmatched(w http.ResponseWriter, r *http.Request, allow []string) error {
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		return &statusError{
			status: http.StatusMethodNotAllowed,
			code:   codeMethodNotAllowed,
			msg:    fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")),
		}
	}
	return api.Errorf(api.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path)
}

func isV1(p string) bool { return p == "/v1" || strings.HasPrefix(p, "/v1/") }

// cleanPath cleans an absolute guest path; others are returned as they are
// (the handler rejects them).
func cleanPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 {
		return p
	}
	return path.Clean(p)
}

// recorder remembers the status a handler answered with. Unwrap lets
// http.ResponseController and the WebSocket upgrade reach the real writer.
type recorder struct {
	http.ResponseWriter
	status int // 0 until the header is written
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// unwrap returns the writer under a recorder, for http.MaxBytesReader,
// which tells the server to close the connection only through it.
func unwrap(w http.ResponseWriter) http.ResponseWriter {
	if r, ok := w.(*recorder); ok {
		return r.ResponseWriter
	}
	return w
}
