package nodelink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Store is what the hub needs of the state store (store.Store has it).
type Store interface {
	CreateNode(ctx context.Context, n *store.Node) error
	UpdateNode(ctx context.Context, n *store.Node) error
	GetNodeByName(ctx context.Context, name string) (store.Node, error)
	GetNodeByCredential(ctx context.Context, hash string) (store.Node, error)
	GetNode(ctx context.Context, id string) (store.Node, error)
	HeartbeatNode(ctx context.Context, id string, at time.Time, c store.NodeCapacity) error
}

// HubConfig wires a Hub.
type HubConfig struct {
	// Store keeps the nodes' records.
	Store Store
	// JoinToken is the secret a node joins with; "" refuses every join
	// (403), while nodes that joined before still connect.
	JoinToken string
	// Handler is the server's node-facing handler, which nodes call over
	// their connection (NodeID tells which); HeartbeatPath is served
	// before it. nil answers 404.
	Handler http.Handler
	// Announce, if set, is called for each join whose token and body
	// passed, before the node's record or credential change (cove server
	// sequences it in the audit log); an error refuses the join with 503
	// and changes nothing.
	Announce func(ctx context.Context, name string) error
	// Local is the id of this server's embedded node, which needs no
	// connection: Connected reports it connected. "" when there is none.
	Local string
	// Log receives connects, drops and refusals; nil discards.
	Log *slog.Logger
	// Now is the clock of joins and heartbeats; nil is time.Now.
	Now func() time.Time
}

// Hub is the server's end of the nodes' control connections: it serves
// the join and connect routes, keeps one connection per node, and calls
// the nodes through them (Client).
type Hub struct {
	cfg       HubConfig
	joins     joinLimiter // failed joins by source (joinlimit.go)
	log       *slog.Logger
	transport *http.Transport

	mu     sync.Mutex
	links  map[string]*link // by node id; guarded by mu
	url    string           // SetURL's; guarded by mu
	e2bURL string           // SetE2BURL's; guarded by mu
}

// link is one node's control connection.
type link struct {
	nodeID string
	name   string
	sess   *yamux.Session
	serves bool // the node serves sessions (HeaderServes)
}

// NewHub makes a Hub.
func NewHub(cfg HubConfig) *Hub {
	h := &Hub{cfg: cfg, log: cfg.Log, links: map[string]*link{}}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.cfg.Now == nil {
		h.cfg.Now = time.Now
	}
	h.transport = streamTransport(func(_ context.Context, id string) (*yamux.Session, error) { return h.session(id) })
	return h
}

// session is node id's control connection.
func (h *Hub) session(id string) (*yamux.Session, error) {
	h.mu.Lock()
	l := h.links[id]
	h.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotConnected)
	}
	return l.sess, nil
}

// Dial opens a stream to node id's handler over its control connection,
// on which the caller speaks HTTP/1.1 itself: one exchange, or one that
// upgrades and keeps the stream (vmm/remote's agent connections and call
// streams take it as their dial function). The stream keeps deadlines.
// While the node is not connected it fails with ErrNotConnected.
func (h *Hub) Dial(ctx context.Context, id string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sess, err := h.session(id)
	if err != nil {
		return nil, err
	}
	st, err := sess.Open()
	if err != nil {
		return nil, fmt.Errorf("node %s: open a stream: %w", id, err)
	}
	return st, nil
}

// Connected reports whether node id has a control connection to this
// server now, or is this server's embedded node (HubConfig.Local).
func (h *Hub) Connected(id string) bool {
	if id != "" && id == h.cfg.Local {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.links[id]
	return l != nil && !l.sess.IsClosed()
}

// Client returns an HTTP client whose requests go to node id's handler
// over its control connection, whatever the URL's host: use
// "http://node/PATH". While the node is not connected, requests fail
// with ErrNotConnected.
func (h *Hub) Client(id string) *http.Client {
	return &http.Client{Transport: nodeTransport{id: id, next: h.transport}}
}

// Info asks node id who it is (GET /node/v1/info) over its connection:
// ErrNotConnected while it has none.
func (h *Hub) Info(ctx context.Context, id string) (Info, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://node"+InfoPath, nil)
	if err != nil {
		return Info{}, err
	}
	resp, err := h.Client(id).Do(req)
	if err != nil {
		return Info{}, fmt.Errorf("node %s: info: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Info{}, fmt.Errorf("node %s: info: %w", id, answerError(resp, "info"))
	}
	var info Info
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxJoinBytes)).Decode(&info); err != nil {
		return Info{}, fmt.Errorf("node %s: info: %w", id, err)
	}
	return info, nil
}

