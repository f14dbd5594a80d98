package e2b

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/session"
)

// The process.Process service. A started process belongs to its
// sandbox's table, not to the stream that started it: it runs on when the
// stream ends, any number of Connect streams follow its output from then
// on, and it is listed, signalled and fed stdin by pid (its pid in the
// guest) until it exits. The table lives in this server's memory: a
// restarted server has lost it (the guest's processes run on, but cannot
// be reconnected through the E2B API).

// processConfig is process.ProcessConfig.
type processConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Envs map[string]string `json:"envs"`
	Cwd  *string           `json:"cwd,omitempty"`
}

// selector is process.ProcessSelector.
type selector struct {
	PID *uint32 `json:"pid,omitempty"`
	Tag *string `json:"tag,omitempty"`
}

type ptySize struct {
	Size struct {
		Cols uint32 `json:"cols"`
		Rows uint32 `json:"rows"`
	} `json:"size"`
}

type processEvent struct {
	Start     *startEvent `json:"start,omitempty"`
	Data      *dataEvent  `json:"data,omitempty"`
	End       *endEvent   `json:"end,omitempty"`
	Keepalive *struct{}   `json:"keepalive,omitempty"`
}

type startEvent struct {
	PID uint32 `json:"pid"`
}

type dataEvent struct {
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	Pty    []byte `json:"pty,omitempty"`
}

type endEvent struct {
	ExitCode int32  `json:"exitCode"`
	Exited   bool   `json:"exited"`
	Status   string `json:"status"`
	Error    string `json:"error,omitempty"`
}

// eventMsg is StartResponse and ConnectResponse.
type eventMsg struct {
	Event processEvent `json:"event"`
}

// procTable is one sandbox's started processes.
type procTable struct {
	ctx    context.Context // the processes' lifetime: the sandbox's here
	cancel context.CancelFunc

	mu       sync.Mutex
	procs    map[uint32]*proc   // guarded by mu
	watchers map[string]*polled // guarded by mu: CreateWatcher's, by id
}

// proc is one started process.
type proc struct {
	pid uint32
	tag string
	cfg processConfig
	p   session.Process
	tty bool

	mu    sync.Mutex
	subs  map[*sub]struct{} // guarded by mu; nil once ended
	err   *rpcError         // guarded by mu: why the stream ended without an exit
	stdin sync.Mutex        // orders writes to p.Stdin()
}

// sub is one stream following a process's events.
type sub struct {
	ch   chan eventMsg // closed after the last event
	gone chan struct{} // closed when the stream stops listening
}

// table returns the sandbox's process table, made on first use.
func (s *Server) table(id string) *procTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.procs[id]
	if t == nil {
		t = &procTable{procs: map[uint32]*proc{}, watchers: map[string]*polled{}}
		t.ctx, t.cancel = context.WithCancel(s.ctx)
		s.procs[id] = t
	}
	return t
}

// dropProcs ends the streams of a removed sandbox's processes, and its
// watches.
func (s *Server) dropProcs(id string) {
	s.mu.Lock()
	t := s.procs[id]
	delete(s.procs, id)
	s.mu.Unlock()
	if t != nil {
		t.cancel()
	}
}

func (t *procTable) find(sel selector) *proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sel.PID != nil {
		return t.procs[*sel.PID]
	}
	if sel.Tag != nil {
		for _, p := range t.procs {
			if p.tag == *sel.Tag {
				return p
			}
		}
	}
	return nil
}

// subscribe adds a listener, or returns nil once the process has ended.
func (p *proc) subscribe() *sub {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subs == nil {
		return nil
	}
	sb := &sub{ch: make(chan eventMsg, 16), gone: make(chan struct{})}
	p.subs[sb] = struct{}{}
	return sb
}

func (p *proc) unsubscribe(sb *sub) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.subs[sb]; ok {
		delete(p.subs, sb)
		close(sb.gone)
	}
}

// publish gives ev to every listener, waiting for each (a slow stream
// slows the command's output, as a pipe would) unless it leaves.
func (p *proc) publish(ev eventMsg) {
	p.mu.Lock()
	subs := make([]*sub, 0, len(p.subs))
	for sb := range p.subs {
		subs = append(subs, sb)
	}
	p.mu.Unlock()
	for _, sb := range subs {
		select {
		case sb.ch <- ev:
		case <-sb.gone:
		}
	}
}

// finish ends every listener's stream, with err if the process's end is
// unknown.
func (p *proc) finish(err *rpcError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
	for sb := range p.subs {
		close(sb.ch)
	}
	p.subs = nil
}

