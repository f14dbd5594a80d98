package agent

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
)

// SocketPath is where tools in the guest ('cove-agent park', 'cove-agent
// token', 'cove-agent checkpoint', 'cove-agent rollback') reach the agent.
const SocketPath = "/run/cove/agent.sock"

// ToolRequest is one line a guest tool sends on SocketPath; ToolReply is
// the line it gets back.
type ToolRequest struct {
	Kind    string   `json:"kind"` // agentproto.GuestPark, GuestToken, GuestCheckpoint or GuestRollback
	Until   []string `json:"until,omitempty"`
	Timeout string   `json:"timeout,omitempty"`
	// Audience and TTL are a token request's.
	Audience string `json:"audience,omitempty"`
	TTL      string `json:"ttl,omitempty"`
	// Name is a checkpoint's (checkpoint, rollback); Again asks a
	// rollback to go back to the checkpoint this guest was rolled back
	// to already (see rollbackGuard).
	Name  string `json:"name,omitempty"`
	Again bool   `json:"again,omitempty"`
}

// ToolReply carries the event that woke the session, the token asked
// for, the checkpoint made or restored, or why the request failed.
type ToolReply struct {
	Event json.RawMessage `json:"event,omitempty"`
	Token string          `json:"token,omitempty"`
	Error string          `json:"error,omitempty"`
	// Checkpoint is the checkpoint a checkpoint call made, or, in a guest
	// restored from it, the one it was restored from (Restored says how,
	// Parent is the session a fork was made from); for a rollback that
	// Already refused, the checkpoint this guest is back at.
	Checkpoint string `json:"checkpoint,omitempty"`
	Restored   string `json:"restored,omitempty"`
	Parent     string `json:"parent,omitempty"`
	Already    bool   `json:"already,omitempty"`
}

// tokenAnswerTimeout bounds the wait for the host's token.
const tokenAnswerTimeout = 30 * time.Second

// hostReturnLimit bounds the wait for a host to come back to a guest
// whose connection ended while a checkpoint or a rollback it asked for
// was unanswered: how it learns what became of it.
const hostReturnLimit = 2 * time.Minute

// listener is the host's listen stream: how guest requests reach it.
type listener struct {
	fw      *frameWriter
	done    chan struct{} // closed once the stream ended (and a.listener is no longer it)
	mu      sync.Mutex
	waiters map[int64]chan agentproto.GuestReply // guarded by mu: request id → the host's reply
}

// listen serves the host's listen stream until it ends.
func (a *Agent) listen(st io.ReadWriter) {
	l := &listener{fw: &frameWriter{w: st}, done: make(chan struct{}), waiters: map[int64]chan agentproto.GuestReply{}}
	if l.fw.json(agentproto.FrameResponse, agentproto.Response{}) != nil {
		return
	}
	a.mu.Lock()
	a.listener = l
	a.mu.Unlock()
	a.listenerChanged()
	defer func() {
		a.mu.Lock()
		if a.listener == l {
			a.listener = nil
		}
		a.mu.Unlock()
		close(l.done)
	}()
	for {
		var r agentproto.GuestReply
		if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &r); err != nil {
			return
		}
		l.mu.Lock()
		if ch := l.waiters[r.ID]; ch != nil {
			select {
			case ch <- r:
			default: // one reply per request; a second is the host's mistake
			}
		}
		l.mu.Unlock()
	}
}

// listenerChanged wakes tools waiting for a host to listen.
func (a *Agent) listenerChanged() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hostBack != nil {
		close(a.hostBack)
		a.hostBack = nil
	}
}

// currentListener returns the host's listen stream, waiting up to limit
// for one (the host reconnects after a wake).
func (a *Agent) currentListener(ctx context.Context, limit time.Duration) (*listener, error) {
	var l *listener
	err := a.waitHost(ctx, limit, func() bool { l = a.listener; return l != nil })
	return l, err
}

