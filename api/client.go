package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"
)

// Client calls a cove API server (see docs/HTTP.md). Make one with
// NewClient; its fields may be changed before the first call.
//
// Every method returns an *Error for an answer that is not 2xx, with the
// code and message the server sent (CodeInternal and the HTTP status when
// the body is not an error document), so callers can use CodeOf and IsCode.
// Transport failures are returned as they come from net/http.
type Client struct {
	// BaseURL is the server's root, e.g. "http://127.0.0.1:7070".
	BaseURL string
	// Token is sent as "Authorization: Bearer Token" on every call.
	Token string
	// HTTP is the client used for every call; nil means http.DefaultClient.
	// Its Timeout should be zero: exec and image builds run for as long as
	// they run, and the context passed to each method bounds them instead.
	HTTP *http.Client
}

// NewClient returns a Client for the server at baseURL that authenticates
// with token.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token}
}

// LogValue keeps the token out of logs.
func (c *Client) LogValue() slog.Value {
	return slog.GroupValue(slog.String("base_url", c.BaseURL), slog.Bool("token_set", c.Token != ""))
}

// Media types of the contract.
const (
	contentJSON   = "application/json"
	contentNDJSON = "application/x-ndjson"
	contentTar    = "application/x-tar"
	contentBytes  = "application/octet-stream"
)

// CreateSession boots a session and returns it once its agent answers.
func (c *Client) CreateSession(ctx context.Context, req CreateSessionRequest) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, "/v1/sessions", nil, req, &s)
	return s, err
}

// IdempotencyHeader is the header of a create's idempotency key.
const IdempotencyHeader = "Idempotency-Key"

// CreateSessionKeyed is CreateSession with an idempotency key (1 to 255
// bytes of printable ASCII; NewIdempotencyKey makes one): a retry with
// the same key and request, after a call whose answer was lost, answers
// the session the first made rather than making another.
func (c *Client) CreateSessionKeyed(ctx context.Context, key string, req CreateSessionRequest) (Session, error) {
	var s Session
	ctx = context.WithValue(ctx, extraHeaderKey{}, http.Header{IdempotencyHeader: {key}})
	err := c.doJSON(ctx, http.MethodPost, "/v1/sessions", nil, req, &s)
	return s, err
}

// NewIdempotencyKey returns a random idempotency key.
func NewIdempotencyKey() string { return "ik-" + rand.Text() }

// extraHeaderKey marks a context whose requests carry more headers (an
// http.Header).
type extraHeaderKey struct{}

// GetSession returns one session.
func (c *Client) GetSession(ctx context.Context, id string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, ""), nil, nil, &s)
	return s, err
}

// ListSessions returns every session, a page at a time (ListPageSize
// each, following each page's next token).
func (c *Client) ListSessions(ctx context.Context) ([]Session, error) {
	var all []Session
	after := ""
	for {
		page, next, err := c.ListSessionsPage(ctx, after, ListPageSize)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" || next == after {
			return all, nil
		}
		after = next
	}
}

// ListPageSize is how many sessions ListSessions asks for at a time.
const ListPageSize = 500

