// Package e2b serves the E2B API on cove: the control plane (create, list,
// get, kill, timeout, pause, connect; snapshots and forks, which are
// cove's checkpoints and forks: snapshots.go) and envd (the process and filesystem
// services over the Connect protocol with the JSON codec, GET/POST /files,
// GET /health), so that the official E2B SDKs and the tools built on them
// run on cove unchanged, given a base URL and an API key.
//
// A sandbox is a cove session: its id is the session's, and what E2B keeps
// beyond a session (template name, metadata, envVars, end time,
// auto-pause) is a store.E2BSandbox record. Sessions made through cove's
// own API are sandboxes too (without metadata), and E2B-made ones are
// sessions that every cove command works on.
//
// The handler is served on a listener of its own (cove server
// --e2b-listen), at the root: the control plane's routes and envd's are
// disjoint, and envd requests carry the E2b-Sandbox-Id header (or a
// 49983-ID.domain host), by which they are told apart and routed. A path
// prefix would do for the control plane (the SDK keeps E2B_API_URL's), but
// the SDK builds signed file URLs with new URL('/files', E2B_SANDBOX_URL),
// which drops E2B_SANDBOX_URL's path: at the root of its own port, envd's
// routes are where every URL the SDK makes points.
//
// Authentication: the control plane takes X-API-KEY, a cove API token (or
// any credential Config.Authenticator accepts), and asks Config.Authorize
// with the same verbs as cove's own API (session.create, session.get, …);
// envd takes X-Access-Token, the sandbox's access token: an HMAC of its
// id under Config.Key, so it is stable across pause and resume, is never
// stored, and never enters the VM.
package e2b

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// EnvdVersion is the envd version the control plane reports. The SDK
// switches features on by it: 0.5.7 enables stdin:false, closeStdin and
// octet-stream uploads, and makes the SDK send a user only when its
// caller names one; 0.6.3 lets watchDir ask for includeEntry. 0.6.2's
// file metadata (X-Metadata-* on a write) comes with it, and is refused
// (400): cove keeps no metadata of guest files. 0.6.4's
// allowNetworkMounts is left off.
const EnvdVersion = "0.6.3"

// EnvdPort is the port the SDK names in E2b-Sandbox-Port and in envd host
// names (49983-ID.domain).
const EnvdPort = 49983

// DefaultTimeout is a sandbox's lifetime when a create names none, as
// E2B's API has it.
const DefaultTimeout = 15 * time.Second

// ResumeTimeout is the least lifetime a connect that resumes a sandbox
// without naming a timeout leaves it (the SDK's default timeout).
const ResumeTimeout = 5 * time.Minute

// Sessions is what the E2B API asks of cove's session manager;
// *session.Manager is one. Errors are *api.Error where a client caused
// them (see apiserver.Sessions).
type Sessions interface {
	Create(ctx context.Context, owner string, req api.CreateSessionRequest) (api.Session, error)
	Get(ctx context.Context, id string) (api.Session, error)
	List(ctx context.Context) ([]api.Session, error)
	Delete(ctx context.Context, id string) error
	Park(ctx context.Context, id string) (api.Session, error)
	// ParkUntil parks until an event matches one of until, or timeout
	// passes (0: none): the triggers extension of pause.
	ParkUntil(ctx context.Context, id string, until []string, timeout time.Duration) (api.Session, error)
	Wake(ctx context.Context, id string) (api.Session, error)
	GetTemplate(ctx context.Context, name string) (api.Template, error)
	// Templates keep the snapshots of removed sandboxes (kept.go).
	CreateTemplate(ctx context.Context, owner string, req api.CreateTemplateRequest) (api.Template, error)
	ListTemplates(ctx context.Context) ([]api.Template, error)
	DeleteTemplate(ctx context.Context, name string) error

	// Snapshots are checkpoints, and forks are made from them.
	CreateCheckpoint(ctx context.Context, id string, req api.CheckpointRequest) (api.Checkpoint, error)
	ListCheckpoints(ctx context.Context, id string) ([]api.Checkpoint, error)
	DeleteCheckpoint(ctx context.Context, id, name string) error
	Fork(ctx context.Context, id string, req api.ForkRequest) ([]api.Session, error)

	Exec(ctx context.Context, id string, req api.ExecRequest) (session.Process, error)
	// Attach attaches to a command a restarted server's Exec started.
	Attach(ctx context.Context, id string, pid int) (session.Process, error)
	Open(ctx context.Context, id, path string) (io.ReadCloser, error)
	WriteFile(ctx context.Context, id, path string, mode uint32, r io.Reader) error
	Stat(ctx context.Context, id, path string) (api.FileInfo, error)
	ListDir(ctx context.Context, id, path string) ([]api.FileInfo, error)
	Mkdir(ctx context.Context, id, path string) error
	Remove(ctx context.Context, id, path string) error
	Watch(ctx context.Context, id, path string, recursive, entries bool) (session.Watcher, error)
}

