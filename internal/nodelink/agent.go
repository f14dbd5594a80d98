package nodelink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// CredentialFile is the file under the node's home that keeps its
// credential.
const CredentialFile = "node.credential"

// IDFile is the file under the node's home that keeps its id, written
// at each join beside CredentialFile.
const IDFile = "node.id"

// DefaultHeartbeat is how often a node heartbeats by default.
const DefaultHeartbeat = 10 * time.Second

// Backoff between connection attempts.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// ErrRefused is the error of a node whose credential the server refuses
// (the node was removed): it must join again.
var ErrRefused = errors.New("nodelink: the server refused this node's credential")

// AgentConfig wires an Agent.
type AgentConfig struct {
	// Server is the API server's base URL (http or https).
	Server string
	// JoinToken joins the node when Home has no credential yet.
	JoinToken string
	// Name and Labels are what the node joins with.
	Name   string
	Labels map[string]string
	// Home keeps the credential (CredentialFile).
	Home string
	// Heartbeat is the interval of heartbeats; 0 is DefaultHeartbeat.
	Heartbeat time.Duration
	// Probe measures the node's capacity, at the join and for each
	// heartbeat.
	Probe func(ctx context.Context) (store.NodeCapacity, error)
	// Handler serves the server's calls to the node.
	Handler http.Handler
	// Serves says the node runs sessions and Handler serves cove's API
	// for them: the agent connects with HeaderServes, and the server it
	// connects to records itself as where the node's sessions are
	// reached and relays the calls about them to Handler.
	Serves bool
	// OnHeartbeat, if set, is called after each heartbeat the server
	// stored (a session-serving node fences its VMs then:
	// session.Manager.Heartbeated).
	OnHeartbeat func(ctx context.Context)
	// HTTPClient makes the join request and the connect dial; nil is
	// http.DefaultClient.
	HTTPClient *http.Client
	// Log receives joins, connects, drops; nil discards.
	Log *slog.Logger
}

// Agent is the node's end of the control connection.
type Agent struct {
	cfg       AgentConfig
	log       *slog.Logger
	transport *http.Transport

	mu     sync.Mutex
	sess   *yamux.Session // the connection up now, or nil; guarded by mu
	nodeID string         // guarded by mu
	cred   Credential     // once joined (Join); guarded by mu
	beats  int64          // heartbeats the server took; guarded by mu
}

// NewAgent makes an Agent; Run runs it.
func NewAgent(cfg AgentConfig) *Agent {
	a := &Agent{cfg: cfg, log: cfg.Log}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.cfg.Heartbeat <= 0 {
		a.cfg.Heartbeat = DefaultHeartbeat
	}
	if a.cfg.HTTPClient == nil {
		a.cfg.HTTPClient = http.DefaultClient
	}
	a.transport = streamTransport(func(context.Context, string) (*yamux.Session, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.sess == nil {
			return nil, ErrNotConnected
		}
		return a.sess, nil
	})
	return a
}

// Client returns an HTTP client whose requests go to the server's
// node-facing handler over the control connection, whatever the URL's
// host: use "http://server/PATH".
func (a *Agent) Client() *http.Client { return &http.Client{Transport: a.transport} }

// NodeID is the node's id, once joined or connected ("" before).
func (a *Agent) NodeID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodeID
}

// Connected reports whether the control connection is up.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess != nil && !a.sess.IsClosed()
}

// Join makes sure the node has joined: its credential is in Home, or it
// joins with the join token (trying again until ctx ends while the
// server cannot be reached; a refused join is the server's error). It
// returns the node's id, which the node keeps beside its credential
// (IDFile); a home whose credential came without one asks the server
// (a connect that ends at once). A later Run uses what Join found.
func (a *Agent) Join(ctx context.Context) (string, error) {
	cred, err := a.credential(ctx)
	if err != nil {
		return "", err
	}
	if id := a.NodeID(); id != "" {
		return id, nil
	}
	id, err := a.whoAmI(ctx, cred)
	if err != nil {
		return "", err
	}
	return id, nil
}