// SetURL sets the URL the other servers reach this server at (its
// advertise URL; "" for none). A node that connects serving sessions
// (HeaderServes) has its record's URL set to it: calls about its
// sessions are routed to this server, which relays them over its
// connection (Transport).
func (h *Hub) SetURL(u string) {
	h.mu.Lock()
	h.url = u
	h.mu.Unlock()
}

// SetE2BURL sets the URL of this server's E2B-compatible API (its
// --e2b-advertise-url; "" for none). A node that connects serving
// sessions has its record's E2BURL set to it with its URL (none clears
// it): E2B calls about its sessions are routed to this server, which
// relays them over the connection (HeaderAPI). The nodes serving
// sessions connected now have theirs set at once: the E2B API may start
// after them.
func (h *Hub) SetE2BURL(ctx context.Context, u string) {
	h.mu.Lock()
	h.e2bURL = u
	var serving []store.Node
	for _, l := range h.links {
		if l.serves && !l.sess.IsClosed() {
			serving = append(serving, store.Node{ID: l.nodeID, Name: l.name})
		}
	}
	h.mu.Unlock()
	for _, n := range serving {
		h.route(ctx, n, true)
	}
}

// E2BURL is what SetE2BURL set.
func (h *Hub) E2BURL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.e2bURL
}

// URL is what SetURL set.
func (h *Hub) URL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.url
}

// Transport returns a transport whose requests go to node id's handler
// over its control connection (the URL's host is not used; the Host
// header is kept), and ok true, when node id is connected to this
// server; ok false when it is not (this server's embedded node, Local,
// has no connection: false too). A request made once the connection
// dropped fails with ErrNotConnected.
func (h *Hub) Transport(id string) (http.RoundTripper, bool) {
	if id == "" || id == h.cfg.Local {
		return nil, false
	}
	h.mu.Lock()
	l := h.links[id]
	h.mu.Unlock()
	if l == nil || l.sess.IsClosed() {
		return nil, false
	}
	return relayTransport{id: id, next: h.transport}, true
}

// relayTransport sends every request to one node, keeping its Host
// header (that of the API call it relays).
type relayTransport struct {
	id   string
	next http.RoundTripper
}

func (t relayTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if r.Host == "" {
		r.Host = r.URL.Host
	}
	r.URL.Scheme, r.URL.Host = "http", t.id
	return t.next.RoundTrip(r)
}

// nodeTransport sends every request to one node.
type nodeTransport struct {
	id   string
	next http.RoundTripper
}

func (t nodeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = "http", t.id, t.id
	return t.next.RoundTrip(r)
}

// Close drops every control connection (the nodes reconnect to another
// server, or to this one once it is back).
func (h *Hub) Close() {
	h.mu.Lock()
	links := h.links
	h.links = map[string]*link{}
	h.mu.Unlock()
	for _, l := range links {
		_ = l.sess.Close()
	}
}

// ServeHTTP serves the join and connect routes alone, each error as the
// API's error envelope; apiserver mounts Join and Connect in its own
// route table instead.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var err error
	switch {
	case r.Method == http.MethodPost && r.URL.Path == JoinPath:
		err = h.Join(w, r)
	case r.Method == http.MethodGet && r.URL.Path == ConnectPath:
		err = h.Connect(w, r)
	default:
		err = api.Errorf(api.CodeNotFound, "%s %s: no such route", r.Method, r.URL.Path)
	}
	if err != nil && !started(err) {
		writeError(w, err)
	}
}