// Records keeps the sandboxes' E2B records, and the lease of the
// end-time sweep; store.Store is one.
type Records interface {
	PutE2BSandbox(ctx context.Context, x store.E2BSandbox) error
	GetE2BSandbox(ctx context.Context, sessionID string) (store.E2BSandbox, error)
	DueE2BSandboxes(ctx context.Context, at time.Time, limit int) ([]store.E2BSandbox, error)
	SetE2BSandboxDue(ctx context.Context, sessionID string, was, due time.Time) (bool, error)
	DeleteE2BSandbox(ctx context.Context, sessionID string) error
	// Claim takes or renews a lease (see store.Store): of the servers
	// sharing a store, the one holding expireLease ends sandboxes.
	Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error)
}

// Authenticator says whom an API key names; *identity.Authenticator is
// one (its refusals satisfy identity.IsRefusal).
type Authenticator interface {
	Authenticate(ctx context.Context, bearer string) (identity.Principal, error)
}

// Config wires a Server. Every field but Log, BaseImage, MaxFileBytes and
// Now is required.
type Config struct {
	Sessions      Sessions
	Records       Records
	Authenticator Authenticator
	// Authorize decides each control-plane request as cove's API gate
	// does ((*apiserver.PolicyGate).Authorize), with the principal in
	// ctx (identity.FromContext).
	Authorize func(ctx context.Context, a apiserver.Action) error
	// ServerID names this server in the store's leases (session.Config's
	// ServerID); "" means "e2b".
	ServerID string
	// Key signs the sandboxes' access tokens (at least 32 bytes).
	Key []byte
	// BaseImage is the image of the template "base" (the SDK's default)
	// where no cove template has that name; "" means "debian".
	BaseImage string
	// Audit, if set, records every action that changes or reveals
	// something before it is done (*audit.Log is one); an action it
	// cannot record is refused. nil records nothing.
	Audit apiserver.Auditor
	// MaxFileBytes limits one upload's body; 0 means
	// apiserver.DefaultMaxFileBytes.
	MaxFileBytes int64
	Log          *slog.Logger
	// Now is the clock of end times; nil: time.Now.
	Now func() time.Time
	// Router, if set, routes each call about a sandbox, and each create
	// placed on another server's node, to that server's E2B API
	// (route.go; routing.NewE2B). nil carries out every call here, and
	// places creates on this server's node alone.
	Router Router
	// RouteTransport carries routed calls; nil: routing.NewTransport().
	RouteTransport http.RoundTripper
	// Links, if set, are the control connections of the session-serving
	// nodes ('cove node') connected to this server (*nodelink.Hub): the
	// E2B calls about their sandboxes, and the creates placed on them,
	// are relayed over them to the nodes' own E2B APIs (route.go).
	Links Links
}

// Server is the E2B API's http.Handler.
type Server struct {
	cfg     Config
	log     *slog.Logger
	control *http.ServeMux
	envd    *http.ServeMux

	ctx    context.Context // ends with Close: the processes' lifetime
	cancel context.CancelFunc

	mu      sync.Mutex
	procs   map[string]*procTable // by session id; guarded by mu
	samples samples               // metrics.go
	pumps   sync.WaitGroup        // the processes' pumps (process.go)
	pids    atomic.Uint32         // pids given where the guest's are unknown
	routeRT http.RoundTripper     // routed calls' (route.go)
}