// Run joins the node if Home has no credential (Join), then keeps its
// control connection up, heartbeating, until ctx ends (nil) or the
// server refuses the credential (an error wrapping ErrRefused that says
// how to join again). A refused join is returned as the server's error.
func (a *Agent) Run(ctx context.Context) error {
	cred, err := a.credential(ctx)
	if err != nil {
		return err
	}
	wait := minBackoff
	for {
		up, err := a.connect(ctx, cred)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRefused) {
			return fmt.Errorf("%w (%v): the node was removed, or joined again with another home; to join it again, remove %s and start it with --join-token",
				ErrRefused, err, filepath.Join(a.cfg.Home, CredentialFile))
		}
		if up {
			wait = minBackoff
		}
		d := jitter(wait)
		a.log.Warn("nodelink: no connection to the server; trying again", "server", a.cfg.Server, "in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		wait = min(2*wait, maxBackoff)
	}
}

// jitter is d less up to half of it, at random, so nodes dropped at once
// do not all come back at once.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/2+1))
}

// credential returns the node's credential: the one Join found, else
// the one in Home, joining first if there is none.
func (a *Agent) credential(ctx context.Context) (Credential, error) {
	a.mu.Lock()
	cred := a.cred
	a.mu.Unlock()
	if cred != "" {
		return cred, nil
	}
	path := filepath.Join(a.cfg.Home, CredentialFile)
	cred, err := LoadCredential(path)
	if err == nil {
		id := loadID(filepath.Join(a.cfg.Home, IDFile))
		a.mu.Lock()
		a.cred = cred
		if a.nodeID == "" {
			a.nodeID = id
		}
		a.mu.Unlock()
		return cred, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if a.cfg.JoinToken == "" {
		return "", fmt.Errorf("nodelink: this node has not joined yet (no %s): give it the server's join token (--join-token)", path)
	}
	wait := minBackoff
	for {
		resp, err := a.join(ctx)
		if err == nil {
			// The id first: a crash between the two leaves no credential,
			// and the next start joins again (the same record, by name).
			if err := saveID(filepath.Join(a.cfg.Home, IDFile), resp.NodeID); err != nil {
				return "", err
			}
			if err := SaveCredential(path, resp.Credential); err != nil {
				return "", err
			}
			a.mu.Lock()
			a.nodeID = resp.NodeID
			a.cred = resp.Credential
			a.mu.Unlock()
			a.log.Info("nodelink: joined", "server", a.cfg.Server, "node", resp.NodeID, "name", a.cfg.Name, "credential", path)
			return resp.Credential, nil
		}
		if _, refused := errors.AsType[*api.Error](err); refused {
			return "", fmt.Errorf("nodelink: join refused: %w", err)
		}
		d := jitter(wait)
		a.log.Warn("nodelink: join failed; trying again", "server", a.cfg.Server, "in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(d):
		}
		wait = min(2*wait, maxBackoff)
	}
}

// join asks the server for a credential. An answer in 4xx but 429 is an
// *api.Error (trying again would not help); the rest may pass.
func (a *Agent) join(ctx context.Context) (JoinResponse, error) {
	capacity, err := a.cfg.Probe(ctx)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("nodelink: join: %w", err)
	}
	body, err := json.Marshal(JoinRequest{Name: a.cfg.Name, Labels: a.cfg.Labels, Capacity: capacity})
	if err != nil {
		return JoinResponse{}, fmt.Errorf("nodelink: join: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(a.cfg.Server, "/")+JoinPath, bytes.NewReader(body))
	if err != nil {
		return JoinResponse{}, fmt.Errorf("nodelink: join: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+a.cfg.JoinToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		return JoinResponse{}, fmt.Errorf("nodelink: join: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return JoinResponse{}, answerError(resp, "join")
	}
	var out JoinResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxJoinBytes)).Decode(&out); err != nil {
		return JoinResponse{}, fmt.Errorf("nodelink: join: answer: %w", err)
	}
	if !out.Credential.Valid() || out.NodeID == "" {
		return JoinResponse{}, fmt.Errorf("nodelink: join: the server's answer has no valid credential")
	}
	return out, nil
}

// answerError is the error of an answer that is not a success: an
// *api.Error for 4xx with the server's message, else a plain error.
func answerError(resp *http.Response, op string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var e api.ErrorResponse
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	}
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
		code := e.Error.Code
		if code == "" {
			code = api.CodeInvalid
		}
		return &api.Error{Code: code, Message: fmt.Sprintf("%s: %s (%s)", op, msg, resp.Status)}
	}
	return fmt.Errorf("nodelink: %s: %s: %s", op, resp.Status, msg)
}

