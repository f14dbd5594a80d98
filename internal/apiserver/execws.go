package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/cove-dev/cove/api"
)

// wsReadLimit is the largest message a client may send on the exec
// WebSocket.
const wsReadLimit = 4 << 20

// execWS serves GET /v1/sessions/{id}/exec/ws. The first client message is
// an api.ExecRequest; after it, api.ExecEvent messages flow both ways until
// the command exits, and the server closes with StatusNormalClosure after
// the exit event. A client that goes away kills the command.
func (s *Server) execWS(w http.ResponseWriter, r *http.Request) error {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return api.Errorf(api.CodeInvalid, "exec/ws: not a WebSocket upgrade request")
	}
	id := r.PathValue("id")
	// An unknown session is a plain 404, before the upgrade.
	if _, err := s.sessions.Get(r.Context(), id); err != nil {
		return err
	}
	liftDeadlines(w) // a hijacked connection keeps them
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return reported(err) // Accept answered the client
	}
	defer c.CloseNow()
	c.SetReadLimit(wsReadLimit)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ws := &wsConn{c: c}

	req, err := readExecRequest(ctx, c)
	act := execAction(id, req)
	if err == nil {
		err = s.decide(ctx, act)
	}
	if err != nil {
		return ws.fail(ctx, s, err)
	}
	start := time.Now()
	proc, err := s.sessions.Exec(ctx, id, req)
	if err != nil {
		s.outcome(ctx, act, execOutcome(ExitStatus{}, err, start))
		return ws.fail(ctx, s, err)
	}
	proc = &auditedProcess{Process: proc, done: func(st ExitStatus, err error) {
		s.outcome(ctx, act, execOutcome(st, err, start))
	}}
	defer func() { s.metrics.exec.Observe(time.Since(start).Seconds()) }()
	stopKill := context.AfterFunc(ctx, func() { _ = proc.Signal("KILL") })
	defer stopKill()

	// Client → command. Stdin is written by its own goroutine so that a
	// command that does not read it cannot hold up resize and signal.
	stdin := make(chan []byte, 8)
	if len(req.Stdin) > 0 {
		stdin <- req.Stdin
	}
	go feedStdin(proc.Stdin(), stdin)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer cancel() // the client is gone: kill the command
		ws.readLoop(ctx, s, proc, stdin)
	}()

	// Command → client.
	var wg sync.WaitGroup
	wg.Go(func() { pumpOutput(proc.Stdout(), api.EventStdout, ws.sender(ctx)) })
	wg.Go(func() { pumpOutput(proc.Stderr(), api.EventStderr, ws.sender(ctx)) })
	wg.Wait()
	st, err := proc.Wait()
	stopKill()
	switch {
	case err != nil:
		err = ws.fail(ctx, s, fmt.Errorf("exec: wait: %w", err))
	case ws.send(ctx, exitEvent(st)) != nil:
		err = reported(errors.New("exec/ws: client gone before the exit event"))
	default:
		if err = c.Close(websocket.StatusNormalClosure, ""); err != nil && !isClosed(err) {
			err = reported(fmt.Errorf("exec/ws: close: %w", err))
		} else {
			err = nil
		}
	}
	cancel()
	<-readDone
	return err
}

// readExecRequest reads the first message.
func readExecRequest(ctx context.Context, c *websocket.Conn) (api.ExecRequest, error) {
	var req api.ExecRequest
	_, data, err := c.Read(ctx)
	if err != nil {
		return req, fmt.Errorf("exec/ws: read request: %w", err)
	}
	if err := decodeMessage(data, &req); err != nil {
		return req, err
	}
	return req, validateExec(req)
}

func decodeMessage(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return api.Errorf(api.CodeInvalid, "message: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Errorf(api.CodeInvalid, "message: data after the JSON value")
	}
	return nil
}

// feedStdin writes each chunk to in, then closes it when chunks is closed.
// After a failed write it discards the rest.
func feedStdin(in io.WriteCloser, chunks <-chan []byte) {
	var err error
	for b := range chunks {
		if err == nil {
			_, err = in.Write(b)
		}
	}
	_ = in.Close()
}

// wsConn serializes writes to the exec WebSocket.
type wsConn struct {
	mu sync.Mutex
	c  *websocket.Conn // writes guarded by mu
}

func (ws *wsConn) send(ctx context.Context, ev api.ExecEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.c.Write(ctx, websocket.MessageText, b)
}

func (ws *wsConn) sender(ctx context.Context) func(api.ExecEvent) error {
	return func(ev api.ExecEvent) error { return ws.send(ctx, ev) }
}

// fail tells the client about err with an error message and closes the
// connection: 1008 for the client's mistakes, 1011 for the server's.
func (ws *wsConn) fail(ctx context.Context, s *Server, err error) error {
	if isClosed(err) {
		return reported(err)
	}
	body := s.errorBody(ctx, "session.exec", err)
	_ = ws.send(ctx, api.ExecEvent{Type: api.EventError, Error: &body})
	status := websocket.StatusPolicyViolation
	if api.Status(body.Code) >= 500 {
		status = websocket.StatusInternalError
	}
	_ = ws.c.Close(status, body.Code)
	return reported(err)
}

// readLoop applies client messages to proc until the connection ends.
func (ws *wsConn) readLoop(ctx context.Context, s *Server, proc Process, stdin chan<- []byte) {
	stdinOpen := true
	defer func() {
		if stdinOpen {
			close(stdin)
		}
	}()
	for {
		_, data, err := ws.c.Read(ctx)
		if err != nil {
			return
		}
		var ev api.ExecEvent
		err = decodeMessage(data, &ev)
		if err == nil {
			err = applyEvent(ctx, ev, proc, stdin, &stdinOpen)
		}
		if err != nil && ctx.Err() == nil {
			body := s.errorBody(ctx, "session.exec", err)
			_ = ws.send(ctx, api.ExecEvent{Type: api.EventError, Error: &body})
		}
	}
}

func applyEvent(ctx context.Context, ev api.ExecEvent, proc Process, stdin chan<- []byte, stdinOpen *bool) error {
	switch ev.Type {
	case api.EventStdin:
		if !*stdinOpen {
			return api.Errorf(api.CodeInvalid, "stdin: already closed")
		}
		if len(ev.Data) > 0 {
			select {
			case stdin <- ev.Data:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	case api.EventStdinClose:
		if *stdinOpen {
			close(stdin)
			*stdinOpen = false
		}
	case api.EventResize:
		if err := validateSize(ev.Rows, ev.Cols, true); err != nil {
			return err
		}
		return proc.Resize(ev.Rows, ev.Cols)
	case api.EventSignal:
		if ev.Signal == "" {
			return api.Errorf(api.CodeInvalid, "signal: missing name")
		}
		return proc.Signal(ev.Signal)
	default:
		return api.Errorf(api.CodeInvalid, "message type %q is not one of stdin, stdin_close, resize, signal", ev.Type)
	}
	return nil
}

// isClosed reports whether err says the peer closed or went away.
func isClosed(err error) bool {
	return websocket.CloseStatus(err) != -1 || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed)
}