// waitHost waits up to limit until found (called under a.mu) says the
// host is there: listenerChanged wakes it when a host's session or listen
// stream arrives.
func (a *Agent) waitHost(ctx context.Context, limit time.Duration, found func() bool) error {
	deadline := time.After(limit)
	for {
		a.mu.Lock()
		ok := found()
		if !ok && a.hostBack == nil {
			a.hostBack = make(chan struct{})
		}
		back := a.hostBack
		a.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-back:
		case <-deadline:
			return errors.New("no host is connected")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// nextListener returns the host's next listen stream, one other than
// old, waiting up to limit for it.
func (a *Agent) nextListener(ctx context.Context, old *listener, limit time.Duration) (*listener, error) {
	var l *listener
	err := a.waitHost(ctx, limit, func() bool { l = a.listener; return l != nil && l != old })
	return l, err
}

// ServeTools answers guest tools on SocketPath until ctx ends.
func (a *Agent) ServeTools(ctx context.Context) error {
	_ = os.Remove(SocketPath)
	ln, err := net.Listen("unix", SocketPath)
	if err != nil {
		return fmt.Errorf("agent: tools socket: %w", err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: tools socket: %w", err)
		}
		go a.serveTool(ctx, c)
	}
}

func (a *Agent) serveTool(ctx context.Context, c net.Conn) {
	defer c.Close()
	reply := func(r ToolReply) { _ = json.NewEncoder(c).Encode(r) }
	line, err := bufio.NewReaderSize(io.LimitReader(c, 64<<10), 4096).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return
	}
	var req ToolRequest
	if err := json.Unmarshal(line, &req); err != nil || !toolKinds[req.Kind] {
		reply(ToolReply{Error: "bad request: want {\"kind\":K,…}, K one of park, token, checkpoint, rollback"})
		return
	}
	if req.Kind == agentproto.GuestRollback {
		if req.Name == "" {
			reply(ToolReply{Error: "rollback: no checkpoint named"})
			return
		}
		if r, refused := a.rollbackGuard(req); refused {
			reply(r)
			return
		}
	}
	if req.Kind == agentproto.GuestToken {
		// The session's identity is root's in the guest: a token is
		// handed only to a tool running as uid 0.
		if err := peerIsRoot(c); err != nil {
			reply(ToolReply{Error: "token: " + err.Error()})
			return
		}
	}
	l, err := a.currentListener(ctx, 10*time.Second)
	if err != nil {
		reply(ToolReply{Error: req.Kind + ": " + err.Error()})
		return
	}
	id := a.reqSeq.Add(1)
	answers := l.await(id)
	defer l.forget(id)
	switch req.Kind {
	case agentproto.GuestToken:
		reply(a.token(ctx, l, id, answers, req))
		return
	case agentproto.GuestCheckpoint:
		reply(a.checkpoint(ctx, l, id, answers, req))
		return
	case agentproto.GuestRollback:
		reply(a.rollback(ctx, l, id, answers, req))
		return
	}
	// Look for the waking event, one delivered after this request (older
	// pending events are for 'event wait'); the request itself freezes
	// this guest until the event arrives.
	events := make(chan []byte, 1)
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	after := NewestEvent(a.eventsDir)
	go func() {
		if ev, err := WaitEventAfter(ectx, a.eventsDir, after); err == nil {
			events <- ev
		}
	}()
	// A failed write does not mean the host never read the request (see
	// checkpoint): yamux can report the session's end, which a park
	// brings, for a frame it already sent, and the guest saved while the
	// write waited for that word wakes with it failing. So a write error
	// waits, as a park whose connection ended does, for the waking event.
	if err := l.fw.json(agentproto.FrameRequest, agentproto.GuestRequest{ID: id, Kind: agentproto.GuestPark, Until: req.Until, Timeout: req.Timeout}); err != nil {
		answers = nil // the listen stream is gone: no refusal can come on it
	}
	select {
	case r := <-answers:
		reply(ToolReply{Error: "park: " + r.Error})
	case ev := <-events:
		reply(ToolReply{Event: ev})
	case <-ctx.Done():
	}
}

// toolKinds are the requests a guest tool may make.
var toolKinds = map[string]bool{agentproto.GuestPark: true, agentproto.GuestToken: true,
	agentproto.GuestCheckpoint: true, agentproto.GuestRollback: true}

// await registers request id to the host and returns where its reply
// arrives; forget(id) drops it.
func (l *listener) await(id int64) chan agentproto.GuestReply {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan agentproto.GuestReply, 1)
	l.waiters[id] = ch
	return ch
}

func (l *listener) forget(id int64) {
	l.mu.Lock()
	delete(l.waiters, id)
	l.mu.Unlock()
}

// token asks the host for the session's identity token and returns the
// tool's reply. The token passes through memory only: it is never written
// anywhere in the guest but to the tool's socket.
func (a *Agent) token(ctx context.Context, l *listener, id int64, answers chan agentproto.GuestReply, req ToolRequest) ToolReply {
	greq := agentproto.GuestRequest{ID: id, Kind: agentproto.GuestToken, Audience: req.Audience, TTL: req.TTL}
	if err := l.fw.json(agentproto.FrameRequest, greq); err != nil {
		return ToolReply{Error: "token: the host went away"}
	}
	select {
	case r := <-answers:
		if r.Error != "" || r.Token == "" {
			return ToolReply{Error: "token: " + cmp.Or(r.Error, "the host sent no token")}
		}
		return ToolReply{Token: r.Token}
	case <-time.After(tokenAnswerTimeout):
		return ToolReply{Error: fmt.Sprintf("token: the host did not answer within %s", tokenAnswerTimeout)}
	case <-ctx.Done():
		return ToolReply{Error: "token: the agent is stopping"}
	}
}

// peerIsRoot reports whether the process at the other end of c runs as
// root (SO_PEERCRED).
func peerIsRoot(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("who is asking: %w", cerr)
	}
	if cred.Uid != 0 {
		return fmt.Errorf("uid %d may not have the session's identity; run as root", cred.Uid)
	}
	return nil
}

// Park asks the host, through the agent, to park this session until an
// event matches one of until (or timeout passes), and returns that event.
// It is what 'cove-agent park' runs inside the guest.
func Park(ctx context.Context, until []string, timeout string) ([]byte, error) {
	r, err := askAgent(ctx, ToolRequest{Kind: agentproto.GuestPark, Until: until, Timeout: timeout})
	return r.Event, err
}

// Token asks the host, through the agent, for the session's identity
// token for audience, living ttl ("" for the host's default), and returns
// it. It is what 'cove-agent token' runs inside the guest (as root).
func Token(ctx context.Context, audience, ttl string) (string, error) {
	r, err := askAgent(ctx, ToolRequest{Kind: agentproto.GuestToken, Audience: audience, TTL: ttl})
	return r.Token, err
}

// askAgent sends req to the agent's tools socket and returns its reply;
// a reply's Error is returned as an error (and the reply zero).
func askAgent(ctx context.Context, req ToolRequest) (ToolReply, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", SocketPath)
	if err != nil {
		return ToolReply{}, fmt.Errorf("%s: the agent is not reachable: %w", req.Kind, err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return ToolReply{}, err
	}
	var r ToolReply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return ToolReply{}, fmt.Errorf("%s: %w", req.Kind, err)
	}
	if r.Error != "" {
		return ToolReply{}, errors.New(r.Error)
	}
	return r, nil
}