// dial opens a control connection's WebSocket with cred; serves sends
// HeaderServes. A refused credential is ErrRefused.
func (a *Agent) dial(ctx context.Context, cred Credential, serves bool) (*websocket.Conn, *http.Response, error) {
	u, err := wsURL(a.cfg.Server)
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{"Authorization": {"Bearer " + string(cred)}}
	if serves {
		h.Set(HeaderServes, ServesSessions)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, resp, err := websocket.Dial(dctx, u, &websocket.DialOptions{HTTPClient: a.cfg.HTTPClient, HTTPHeader: h})
	cancel()
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, nil, fmt.Errorf("%w: %w", ErrRefused, answerError(resp, "connect"))
		}
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, nil, answerError(resp, "connect")
		}
		return nil, nil, fmt.Errorf("nodelink: connect: %w", err)
	}
	return c, resp, nil
}

// whoAmI asks the server the node's id (HeaderNodeID of a connect's
// answer, the connection closed at once), trying again while the server
// cannot be reached, and keeps it in IDFile.
func (a *Agent) whoAmI(ctx context.Context, cred Credential) (string, error) {
	var c *websocket.Conn
	var resp *http.Response
	for wait := minBackoff; ; wait = min(2*wait, maxBackoff) {
		var err error
		c, resp, err = a.dial(ctx, cred, a.cfg.Serves)
		if err == nil {
			break
		}
		if _, refused := errors.AsType[*api.Error](err); refused || errors.Is(err, ErrRefused) {
			return "", fmt.Errorf("nodelink: ask the server this node's id: %w", err)
		}
		d := jitter(wait)
		a.log.Warn("nodelink: cannot ask the server this node's id; trying again", "server", a.cfg.Server, "in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(d):
		}
	}
	_ = c.CloseNow()
	id := resp.Header.Get(HeaderNodeID)
	if id == "" {
		return "", errors.New("nodelink: ask the server this node's id: its connect answer names none")
	}
	if err := saveID(filepath.Join(a.cfg.Home, IDFile), id); err != nil {
		return "", err
	}
	a.mu.Lock()
	a.nodeID = id
	a.mu.Unlock()
	return id, nil
}

// connect runs one control connection until it drops or ctx ends, and
// reports whether it came up. A refused credential is ErrRefused.
func (a *Agent) connect(ctx context.Context, cred Credential) (bool, error) {
	c, resp, err := a.dial(ctx, cred, a.cfg.Serves)
	if err != nil {
		return false, err
	}
	sess, err := yamux.Client(overWebSocket(c), yamuxConfig())
	if err != nil {
		_ = c.CloseNow()
		return false, fmt.Errorf("nodelink: connect: %w", err)
	}
	a.mu.Lock()
	a.sess = sess
	if id := resp.Header.Get(HeaderNodeID); id != "" {
		if a.nodeID != "" && a.nodeID != id {
			// The home's id file is stale (the credential is newer): the
			// server's answer is the truth.
			a.log.Error("nodelink: the server names this node otherwise than its home does", "home", a.nodeID, "server", id)
		}
		a.nodeID = id
	}
	id := a.nodeID
	a.mu.Unlock()
	a.log.Info("nodelink: connected", "server", a.cfg.Server, "node", id)
	defer func() {
		a.mu.Lock()
		if a.sess == sess {
			a.sess = nil
		}
		a.mu.Unlock()
		_ = sess.Close()
	}()

	go serveStreams(sess, a.cfg.Handler, ctx)
	refused := make(chan error, 1)
	go a.heartbeats(ctx, sess, refused)
	select {
	case <-ctx.Done():
		return true, nil
	case err := <-refused:
		return true, err
	case <-sess.CloseChan():
		return true, errors.New("nodelink: connection closed")
	}
}