// Join serves POST /v1/nodes/join: it checks the join token, makes or
// finds the node's record by name, issues a new credential (replacing the
// last one's hash) and answers JoinResponse. It writes only success; an
// error (an *api.Error for the client's faults) is for the caller to
// answer, and changed nothing.
func (h *Hub) Join(w http.ResponseWriter, r *http.Request) error {
	if h.cfg.JoinToken == "" {
		return api.Errorf(api.CodeForbidden, "joining is disabled: start the server with --join-token-file")
	}
	src, now := source(r), h.cfg.Now()
	if d := h.joins.wait(src, now); d > 0 {
		secs := int((d + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		h.log.Warn("nodelink: join refused: too many bad join tokens from its address", "remote", r.RemoteAddr, "retry_after_s", secs)
		return api.Errorf(api.CodeTooManyRequests, "join: too many joins with a bad join token from %s: try again in %d s", src, secs)
	}
	tok := bearer(r)
	if tok == "" {
		h.joins.failed(src, now)
		return api.Errorf(api.CodeUnauthorized, "join: no join token: send it as the bearer token (cove node --join-token)")
	}
	if !tokenEqual(tok, h.cfg.JoinToken) {
		h.joins.failed(src, now)
		h.log.Warn("nodelink: join refused: wrong join token", "remote", r.RemoteAddr)
		return api.Errorf(api.CodeUnauthorized, "join: wrong join token")
	}
	var req JoinRequest
	if err := decodeJSON(w, r, MaxJoinBytes, &req); err != nil {
		return err
	}
	if err := ValidName(req.Name); err != nil {
		return err
	}
	if err := ValidLabels(req.Labels); err != nil {
		return err
	}
	if err := validCapacity(req.Capacity); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if h.cfg.Announce != nil {
		if err := h.cfg.Announce(r.Context(), req.Name); err != nil {
			h.log.Error("nodelink: join refused: it cannot be announced", "name", req.Name, "err", err)
			return api.Errorf(api.CodeUnavailable, "join: refused, as it cannot be recorded in the audit log; try again later")
		}
	}
	n, cred, err := h.join(r.Context(), req)
	if err != nil {
		return err
	}
	h.log.Info("nodelink: node joined; new credential issued", "node", n.ID, "name", n.Name, "labels", n.Labels)
	return writeJSON(w, http.StatusOK, JoinResponse{NodeID: n.ID, Credential: cred})
}

// join makes node req.Name's record, or updates the one of that name,
// with a new credential.
func (h *Hub) join(ctx context.Context, req JoinRequest) (store.Node, Credential, error) {
	cred, err := NewCredential()
	if err != nil {
		return store.Node{}, "", err
	}
	now := h.cfg.Now().UTC()
	for range 8 { // each turn lost a race to a concurrent join of the name
		n, err := h.cfg.Store.GetNodeByName(ctx, req.Name)
		if errors.Is(err, store.ErrNotFound) {
			n = store.Node{ID: store.NewNodeID(), Name: req.Name, Labels: req.Labels, Capacity: req.Capacity,
				CredentialHash: cred.Hash(), JoinedAt: now, HeartbeatAt: now}
			err = h.cfg.Store.CreateNode(ctx, &n)
			if errors.Is(err, store.ErrExists) {
				continue
			}
			if err != nil {
				return store.Node{}, "", fmt.Errorf("join: %w", err)
			}
			return n, cred, nil
		}
		if err != nil {
			return store.Node{}, "", fmt.Errorf("join: %w", err)
		}
		if n.Embedded {
			return store.Node{}, "", api.Errorf(api.CodeConflict, "join: %q is the name of a server's embedded node; give this node another --name", req.Name)
		}
		n.Labels, n.Capacity, n.CredentialHash = req.Labels, req.Capacity, cred.Hash()
		err = h.cfg.Store.UpdateNode(ctx, &n)
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return store.Node{}, "", fmt.Errorf("join: %w", err)
		}
		h.dropOld(n.ID, "the node joined again")
		return n, cred, nil
	}
	return store.Node{}, "", api.Errorf(api.CodeConflict, "join: node %q is being joined concurrently; try again", req.Name)
}

// dropOld closes node id's connection, which a rejoin made stale.
func (h *Hub) dropOld(id, why string) {
	h.mu.Lock()
	l := h.links[id]
	delete(h.links, id)
	h.mu.Unlock()
	if l != nil {
		h.log.Info("nodelink: connection dropped", "node", id, "why", why)
		_ = l.sess.Close()
	}
}

// Connect serves GET /v1/nodes/connect: it checks the node's credential,
// upgrades to a WebSocket, runs the node's yamux session over it and
// serves the node's streams until the connection ends. A node's earlier
// connection is closed. Errors before the upgrade are for the caller to
// answer.
func (h *Hub) Connect(w http.ResponseWriter, r *http.Request) error {
	cred := Credential(bearer(r))
	if cred == "" {
		return api.Errorf(api.CodeUnauthorized, "connect: no node credential: send it as the bearer token")
	}
	if !cred.Valid() {
		return api.Errorf(api.CodeUnauthorized, "connect: the node credential is not valid")
	}
	n, err := h.cfg.Store.GetNodeByCredential(r.Context(), cred.Hash())
	if errors.Is(err, store.ErrNotFound) {
		h.log.Warn("nodelink: connect refused: unknown credential", "remote", r.RemoteAddr)
		return api.Errorf(api.CodeUnauthorized, "connect: the server knows no node with this credential: the node was removed, or joined again since; join it again")
	}
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// The connection lasts as long as the node keeps it: net/http clears
	// the server's read and write deadlines when Accept hijacks it.
	w.Header().Set(HeaderNodeID, n.ID)
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return startedError{fmt.Errorf("connect: node %s: %w", n.ID, err)}
	}
	sess, err := yamux.Server(overWebSocket(c), yamuxConfig())
	if err != nil {
		_ = c.CloseNow()
		return startedError{fmt.Errorf("connect: node %s: %w", n.ID, err)}
	}
	serves := r.Header.Get(HeaderServes) == ServesSessions
	l := &link{nodeID: n.ID, name: n.Name, sess: sess, serves: serves}
	h.attach(l)
	h.log.Info("nodelink: node connected", "node", n.ID, "name", n.Name, "remote", r.RemoteAddr, "serves_sessions", serves)
	h.route(r.Context(), n, serves)
	base := context.WithValue(context.Background(), nodeKey{}, n.ID)
	serveStreams(sess, h.nodeHandler(l), base)
	if h.detach(l) {
		h.log.Warn("nodelink: node disconnected", "node", n.ID, "name", n.Name)
	}
	return nil
}

