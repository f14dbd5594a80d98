package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// SocketPath is where tools in the guest ('cove-agent park') reach the
// agent.
const SocketPath = "/run/cove/agent.sock"

// ToolRequest is one line a guest tool sends on SocketPath; ToolReply is
// the line it gets back.
type ToolRequest struct {
	Kind    string   `json:"kind"` // "park"
	Until   []string `json:"until,omitempty"`
	Timeout string   `json:"timeout,omitempty"`
}

// ToolReply carries the event that woke the session, or why the request
// failed.
type ToolReply struct {
	Event json.RawMessage `json:"event,omitempty"`
	Error string          `json:"error,omitempty"`
}

// listener is the host's listen stream: how guest requests reach it.
type listener struct {
	fw      *frameWriter
	mu      sync.Mutex
	nextID  int64                 // guarded by mu
	waiters map[int64]chan string // guarded by mu: request id → the host's error
}

// listen serves the host's listen stream until it ends.
func (a *Agent) listen(st io.ReadWriter) {
	l := &listener{fw: &frameWriter{w: st}, waiters: map[int64]chan string{}}
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
	}()
	for {
		var r agentproto.GuestReply
		if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &r); err != nil {
			return
		}
		l.mu.Lock()
		if ch := l.waiters[r.ID]; ch != nil {
			ch <- r.Error
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
	deadline := time.After(limit)
	for {
		a.mu.Lock()
		l := a.listener
		if l == nil && a.hostBack == nil {
			a.hostBack = make(chan struct{})
		}
		back := a.hostBack
		a.mu.Unlock()
		if l != nil {
			return l, nil
		}
		select {
		case <-back:
		case <-deadline:
			return nil, errors.New("no host is connected")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
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
	if err := json.Unmarshal(line, &req); err != nil || req.Kind != "park" {
		reply(ToolReply{Error: "bad request: want {\"kind\":\"park\",…}"})
		return
	}
	l, err := a.currentListener(ctx, 10*time.Second)
	if err != nil {
		reply(ToolReply{Error: "park: " + err.Error()})
		return
	}
	l.mu.Lock()
	l.nextID++
	id := l.nextID
	failed := make(chan string, 1)
	l.waiters[id] = failed
	l.mu.Unlock()
	defer func() { l.mu.Lock(); delete(l.waiters, id); l.mu.Unlock() }()
	// Look for the waking event, one delivered after this request (older
	// pending events are for 'event wait'); the request itself freezes
	// this guest until the event arrives.
	events := make(chan []byte, 1)
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	after := NewestEvent(EventsDir)
	go func() {
		if ev, err := WaitEventAfter(ectx, EventsDir, after); err == nil {
			events <- ev
		}
	}()
	if err := l.fw.json(agentproto.FrameRequest, agentproto.GuestRequest{ID: id, Kind: "park", Until: req.Until, Timeout: req.Timeout}); err != nil {
		reply(ToolReply{Error: "park: the host went away"})
		return
	}
	select {
	case msg := <-failed:
		reply(ToolReply{Error: "park: " + msg})
	case ev := <-events:
		reply(ToolReply{Event: ev})
	case <-ctx.Done():
	}
}

// Park asks the host, through the agent, to park this session until an
// event matches one of until (or timeout passes), and returns that event.
// It is what 'cove-agent park' runs inside the guest.
func Park(ctx context.Context, until []string, timeout string) ([]byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", SocketPath)
	if err != nil {
		return nil, fmt.Errorf("park: the agent is not reachable: %w", err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(ToolRequest{Kind: "park", Until: until, Timeout: timeout}); err != nil {
		return nil, err
	}
	var r ToolReply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return nil, fmt.Errorf("park: %w", err)
	}
	if r.Error != "" {
		return nil, errors.New(r.Error)
	}
	return r.Event, nil
}