// heartbeats sends one heartbeat at once and then every interval while
// sess is up. A refusal (401: the node was removed) is sent on refused.
func (a *Agent) heartbeats(ctx context.Context, sess *yamux.Session, refused chan<- error) {
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	var last store.NodeCapacity
	for {
		c, err := a.cfg.Probe(ctx)
		if err != nil {
			a.log.Warn("nodelink: capacity probe failed; the heartbeat carries the last one", "err", err)
			c = last
		}
		last = c
		if err := a.heartbeat(ctx, c); err != nil {
			if errors.Is(err, ErrRefused) {
				refused <- err
				return
			}
			if !sess.IsClosed() {
				a.log.Warn("nodelink: heartbeat failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sess.CloseChan():
			return
		case <-t.C:
		}
	}
}

// heartbeat sends one heartbeat with c.
func (a *Agent) heartbeat(ctx context.Context, c store.NodeCapacity) error {
	body, err := json.Marshal(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Heartbeat+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://server"+HeartbeatPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.Client().Do(req)
	if err != nil {
		return fmt.Errorf("nodelink: heartbeat: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%w: %w", ErrRefused, answerError(resp, "heartbeat"))
	case resp.StatusCode/100 != 2:
		return answerError(resp, "heartbeat")
	}
	a.mu.Lock()
	a.beats++
	a.mu.Unlock()
	if a.cfg.OnHeartbeat != nil {
		a.cfg.OnHeartbeat(ctx)
	}
	return nil
}

// Heartbeats is the number of heartbeats the server has taken from this
// agent.
func (a *Agent) Heartbeats() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.beats
}

// wsURL is the connect URL of server's base URL.
func wsURL(server string) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(server, "/"))
	if err != nil {
		return "", fmt.Errorf("nodelink: server URL %q: %w", server, err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("nodelink: server URL %q: want http:// or https://", server)
	}
	u.Path += ConnectPath
	return u.String(), nil
}

// LoadCredential reads the credential in the file at path; a file that
// exists but holds no valid credential is an error.
func LoadCredential(path string) (Credential, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	c := Credential(strings.TrimSpace(string(b)))
	if !c.Valid() {
		return "", fmt.Errorf("nodelink: %s holds no node credential: remove it and join again", path)
	}
	return c, nil
}

// SaveCredential writes c to the file at path, 0600, atomically: a
// crash leaves the old file or the new one, never a part.
func SaveCredential(path string, c Credential) error {
	if err := writeFileAtomic(path, string(c)+"\n", 0o600); err != nil {
		return fmt.Errorf("nodelink: save credential: %w", err)
	}
	return nil
}

// writeFileAtomic writes text to the file at path with mode perm, by a
// rename: a crash leaves the old file or the new one, never a part.
func writeFileAtomic(path, text string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename, a no-op
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.WriteString(text)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	return err
}

// loadID reads the node id in the file at path: "" when there is none,
// or what it holds is not one.
func loadID(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if !strings.HasPrefix(id, "node-") || strings.ContainsAny(id, " \t\n/") {
		return ""
	}
	return id
}

// saveID writes node id to the file at path, atomically.
func saveID(path, id string) error {
	if err := writeFileAtomic(path, id+"\n", 0o644); err != nil {
		return fmt.Errorf("nodelink: save node id: %w", err)
	}
	return nil
}