// route records this server (SetURL) as where node n's sessions are
// reached, n having connected serving them (serves). With no URL set the
// record is left as it is: the node's sessions are reached only where
// its URL says, if anywhere, which is logged. A node that connects
// serving none has a URL it kept from when it did cleared: nothing
// would answer the calls routed there.
func (h *Hub) route(ctx context.Context, n store.Node, serves bool) {
	if !serves {
		if n.URL == "" && n.E2BURL == "" {
			return
		}
		err := store.ChangeNode(ctx, h.cfg.Store, n.ID, func(n *store.Node) bool {
			changed := n.URL != "" || n.E2BURL != ""
			n.URL, n.E2BURL = "", ""
			return changed
		})
		if err != nil {
			h.log.Error("nodelink: could not clear the URL of a node that no longer serves sessions", "node", n.ID, "name", n.Name, "err", err)
			return
		}
		h.log.Warn("nodelink: the node serves no sessions now; its sessions are no longer routed", "node", n.ID, "name", n.Name, "was", n.URL)
		return
	}
	h.mu.Lock()
	u, e2bURL := h.url, h.e2bURL
	h.mu.Unlock()
	if u == "" {
		h.log.Warn("nodelink: a node serving sessions connected to a server that advertises no URL (--advertise-url): calls about its sessions are not routed here", "node", n.ID, "name", n.Name, "its_url", n.URL)
		return
	}
	err := store.ChangeNode(ctx, h.cfg.Store, n.ID, func(n *store.Node) bool {
		if n.URL == u && n.E2BURL == e2bURL {
			return false
		}
		n.URL, n.E2BURL = u, e2bURL
		return true
	})
	if err != nil {
		// The node's sessions stay routed to where its record says (a
		// 503 there while it is not connected); its next connect tries
		// again.
		h.log.Error("nodelink: could not record this server as where the node's sessions are reached", "node", n.ID, "name", n.Name, "url", u, "err", err)
		return
	}
	h.log.Info("nodelink: the node's sessions are routed to this server", "node", n.ID, "name", n.Name, "url", u, "e2b_url", e2bURL)
}

// attach makes l its node's connection, closing the one it replaces.
func (h *Hub) attach(l *link) {
	h.mu.Lock()
	old := h.links[l.nodeID]
	h.links[l.nodeID] = l
	h.mu.Unlock()
	if old != nil {
		h.log.Warn("nodelink: node connected again; its previous connection is closed", "node", l.nodeID, "name", l.name)
		_ = old.sess.Close()
	}
}