// pump relays the process's output to its listeners, then its end, and
// takes it out of the table.
func (t *procTable) pump(p *proc) {
	var wg sync.WaitGroup
	relay := func(r io.Reader, data func([]byte) *dataEvent) {
		wg.Go(func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					p.publish(eventMsg{Event: processEvent{Data: data(append([]byte(nil), buf[:n]...))}})
				}
				if err != nil {
					return
				}
			}
		})
	}
	if p.tty {
		relay(p.p.Stdout(), func(b []byte) *dataEvent { return &dataEvent{Pty: b} })
	} else {
		relay(p.p.Stdout(), func(b []byte) *dataEvent { return &dataEvent{Stdout: b} })
	}
	relay(p.p.Stderr(), func(b []byte) *dataEvent { return &dataEvent{Stderr: b} })
	wg.Wait()
	st, err := p.p.Wait()
	t.mu.Lock()
	delete(t.procs, p.pid)
	t.mu.Unlock()
	if err != nil {
		p.finish(rpcErrorf(codeUnavailable, "process %d: %v", p.pid, err))
		return
	}
	p.publish(eventMsg{Event: processEvent{End: endOf(st)}})
	p.finish(nil)
}

// endOf is the end event of an exit status, as envd words it.
func endOf(st api.ExitStatus) *endEvent {
	if st.Signal != "" {
		status := "signal: " + signalWords(st.Signal)
		return &endEvent{ExitCode: -1, Exited: false, Status: status, Error: status}
	}
	e := &endEvent{ExitCode: int32(st.Code), Exited: true, Status: fmt.Sprintf("exit status %d", st.Code)}
	if st.Code != 0 {
		e.Error = e.Status
	}
	return e
}

func signalWords(name string) string {
	switch name {
	case "KILL":
		return "killed"
	case "TERM":
		return "terminated"
	case "INT":
		return "interrupt"
	case "HUP":
		return "hangup"
	}
	return "SIG" + name
}

// processRPC serves the process.Process service.
func (s *Server) processRPC(w http.ResponseWriter, r *http.Request) {
	switch method := r.PathValue("method"); method {
	case "Start":
		s.startProcess(w, r)
	case "Connect":
		s.connectProcess(w, r)
	case "List", "SendInput", "SendSignal", "CloseStdin", "Update":
		s.processUnary(w, r, method)
	default:
		writeUnaryError(w, rpcErrorf(codeUnimplemented, "process.Process/%s is not implemented by cove yet", method))
	}
}

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	var req struct {
		Process processConfig `json:"process"`
		Pty     *ptySize      `json:"pty,omitempty"`
		Tag     *string       `json:"tag,omitempty"`
		Stdin   *bool         `json:"stdin,omitempty"`
	}
	if e := readEnvelope(r, &req); e != nil {
		_ = st.end(e)
		return
	}
	if req.Process.Cmd == "" {
		_ = st.end(rpcErrorf(codeInvalidArgument, "process.cmd is empty"))
		return
	}
	timeout, e := connectTimeout(r)
	if e != nil {
		_ = st.end(e)
		return
	}
	id := sandboxID(r)
	t := s.table(id)
	xreq := api.ExecRequest{Argv: append([]string{req.Process.Cmd}, req.Process.Args...), Env: req.Process.Envs, Cwd: homeDir}
	if req.Process.Cwd != nil && *req.Process.Cwd != "" {
		xreq.Cwd = guestPath(*req.Process.Cwd)
	}
	if timeout > 0 {
		xreq.Timeout = timeout.String()
	}
	if req.Pty != nil {
		xreq.TTY, xreq.Rows, xreq.Cols = true, int(req.Pty.Size.Rows), int(req.Pty.Size.Cols)
	}
	if err := s.announceEnvd(r, "session.exec", audit.Target{Argv: xreq.Argv, Cwd: xreq.Cwd}); err != nil {
		_ = st.end(s.asRPC(r, "start "+req.Process.Cmd, err))
		return
	}
	xp, err := s.cfg.Sessions.Exec(t.ctx, id, xreq)
	if err != nil {
		_ = st.end(s.asRPC(r, "start "+req.Process.Cmd, err))
		return
	}
	p := &proc{cfg: req.Process, p: xp, tty: req.Pty != nil, subs: map[*sub]struct{}{}}
	if req.Tag != nil {
		p.tag = *req.Tag
	}
	if g, ok := xp.(interface{ PID() int }); ok {
		p.pid = uint32(g.PID())
	} else {
		p.pid = s.pids.Add(1) // a driver without guest pids (the fake's)
	}
	if req.Stdin == nil || !*req.Stdin {
		if req.Pty == nil {
			// No stdin asked for: the command reads EOF, not a wait.
			_ = xp.Stdin().Close()
		}
	}
	sb := p.subscribe()
	t.mu.Lock()
	t.procs[p.pid] = p
	t.mu.Unlock()
	go t.pump(p)
	s.follow(r, st, p, sb)
}

