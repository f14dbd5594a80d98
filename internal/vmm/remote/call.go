package remote

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
)

// A call stream carries one driver call whose callbacks (Restore's hooks,
// Checkpoint's WhilePaused, KillVMs's match) run on the caller's side: the
// caller POSTs the call's arguments with an upgrade to protoCall; the node
// checks them (bad ones are answered 4xx as any request's), answers 101,
// and from then on both sides send callMsg values as JSON lines. The node
// sends a callback and waits for its reply, as often as the driver calls
// it, then the outcome (Done) and closes. A caller that closes the stream
// cancels the call on the node; a node gone ends the call with an error.

// callbacks is the node's end of a call stream.
type callbacks struct {
	replies <-chan callMsg // closed when the caller is gone

	mu  sync.Mutex // one callback at a time: a reply answers the last
	enc *json.Encoder
}

// ask sends m and waits for the caller's reply; a failed callback is an
// error with the caller's message.
func (c *callbacks) ask(ctx context.Context, m callMsg) (callMsg, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enc.Encode(m); err != nil {
		return callMsg{}, fmt.Errorf("remote vmm: callback %s: the caller is gone: %w", m.Call, err)
	}
	select {
	case r, ok := <-c.replies:
		if !ok {
			return callMsg{}, fmt.Errorf("remote vmm: callback %s: the caller is gone: %w", m.Call, context.Canceled)
		}
		if r.Error != nil {
			return callMsg{}, errors.New(r.Error.Message)
		}
		return r, nil
	case <-ctx.Done():
		return callMsg{}, ctx.Err()
	}
}

// serveCall upgrades r to a call stream and runs fn with a context that
// ends if the caller goes, then sends fn's outcome.
func serveCall(w http.ResponseWriter, r *http.Request, fn func(context.Context, *callbacks) (any, error)) error {
	if !upgrading(r, protoCall) {
		return invalid("this call takes an upgrade to %s", protoCall)
	}
	conn, brw, err := hijack(w, protoCall)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The request's context is not cancelled once the connection is
	// hijacked: the caller's going (EOF) cancels this one.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	replies := make(chan callMsg, 1)
	go func() {
		defer cancel()
		defer close(replies)
		for {
			var m callMsg
			if err := readMsg(brw.Reader, &m); err != nil || !m.Reply {
				return // EOF, garbage, or a caller that broke the protocol
			}
			select {
			case replies <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	c := &callbacks{replies: replies, enc: json.NewEncoder(conn)}
	res, err := fn(ctx, c)
	out := callMsg{Done: true}
	if err != nil {
		out.Error = encodeError(err)
	} else if out.Result, err = json.Marshal(res); err != nil {
		out.Error = encodeError(err)
	}
	c.mu.Lock()
	_ = c.enc.Encode(out)
	c.mu.Unlock()
	return errAnswered
}

// readMsg reads one JSON line of at most MaxBody bytes into m.
func readMsg(br *bufio.Reader, m *callMsg) error {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > MaxBody {
			return fmt.Errorf("remote vmm: call stream message over %d bytes", MaxBody)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
	return json.Unmarshal(line, m)
}

// upgrade opens a connection to the node, sends a POST of body to path
// asking to upgrade to proto, and returns the connection once the node
// answered 101 (with the reader that holds what the node sent after), or
// the node's error. ctx bounds the exchange only.
func (d *Driver) upgrade(ctx context.Context, path string, body any, proto string) (net.Conn, *bufio.Reader, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, nil, err
	}
	conn, err := d.dial(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("remote vmm: dial the node: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://node"+Prefix+path, bytes.NewReader(b))
	if err != nil {
		stop()
		conn.Close()
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", proto)
	br := bufio.NewReader(conn)
	err = req.Write(conn)
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	if !stop() || err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("remote vmm: %s: %w", path, ctx.Err())
		}
		return nil, nil, fmt.Errorf("remote vmm: %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, nil, answerError(resp)
	}
	return conn, br, nil
}

// call runs the call of path with body on a call stream: each callback the
// node sends is answered with what cb returns, and the outcome is decoded
// into out. Errors cb returned are wrapped by the call's error, if it
// fails. ctx's end closes the stream, which cancels the call on the node.
func (d *Driver) call(ctx context.Context, path string, body any, cb func(context.Context, callMsg) (callMsg, error), out any) error {
	conn, br, err := d.upgrade(ctx, path, body, protoCall)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	enc := json.NewEncoder(conn)
	var cbErrs []error
	for {
		var m callMsg
		if err := readMsg(br, &m); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("remote vmm: %s: %w", path, ctx.Err())
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("remote vmm: %s: the node went before answering: %w", path, err)
		}
		if m.Done {
			if m.Error != nil {
				return m.Error.decode(cbErrs...)
			}
			if out != nil {
				if err := json.Unmarshal(m.Result, out); err != nil {
					return fmt.Errorf("remote vmm: %s: answer: %w", path, err)
				}
			}
			return nil
		}
		reply, err := cb(ctx, m)
		reply.Reply = true
		if err != nil {
			cbErrs = append(cbErrs, err)
			reply.Error = &wireError{Code: "callback", Message: err.Error()}
		}
		if err := enc.Encode(reply); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("remote vmm: %s: %w", path, ctx.Err())
			}
			return fmt.Errorf("remote vmm: %s: reply to %s: %w", path, m.Call, err)
		}
	}
}