// New makes a Server from cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Sessions == nil || cfg.Records == nil || cfg.Authenticator == nil || cfg.Authorize == nil {
		return nil, errors.New("e2b: Sessions, Records, Authenticator and Authorize are required")
	}
	if len(cfg.Key) < 32 {
		return nil, errors.New("e2b: the access token key must have at least 32 bytes")
	}
	if cfg.BaseImage == "" {
		cfg.BaseImage = "debian"
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = apiserver.DefaultMaxFileBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ServerID == "" {
		cfg.ServerID = "e2b"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, procs: map[string]*procTable{}, routeRT: cfg.RouteTransport}
	if s.routeRT == nil {
		s.routeRT = routing.NewTransport()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.control = http.NewServeMux()
	s.control.HandleFunc("POST /v2/sandboxes", s.create)
	s.control.HandleFunc("GET /v2/sandboxes", s.list)
	s.control.HandleFunc("GET /sandboxes/{id}", s.routed(s.get))
	s.control.HandleFunc("DELETE /sandboxes/{id}", s.routed(s.kill))
	s.control.HandleFunc("POST /sandboxes/{id}/timeout", s.routed(s.setTimeout))
	s.control.HandleFunc("POST /sandboxes/{id}/pause", s.routed(s.pause))
	s.control.HandleFunc("POST /v2/sandboxes/{id}/connect", s.routedWake(s.connect))
	s.control.HandleFunc("GET /sandboxes/{id}/metrics", s.routed(s.metrics))
	s.control.HandleFunc("POST /sandboxes/{id}/snapshots", s.routed(s.createSnapshot))
	s.control.HandleFunc("GET /snapshots", s.listSnapshots)
	s.control.HandleFunc("DELETE /templates/{id}", s.routedBy(snapshotSandbox, s.deleteSnapshot))
	s.control.HandleFunc("POST /sandboxes/{id}/fork", s.routed(s.fork))
	s.control.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeControlError(w, http.StatusNotFound, "no such route: %s %s", r.Method, r.URL.Path)
	})
	s.envd = http.NewServeMux()
	s.envd.HandleFunc("GET /health", s.health)
	s.envd.HandleFunc("GET /files", s.readFile)
	s.envd.HandleFunc("POST /files", s.writeFiles)
	s.envd.HandleFunc("POST /process.Process/{method}", s.processRPC)
	s.envd.HandleFunc("POST /filesystem.Filesystem/{method}", s.filesystemRPC)
	s.envd.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeEnvdError(w, http.StatusNotFound, "no such envd route: %s %s", r.Method, r.URL.Path)
	})
	return s, nil
}

// Close ends the server's process streams, and waits (10 s at most) for
// their ends: no attachment of this server's to a guest's command is left
// (one could take the command from the next server's); the guests'
// processes run on.
func (s *Server) Close() {
	s.cancel()
	done := make(chan struct{})
	go func() { s.pumps.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.log.Warn("e2b: close: process streams still ending after 10 s")
	}
}

// envdHost matches an envd host name, 49983-ID.domain.
var envdHost = regexp.MustCompile(`^(\d+)-([a-z0-9-]+)\.`)

// ServeHTTP routes a request to envd when it names a sandbox (the
// E2b-Sandbox-Id header, or an envd host name), else to the control plane.
//
// A call another server forwarded here (routing.Header), and every call
// when no Router is set, acts on this server's node alone (session.Here).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.relayTo(w, r) {
		return
	}
	if s.cfg.Router == nil || routedHere(r) {
		r = r.WithContext(session.Here(r.Context()))
	}
	if r.URL.Path == "/files" && r.URL.Query().Has("signature") {
		if s.route(w, r, sandboxOf(r), true) {
			return
		}
		s.serveSigned(w, r) // it may name no sandbox: see signed.go
		return
	}
	if id := sandboxOf(r); id != "" {
		if s.route(w, r, id, true) {
			return
		}
		s.serveEnvd(w, r, id)
		return
	}
	s.control.ServeHTTP(w, r)
}

func sandboxOf(r *http.Request) string {
	if id := r.Header.Get("E2b-Sandbox-Id"); id != "" {
		return id
	}
	if m := envdHost.FindStringSubmatch(r.Host); m != nil {
		return m[2]
	}
	return ""
}

// AccessToken is the envd access token of the sandbox id.
func (s *Server) AccessToken(id string) string {
	mac := hmac.New(sha256.New, s.cfg.Key)
	mac.Write([]byte("e2b-envd-access-token\x00" + id))
	return hex.EncodeToString(mac.Sum(nil))
}

func (s *Server) tokenOK(id, token string) bool {
	return subtle.ConstantTimeCompare([]byte(s.AccessToken(id)), []byte(token)) == 1
}

// errorBody is the control plane's error answer, which the SDK branches on
// (its code is the HTTP status).
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":500,"message":"encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeControlError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, errorBody{Code: status, Message: fmt.Sprintf(format, args...)})
}

// writeEnvdError answers an envd HTTP route (/files, /health, an unknown
// one) as envd does: {code, message}.
func writeEnvdError(w http.ResponseWriter, status int, format string, args ...any) {
	writeControlError(w, status, format, args...)
}

// statusOf is the HTTP status of a session manager error, with the
// message to give; internal errors are logged, not told.
func (s *Server) statusOf(r *http.Request, what string, err error) (int, string) {
	code := api.CodeOf(err)
	switch {
	case code != api.CodeInternal:
	case errors.Is(err, store.ErrUnavailable):
		code = api.CodeUnavailable
	case errors.Is(err, store.ErrConflict):
		code = api.CodeConflict
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = api.CodeTimeout
	}
	if code == api.CodeInternal {
		s.log.ErrorContext(r.Context(), "e2b: internal error", "what", what, "err", err)
		return http.StatusInternalServerError, what + ": internal error (see the server's log)"
	}
	return api.Status(code), err.Error()
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	status, msg := s.statusOf(r, what, err)
	writeControlError(w, status, "%s", msg)
}