func (s *Server) connectProcess(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	var req struct {
		Process selector `json:"process"`
	}
	if e := readEnvelope(r, &req); e != nil {
		_ = st.end(e)
		return
	}
	p := s.table(sandboxID(r)).find(req.Process)
	var sb *sub
	if p != nil {
		sb = p.subscribe()
	}
	if sb == nil {
		_ = st.end(rpcErrorf(codeNotFound, "process %s not found", selectorString(req.Process)))
		return
	}
	s.follow(r, st, p, sb)
}

func selectorString(sel selector) string {
	switch {
	case sel.PID != nil:
		return fmt.Sprintf("with pid %d", *sel.PID)
	case sel.Tag != nil:
		return fmt.Sprintf("with tag %q", *sel.Tag)
	}
	return "(no pid or tag given)"
}

// follow streams a process's events to one client: the start event, the
// output, the end, then the end of the stream; keepalives while quiet.
func (s *Server) follow(r *http.Request, st *stream, p *proc, sb *sub) {
	defer p.unsubscribe(sb)
	if st.send(eventMsg{Event: processEvent{Start: &startEvent{PID: p.pid}}}) != nil {
		return
	}
	ka := time.NewTicker(keepaliveInterval(r))
	defer ka.Stop()
	for {
		select {
		case ev, ok := <-sb.ch:
			if !ok {
				p.mu.Lock()
				e := p.err
				p.mu.Unlock()
				_ = st.end(e)
				return
			}
			if st.send(ev) != nil {
				return
			}
		case <-ka.C:
			if st.send(eventMsg{Event: processEvent{Keepalive: &struct{}{}}}) != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

var signals = map[string]string{"SIGNAL_SIGKILL": "KILL", "SIGNAL_SIGTERM": "TERM", "9": "KILL", "15": "TERM"}

func (s *Server) processUnary(w http.ResponseWriter, r *http.Request, method string) {
	var req struct {
		Process selector `json:"process"`
		Input   *struct {
			Stdin []byte `json:"stdin,omitempty"`
			Pty   []byte `json:"pty,omitempty"`
		} `json:"input,omitempty"`
		Signal any      `json:"signal,omitempty"`
		Pty    *ptySize `json:"pty,omitempty"`
	}
	if e := readUnary(r, &req); e != nil {
		writeUnaryError(w, e)
		return
	}
	t := s.table(sandboxID(r))
	if method == "List" {
		t.mu.Lock()
		list := make([]map[string]any, 0, len(t.procs))
		for _, p := range t.procs {
			info := map[string]any{"pid": p.pid, "config": p.cfg}
			if p.tag != "" {
				info["tag"] = p.tag
			}
			list = append(list, info)
		}
		t.mu.Unlock()
		sort.Slice(list, func(i, j int) bool { return list[i]["pid"].(uint32) < list[j]["pid"].(uint32) })
		writeUnary(w, map[string]any{"processes": list})
		return
	}
	p := t.find(req.Process)
	if p == nil {
		writeUnaryError(w, rpcErrorf(codeNotFound, "process %s not found", selectorString(req.Process)))
		return
	}
	var err error
	switch method {
	case "SendInput":
		if req.Input == nil {
			writeUnaryError(w, rpcErrorf(codeInvalidArgument, "input is missing"))
			return
		}
		p.stdin.Lock()
		_, err = p.p.Stdin().Write(append(req.Input.Stdin, req.Input.Pty...))
		p.stdin.Unlock()
	case "CloseStdin":
		p.stdin.Lock()
		err = p.p.Stdin().Close()
		p.stdin.Unlock()
	case "SendSignal":
		name, ok := signals[strings.TrimSpace(fmt.Sprint(req.Signal))]
		if !ok {
			writeUnaryError(w, rpcErrorf(codeInvalidArgument, "signal %v: want SIGNAL_SIGKILL or SIGNAL_SIGTERM", req.Signal))
			return
		}
		err = p.p.Signal(name)
	case "Update":
		if req.Pty == nil {
			writeUnary(w, struct{}{})
			return
		}
		if !p.tty {
			writeUnaryError(w, rpcErrorf(codeFailedPrecondition, "process %d has no PTY", p.pid))
			return
		}
		err = p.p.Resize(int(req.Pty.Size.Rows), int(req.Pty.Size.Cols))
	}
	if err != nil {
		writeUnaryError(w, s.asRPC(r, strings.ToLower(method), err))
		return
	}
	writeUnary(w, struct{}{})
}