// ListSessionsPage returns one page of the sessions: at most limit (1 to
// 1000), after the position the token after names ("" for the first
// page), in the order of their creation (then id), and the next page's
// token ("" after the last page). A page may hold fewer than limit
// sessions (those the caller may not see are left out) and still have a
// next one.
func (c *Client) ListSessionsPage(ctx context.Context, after string, limit int) ([]Session, string, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if after != "" {
		q.Set("after", after)
	}
	var out struct {
		Sessions []Session `json:"sessions"`
		Next     string    `json:"next"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/sessions", q, nil, &out)
	return out.Sessions, out.Next, err
}

// DeleteSession stops a session's VM and forgets the session.
func (c *Client) DeleteSession(ctx context.Context, id string) error {
	return c.doJSON(ctx, http.MethodDelete, sessionPath(id, ""), nil, nil, nil)
}

// ParkSession saves a running session's whole VM to disk and stops it,
// returning the session parked (Snapshot set). Parking a parked session
// returns it as it is; any other state is an *Error with CodeConflict.
func (c *Client) ParkSession(ctx context.Context, id string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/park"), nil, nil, &s)
	return s, err
}

// ParkSessionUntil parks a session as ParkSession does, and subscribes it
// to events: it wakes on the first webhook event matching any of
// req.Until, or once req.Timeout has passed. The answer's Waiting shows
// what it waits for. A malformed expression is an *Error with CodeInvalid
// whose message ends with the expression and a caret under the fault.
func (c *Client) ParkSessionUntil(ctx context.Context, id string, req ParkRequest) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/park"), nil, req, &s)
	return s, err
}

// WakeSession restores a parked session and returns it once its agent
// answers. Waking a running session returns it as it is; any other state
// is an *Error with CodeConflict.
func (c *Client) WakeSession(ctx context.Context, id string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/wake"), nil, nil, &s)
	return s, err
}

// WakeSessionFromLastSnapshot brings a lost or failed session (or a
// parked one whose latest snapshot is on a dead node only) back from its
// last stored snapshot (the work since is gone) and returns it running.
func (c *Client) WakeSessionFromLastSnapshot(ctx context.Context, id string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/wake"), nil, WakeRequest{FromLastSnapshot: true}, &s)
	return s, err
}

// RevokeSession invalidates every identity token the session was given,
// at once, without stopping it (the kill switch), and returns the session.
func (c *Client) RevokeSession(ctx context.Context, id string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/revoke"), nil, nil, &s)
	return s, err
}

// Exec runs a command to completion and returns its buffered output (at
// most 16 MiB of each stream; see ExecResult.Truncated). A command that
// cannot be started is an *Error with CodeInvalid.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (*ExecResult, error) {
	var res ExecResult
	if err := c.doJSON(ctx, http.MethodPost, sessionPath(id, "/exec"), nil, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ExecStream runs a command and calls fn with each stdout, stderr and exit
// event as it arrives, in order, on the calling goroutine. It returns nil
// once fn has seen the exit event. An error event (a command that could
// not be started, or a failure while it ran) is not passed to fn but
// returned as an *Error, and a stream that ends without an exit event is
// an error too. req.Stdin, if set, is given to the command whole.
func (c *Client) ExecStream(ctx context.Context, id string, req ExecRequest, fn func(ExecEvent)) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("exec: encode request: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, sessionPath(id, "/exec"), nil, bytes.NewReader(body), contentJSON, contentNDJSON)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev ExecEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("exec: stream ended before the command exited")
			}
			return fmt.Errorf("exec: read stream: %w", err)
		}
		if ev.Type == EventError {
			return eventError(ev.Error)
		}
		fn(ev)
		if ev.Type == EventExit {
			return nil
		}
	}
}

// ExecConn is a command running behind the exec WebSocket. Send and Recv
// may be used from different goroutines; Recv from one goroutine at a
// time. The context given to ExecInteractive bounds the whole connection.
type ExecConn struct {
	ctx  context.Context // bounds the connection, as with exec.CommandContext
	conn *websocket.Conn
}

// execReadLimit bounds one WebSocket message from the server. An output
// chunk is base64 in JSON, so this leaves ample room for the agent's reads.
const execReadLimit = 4 << 20

// ExecInteractive starts a command behind the exec WebSocket: req (with
// Stdin ignored) is sent as the first message, after which the caller
// streams stdin, resize and signal events with Send and reads stdout,
// stderr, exit and error events with Recv. Recv returns io.EOF after the
// server closes the connection (which it does after the exit event). A
// refused upgrade (unknown session, bad token) is an *Error. Close the
// ExecConn when done.
func (c *Client) ExecInteractive(ctx context.Context, id string, req ExecRequest) (*ExecConn, error) {
	req.Stdin = nil
	u := c.BaseURL + sessionPath(id, "/exec/ws")
	h := http.Header{}
	if c.Token != "" {
		h.Set("Authorization", "Bearer "+c.Token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.HTTP, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("exec: %w", err)
	}
	conn.SetReadLimit(execReadLimit)
	ec := &ExecConn{ctx: ctx, conn: conn}
	if err := ec.send(req); err != nil {
		conn.CloseNow()
		return nil, err
	}
	return ec, nil
}

// Send sends one client event (stdin, stdin_close, resize, signal).
func (e *ExecConn) Send(ev ExecEvent) error { return e.send(ev) }

func (e *ExecConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("exec: encode message: %w", err)
	}
	if err := e.conn.Write(e.ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("exec: send: %w", err)
	}
	return nil
}

// Recv returns the next server event, or io.EOF once the server has closed
// the connection normally.
func (e *ExecConn) Recv() (ExecEvent, error) {
	_, b, err := e.conn.Read(e.ctx)
	if err != nil {
		if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
			return ExecEvent{}, io.EOF
		}
		return ExecEvent{}, fmt.Errorf("exec: receive: %w", err)
	}
	var ev ExecEvent
	if err := json.Unmarshal(b, &ev); err != nil {
		return ExecEvent{}, fmt.Errorf("exec: decode message: %w", err)
	}
	return ev, nil
}

// Close closes the connection; a command still running is killed by the
// server.
func (e *ExecConn) Close() error {
	err := e.conn.Close(websocket.StatusNormalClosure, "")
	if err != nil && errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// ReadFile streams a regular file of the guest. The caller closes it.
func (c *Client) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, sessionPath(id, "/files"), pathQuery(path), nil, "", "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// WriteFile creates or replaces the regular file path in the guest with
// r's content. mode's permission bits are applied; zero means the server's
// default.
func (c *Client) WriteFile(ctx context.Context, id, path string, mode fs.FileMode, r io.Reader) error {
	q := pathQuery(path)
	if perm := mode.Perm(); perm != 0 {
		q.Set("mode", fmt.Sprintf("%04o", uint32(perm)))
	}
	return c.doBody(ctx, http.MethodPut, sessionPath(id, "/files"), q, r, contentBytes)
}

// GetTar streams a tar archive of path (a file or a directory) whose
// entries are named from path's base name ("dir/a" for /x/dir). The caller
// closes it.
func (c *Client) GetTar(ctx context.Context, id, path string) (io.ReadCloser, error) {
	q := pathQuery(path)
	q.Set("format", "tar")
	resp, err := c.do(ctx, http.MethodGet, sessionPath(id, "/files"), q, nil, "", contentTar)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// PutTar extracts the tar archive r into the guest directory dir, which is
// created if missing.
func (c *Client) PutTar(ctx context.Context, id, dir string, r io.Reader) error {
	return c.doBody(ctx, http.MethodPut, sessionPath(id, "/files"), pathQuery(dir), r, contentTar)
}

// Stat describes one guest path.
func (c *Client) Stat(ctx context.Context, id, path string) (FileInfo, error) {
	var fi FileInfo
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, "/files/stat"), pathQuery(path), nil, &fi)
	return fi, err
}

// ListDir lists a guest directory.
func (c *Client) ListDir(ctx context.Context, id, path string) ([]FileInfo, error) {
	var out struct {
		Files []FileInfo `json:"files"`
	}
	err := c.doJSON(ctx, http.MethodGet, sessionPath(id, "/files/list"), pathQuery(path), nil, &out)
	return out.Files, err
}

// Mkdir creates a guest directory and its missing parents.
func (c *Client) Mkdir(ctx context.Context, id, path string) error {
	return c.doJSON(ctx, http.MethodPost, sessionPath(id, "/files/mkdir"), pathQuery(path), nil, nil)
}

// Remove removes a guest path; a directory goes with its contents.
func (c *Client) Remove(ctx context.Context, id, path string) error {
	return c.doJSON(ctx, http.MethodDelete, sessionPath(id, "/files"), pathQuery(path), nil, nil)
}

// ListImages returns the built images.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out struct {
		Images []Image `json:"images"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/images", nil, nil, &out)
	return out.Images, err
}

// BuildImage builds the named image (or finds it cached), calling progress,
// if not nil, with each progress message as it arrives. A failed build is
// an *Error.
func (c *Client) BuildImage(ctx context.Context, name string, progress func(string)) (Image, error) {
	resp, err := c.do(ctx, http.MethodPost, "/v1/images/"+url.PathEscape(name)+"/build", nil, nil, "", contentNDJSON)
	if err != nil {
		return Image{}, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev ImageBuildEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return Image{}, fmt.Errorf("build image %s: stream ended before the build finished", name)
			}
			return Image{}, fmt.Errorf("build image %s: read stream: %w", name, err)
		}
		switch ev.Type {
		case "progress":
			if progress != nil {
				progress(ev.Message)
			}
		case "done":
			if ev.Image == nil {
				return Image{}, fmt.Errorf("build image %s: done without an image", name)
			}
			return *ev.Image, nil
		case "error":
			return Image{}, eventError(ev.Error)
		}
	}
}