// detach forgets l if it is still its node's connection, and reports
// whether it was.
func (h *Hub) detach(l *link) bool {
	_ = l.sess.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.links[l.nodeID] != l {
		return false
	}
	delete(h.links, l.nodeID)
	return true
}

// nodeKey is the context key of the node a request came from.
type nodeKey struct{}

// NodeID returns the id of the node whose control connection carried the
// request of ctx, for the server's node-facing handler.
func NodeID(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(nodeKey{}).(string)
	return id, ok
}

// nodeHandler is what the server serves to the node of l.
func (h *Hub) nodeHandler(l *link) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != HeartbeatPath {
			if h.cfg.Handler == nil {
				writeError(w, api.Errorf(api.CodeNotFound, "%s %s: no such route", r.Method, r.URL.Path))
				return
			}
			h.cfg.Handler.ServeHTTP(w, r)
			return
		}
		if err := h.heartbeat(w, r, l); err != nil {
			writeError(w, err)
		}
	})
}

// heartbeat stores a node's heartbeat. A node removed meanwhile is told
// 401, and its connection is closed.
func (h *Hub) heartbeat(w http.ResponseWriter, r *http.Request, l *link) error {
	if r.Method != http.MethodPost {
		return api.Errorf(api.CodeInvalid, "heartbeat: POST it")
	}
	var c store.NodeCapacity
	if err := decodeJSON(w, r, MaxJoinBytes, &c); err != nil {
		return err
	}
	if err := validCapacity(c); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	err := h.cfg.Store.HeartbeatNode(r.Context(), l.nodeID, h.cfg.Now().UTC(), c)
	if errors.Is(err, store.ErrNotFound) {
		h.log.Warn("nodelink: heartbeat of a removed node; its connection is closed", "node", l.nodeID, "name", l.name)
		go func() { // once the answer is out
			time.Sleep(time.Second)
			if h.detach(l) {
				h.log.Info("nodelink: connection dropped", "node", l.nodeID, "why", "the node was removed")
			}
		}()
		return api.Errorf(api.CodeUnauthorized, "heartbeat: node %s was removed; join it again", l.nodeID)
	}
	if err != nil {
		h.log.Error("nodelink: heartbeat not stored", "node", l.nodeID, "err", err)
		return api.Errorf(api.CodeUnavailable, "heartbeat: not stored: %v", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// validCapacity checks what a node reports of itself that the servers
// act on beyond placement: the span after which it freezes its VMs
// (the sweeper waits twice that before it takes the node for dead).
func validCapacity(c store.NodeCapacity) error {
	if c.FenceAfterMS < 0 || c.FenceAfter() > store.MaxFenceAfter {
		return api.Errorf(api.CodeInvalid, "capacity: fence_after_ms %d: want 0 to %d (%v)", c.FenceAfterMS, store.MaxFenceAfter.Milliseconds(), store.MaxFenceAfter)
	}
	return nil
}

// decodeJSON reads r's JSON body, at most max bytes, into v: 413 past
// max, 400 for what does not parse or has unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, max int64, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return api.Errorf(api.CodeUnsupported, "body must be application/json, not %s", ct)
	}
	body := http.MaxBytesReader(w, r.Body, max)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return api.Errorf(api.CodeTooLarge, "body over %d bytes", max)
		}
		return api.Errorf(api.CodeInvalid, "body is not valid JSON: %v", err)
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return api.Errorf(api.CodeTooLarge, "body over %d bytes", max)
		}
	}
	return nil
}

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	if err != nil {
		return startedError{err}
	}
	return nil
}

// writeError answers err in the API's error envelope; errors that are
// not *api.Error are answered as internal, without their text.
func writeError(w http.ResponseWriter, err error) {
	code := api.CodeOf(err)
	msg := err.Error()
	if code == api.CodeInternal {
		msg = "internal error"
	}
	_ = writeJSON(w, api.Status(code), api.ErrorResponse{Error: api.ErrorBody{Code: code, Message: msg}})
}

// startedError is an error after the answer began (a failed upgrade
// answers by itself): nothing more can be written.
type startedError struct{ err error }

func (e startedError) Error() string { return e.err.Error() }
func (e startedError) Unwrap() error { return e.err }

// started reports whether err came after the answer began.
func started(err error) bool {
	_, ok := errors.AsType[startedError](err)
	return ok
}