// CreateTemplate builds a template: it boots, runs the setup commands and
// saves the machine, and returns once the template is ready, which takes
// seconds to minutes (bound it with ctx). A failed setup command is an
// *Error with CodeInvalid and the command's output.
func (c *Client) CreateTemplate(ctx context.Context, req CreateTemplateRequest) (Template, error) {
	var t Template
	err := c.doJSON(ctx, http.MethodPost, "/v1/templates", nil, req, &t)
	return t, err
}

// ListTemplates returns every template.
func (c *Client) ListTemplates(ctx context.Context) ([]Template, error) {
	var out struct {
		Templates []Template `json:"templates"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/templates", nil, nil, &out)
	return out.Templates, err
}

// GetTemplate returns one template.
func (c *Client) GetTemplate(ctx context.Context, name string) (Template, error) {
	var t Template
	err := c.doJSON(ctx, http.MethodGet, templatePath(name), nil, nil, &t)
	return t, err
}

// DeleteTemplate removes a template and its warm pool. A template that
// sessions were cloned from is an *Error with CodeConflict while they
// exist.
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.doJSON(ctx, http.MethodDelete, templatePath(name), nil, nil, nil)
}

// TemplateVersions returns a template's versions, oldest first: the
// current one, those still used by sessions, and the history of the
// removed and failed ones.
func (c *Client) TemplateVersions(ctx context.Context, name string) ([]TemplateVersion, error) {
	var out struct {
		Versions []TemplateVersion `json:"versions"`
	}
	err := c.doJSON(ctx, http.MethodGet, templatePath(name)+"/versions", nil, nil, &out)
	return out.Versions, err
}

// RebuildTemplate queues a build of a new version of the template from
// its current one (fetching its repository first, if it has one) and
// returns at once; the new version replaces the current one when it is
// ready. A template whose branch has not moved is rebuilt all the same.
func (c *Client) RebuildTemplate(ctx context.Context, name string) (Template, error) {
	var t Template
	err := c.doJSON(ctx, http.MethodPost, templatePath(name)+"/rebuild", nil, nil, &t)
	return t, err
}

// SetTemplatePool sets how many ready clones the template's warm pool
// keeps (0..64) and returns the template.
func (c *Client) SetTemplatePool(ctx context.Context, name string, size int) (Template, error) {
	var t Template
	err := c.doJSON(ctx, http.MethodPut, templatePath(name)+"/pool", nil, SetPoolRequest{Size: &size}, &t)
	return t, err
}

// CollectGarbage runs a garbage collection of the object store now and
// returns what it did.
func (c *Client) CollectGarbage(ctx context.Context) (GCResult, error) {
	var out GCResult
	err := c.doJSON(ctx, http.MethodPost, "/v1/admin/gc", nil, nil, &out)
	return out, err
}

// PutHookSecret creates the named webhook, or replaces its secret: the
// HMAC key its senders sign deliveries with. "github" is GitHub's hook.
func (c *Client) PutHookSecret(ctx context.Context, name, secret string) error {
	return c.doJSON(ctx, http.MethodPut, hookSecretPath(name), nil, HookSecretRequest{Secret: secret}, nil)
}

// ListHooks returns the names of the webhooks that have a secret.
func (c *Client) ListHooks(ctx context.Context) ([]string, error) {
	var out struct {
		Hooks []string `json:"hooks"`
	}
	err := c.doJSON(ctx, http.MethodGet, "/v1/hook-secrets", nil, nil, &out)
	return out.Hooks, err
}

// DeleteHook removes a webhook's secret; its deliveries are refused from
// then on. An unknown name is an *Error with CodeNotFound.
func (c *Client) DeleteHook(ctx context.Context, name string) error {
	return c.doJSON(ctx, http.MethodDelete, hookSecretPath(name), nil, nil, nil)
}

func hookSecretPath(name string) string { return "/v1/hook-secrets/" + url.PathEscape(name) }

func templatePath(name string) string { return "/v1/templates/" + url.PathEscape(name) }

// sessionPath returns /v1/sessions/{id} followed by suffix.
func sessionPath(id, suffix string) string {
	return "/v1/sessions/" + url.PathEscape(id) + suffix
}

func pathQuery(path string) url.Values {
	return url.Values{"path": {path}}
}

// doJSON sends in (if not nil) as a JSON body and decodes a 2xx answer into
// out (if not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body, ctype = bytes.NewReader(b), contentJSON
	}
	accept := ""
	if out != nil {
		accept = contentJSON
	}
	resp, err := c.do(ctx, method, path, q, body, ctype, accept)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// doBody sends r as the body and expects an empty 2xx answer.
func (c *Client) doBody(ctx context.Context, method, path string, q url.Values, r io.Reader, ctype string) error {
	resp, err := c.do(ctx, method, path, q, r, ctype, "")
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// do sends one request and returns a 2xx response, whose body the caller
// closes; any other answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, ctype, accept string) (*http.Response, error) {
	u := c.BaseURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if h, ok := ctx.Value(extraHeaderKey{}).(http.Header); ok {
		for k, v := range h {
			req.Header[k] = v
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// decodeError turns a non-2xx answer into an *Error: the server's code and
// message when the body is an ErrorResponse, else CodeInternal with the
// HTTP status (and the start of a plain-text body, if any).
func decodeError(resp *http.Response) *Error {
	var b []byte
	if resp.Body != nil {
		b, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	}
	var er ErrorResponse
	if json.Unmarshal(b, &er) == nil && er.Error.Code != "" {
		return &Error{Code: er.Error.Code, Message: er.Error.Message}
	}
	msg := "server answered " + resp.Status
	if text := strings.TrimSpace(string(b)); text != "" && !strings.HasPrefix(text, "{") && !strings.HasPrefix(text, "<") {
		if len(text) > 200 {
			text = text[:200] + "…"
		}
		msg += ": " + text
	}
	return &Error{Code: CodeInternal, Message: msg}
}

// eventError turns the error of an error event into an *Error.
func eventError(b *ErrorBody) *Error {
	if b == nil {
		return &Error{Code: CodeInternal, Message: "server sent an error event without an error"}
	}
	return &Error{Code: b.Code, Message: b.Message}
}

// nodePath returns /v1/nodes/{id} followed by suffix.
func nodePath(idOrName, suffix string) string {
	return "/v1/nodes/" + url.PathEscape(idOrName) + suffix
}

// ListNodes lists the nodes, ordered by name.
func (c *Client) ListNodes(ctx context.Context) ([]Node, error) {
	var out NodeList
	err := c.doJSON(ctx, http.MethodGet, "/v1/nodes", nil, nil, &out)
	return out.Nodes, err
}

// GetNode returns the node with the given id or name.
func (c *Client) GetNode(ctx context.Context, idOrName string) (Node, error) {
	var n Node
	err := c.doJSON(ctx, http.MethodGet, nodePath(idOrName, ""), nil, nil, &n)
	return n, err
}

// CordonNode stops the node from taking new sessions.
func (c *Client) CordonNode(ctx context.Context, idOrName string) (Node, error) {
	var n Node
	err := c.doJSON(ctx, http.MethodPost, nodePath(idOrName, "/cordon"), nil, nil, &n)
	return n, err
}

// UncordonNode lets the node take new sessions again.
func (c *Client) UncordonNode(ctx context.Context, idOrName string) (Node, error) {
	var n Node
	err := c.doJSON(ctx, http.MethodPost, nodePath(idOrName, "/uncordon"), nil, nil, &n)
	return n, err
}

// DrainNode sets the node draining and parks its running sessions.
func (c *Client) DrainNode(ctx context.Context, idOrName string) (DrainResult, error) {
	var res DrainResult
	err := c.doJSON(ctx, http.MethodPost, nodePath(idOrName, "/drain"), nil, nil, &res)
	return res, err
}

// RemoveNode removes the node's record: refused (409) while it holds
// sessions, unless it is dead.
func (c *Client) RemoveNode(ctx context.Context, idOrName string) error {
	return c.doJSON(ctx, http.MethodDelete, nodePath(idOrName, ""), nil, nil, nil)
}

// Watch follows the changes under directory path in session id's guest
// (and its subdirectories if recursive), calling fn with each, until ctx
// ends, fn returns an error (returned), or the watch ends: the session
// parked or stopped, or the directory went away (nil).
func (c *Client) Watch(ctx context.Context, id, path string, recursive bool, fn func(WatchEvent) error) error {
	q := pathQuery(path)
	if recursive {
		q.Set("recursive", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, sessionPath(id, "/files/watch"), q, nil, "", contentNDJSON)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev WatchEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch %s: read stream: %w", path, err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}
