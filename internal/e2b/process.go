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

	"google.golang.org/protobuf/proto"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	processpb "github.com/cove-dev/cove/internal/e2b/envdpb/process"
	"github.com/cove-dev/cove/internal/session"
)

// The process.Process service. A started process belongs to its
// sandbox's table, not to the stream that started it: it runs on when the
// stream ends, any number of Connect streams follow its output from then
// on, and it is listed, signalled and fed stdin by pid (its pid in the
// guest) until it exits.
//
// The table lives in this server's memory, and each entry in a file of
// the guest's too (tableDir/PID: the pid, tag, config and PTY flag),
// written when the process starts and removed when its end is read. A
// restarted server rebuilds a sandbox's table from those files on the
// first process call for it, attaching to each command again
// (session.Manager.Attach): the processes are listed, connected to,
// signalled and fed stdin by pid as before (a connect streams from then
// on, as envd's does: output written while no server followed the
// command is not replayed). The files live as long as the guest's
// memory (through pause and resume, as its processes do); they hold
// nothing the guest's processes do not already see.

// procTable is one sandbox's started processes.
type procTable struct {
	ctx    context.Context // the processes' lifetime: the sandbox's here
	cancel context.CancelFunc

	mu       sync.Mutex
	procs    map[uint32]*proc   // guarded by mu
	watchers map[string]*polled // guarded by mu: CreateWatcher's, by id

	// recovering is held while the table is rebuilt from the guest's
	// files; recovered says it was (see recover).
	recovering sync.Mutex
	recovered  bool // guarded by recovering
}

// proc is one started process.
type proc struct {
	pid uint32
	tag string
	cfg *processpb.ProcessConfig
	p   session.Process
	tty bool
	// saved delivers whether the process has its file in the guest
	// (tableDir), once written.
	saved chan bool

	mu    sync.Mutex
	subs  map[*sub]struct{} // guarded by mu; nil once ended
	err   *rpcError         // guarded by mu: why the stream ended without an exit
	stdin sync.Mutex        // orders writes to p.Stdin()
}

// sub is one stream following a process's events.
type sub struct {
	ch   chan *processpb.ProcessEvent // closed after the last event
	gone chan struct{}                // closed when the stream stops listening
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

func (t *procTable) find(sel *processpb.ProcessSelector) *proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch x := sel.GetSelector().(type) {
	case *processpb.ProcessSelector_Pid:
		return t.procs[x.Pid]
	case *processpb.ProcessSelector_Tag:
		for _, p := range t.procs {
			if p.tag == x.Tag {
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
	sb := &sub{ch: make(chan *processpb.ProcessEvent, 16), gone: make(chan struct{})}
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
func (p *proc) publish(ev *processpb.ProcessEvent) {
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
func (s *Server) pump(t *procTable, id string, p *proc) {
	var wg sync.WaitGroup
	relay := func(r io.Reader, data func([]byte) *processpb.ProcessEvent_DataEvent) {
		wg.Go(func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					p.publish(&processpb.ProcessEvent{Event: &processpb.ProcessEvent_Data{Data: data(append([]byte(nil), buf[:n]...))}})
				}
				if err != nil {
					return
				}
			}
		})
	}
	if p.tty {
		relay(p.p.Stdout(), func(b []byte) *processpb.ProcessEvent_DataEvent {
			return &processpb.ProcessEvent_DataEvent{Output: &processpb.ProcessEvent_DataEvent_Pty{Pty: b}}
		})
	} else {
		relay(p.p.Stdout(), func(b []byte) *processpb.ProcessEvent_DataEvent {
			return &processpb.ProcessEvent_DataEvent{Output: &processpb.ProcessEvent_DataEvent_Stdout{Stdout: b}}
		})
	}
	relay(p.p.Stderr(), func(b []byte) *processpb.ProcessEvent_DataEvent {
		return &processpb.ProcessEvent_DataEvent{Output: &processpb.ProcessEvent_DataEvent_Stderr{Stderr: b}}
	})
	wg.Wait()
	st, err := p.p.Wait()
	t.mu.Lock()
	delete(t.procs, p.pid)
	t.mu.Unlock()
	if err == nil && <-p.saved {
		s.forget(t.ctx, id, p.pid)
	}
	if err != nil {
		p.finish(rpcErrorf(codeUnavailable, "process %d: %v", p.pid, err))
		return
	}
	p.publish(&processpb.ProcessEvent{Event: &processpb.ProcessEvent_End{End: endOf(st)}})
	p.finish(nil)
}

// endOf is the end event of an exit status, as envd words it.
func endOf(st api.ExitStatus) *processpb.ProcessEvent_EndEvent {
	if st.Signal != "" {
		status := "signal: " + signalWords(st.Signal)
		return &processpb.ProcessEvent_EndEvent{ExitCode: -1, Exited: false, Status: status, Error: &status}
	}
	e := &processpb.ProcessEvent_EndEvent{ExitCode: int32(st.Code), Exited: true, Status: fmt.Sprintf("exit status %d", st.Code)}
	if st.Code != 0 {
		e.Error = &e.Status
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
	id := sandboxID(r)
	s.recover(r.Context(), id, s.table(id))
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
	req := &processpb.StartRequest{}
	if e := readEnvelope(r, st, req); e != nil {
		_ = st.end(e)
		return
	}
	cfg := req.GetProcess()
	if cfg.GetCmd() == "" {
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
	u := userOf(r)
	// No cwd: the agent starts it in its user's home, or / where the
	// guest lacks that (nobody's /nonexistent).
	xreq := api.ExecRequest{Argv: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: cfg.GetEnvs(), User: execUser(u)}
	if cfg.GetCwd() != "" {
		xreq.Cwd = s.path(r, cfg.GetCwd())
	}
	if timeout > 0 {
		xreq.Timeout = timeout.String()
	}
	if req.Pty != nil {
		xreq.TTY, xreq.Rows, xreq.Cols = true, int(req.Pty.GetSize().GetRows()), int(req.Pty.GetSize().GetCols())
	}
	if err := s.announceEnvd(r, "session.exec", audit.Target{Argv: xreq.Argv, Cwd: xreq.Cwd}); err != nil {
		_ = st.end(s.asRPC(r, "start "+cfg.GetCmd(), err))
		return
	}
	xp, err := s.cfg.Sessions.Exec(t.ctx, id, xreq)
	if err != nil {
		_ = st.end(s.asRPC(r, "start "+cfg.GetCmd(), err))
		return
	}
	p := &proc{cfg: cfg, tag: req.GetTag(), p: xp, tty: req.Pty != nil, subs: map[*sub]struct{}{}}
	if g, ok := xp.(interface{ PID() int }); ok {
		p.pid = uint32(g.PID())
	} else {
		p.pid = s.pids.Add(1) // a driver without guest pids (the fake's)
	}
	if !req.GetStdin() && req.Pty == nil {
		// No stdin asked for: the command reads EOF, not a wait.
		_ = xp.Stdin().Close()
	}
	sb := p.subscribe()
	t.mu.Lock()
	t.procs[p.pid] = p
	t.mu.Unlock()
	// The guest's copy of the entry is written beside the relay of the
	// output (neither the start event nor the output waits for it),
	// and before the pump can remove it.
	p.saved = make(chan bool, 1)
	go func() { p.saved <- s.save(t.ctx, id, p) }()
	s.pumps.Go(func() { s.pump(t, id, p) })
	s.follow(r, st, p, sb, func(ev *processpb.ProcessEvent) proto.Message { return &processpb.StartResponse{Event: ev} })
}

func (s *Server) connectProcess(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	req := &processpb.ConnectRequest{}
	if e := readEnvelope(r, st, req); e != nil {
		_ = st.end(e)
		return
	}
	p := s.table(sandboxID(r)).find(req.GetProcess())
	var sb *sub
	if p != nil {
		sb = p.subscribe()
	}
	if sb == nil {
		_ = st.end(rpcErrorf(codeNotFound, "process %s not found", selectorString(req.GetProcess())))
		return
	}
	s.follow(r, st, p, sb, func(ev *processpb.ProcessEvent) proto.Message { return &processpb.ConnectResponse{Event: ev} })
}

func selectorString(sel *processpb.ProcessSelector) string {
	switch x := sel.GetSelector().(type) {
	case *processpb.ProcessSelector_Pid:
		return fmt.Sprintf("with pid %d", x.Pid)
	case *processpb.ProcessSelector_Tag:
		return fmt.Sprintf("with tag %q", x.Tag)
	}
	return "(no pid or tag given)"
}

// follow streams a process's events to one client, each wrapped in the
// call's response message: the start event, the output, the end, then the
// end of the stream; keepalives while quiet.
func (s *Server) follow(r *http.Request, st *stream, p *proc, sb *sub, wrap func(*processpb.ProcessEvent) proto.Message) {
	defer p.unsubscribe(sb)
	start := &processpb.ProcessEvent{Event: &processpb.ProcessEvent_Start{Start: &processpb.ProcessEvent_StartEvent{Pid: p.pid}}}
	if st.send(wrap(start)) != nil {
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
			if st.send(wrap(ev)) != nil {
				return
			}
		case <-ka.C:
			keepalive := &processpb.ProcessEvent{Event: &processpb.ProcessEvent_Keepalive{Keepalive: &processpb.ProcessEvent_KeepAlive{}}}
			if st.send(wrap(keepalive)) != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

var signals = map[processpb.Signal]string{processpb.Signal_SIGNAL_SIGKILL: "KILL", processpb.Signal_SIGNAL_SIGTERM: "TERM"}

// processUnary serves the unary calls: each has its request message, and
// all but List name a process.
func (s *Server) processUnary(w http.ResponseWriter, r *http.Request, method string) {
	var req interface {
		proto.Message
		GetProcess() *processpb.ProcessSelector
	}
	switch method {
	case "List":
		s.listProcesses(w, r)
		return
	case "SendInput":
		req = &processpb.SendInputRequest{}
	case "CloseStdin":
		req = &processpb.CloseStdinRequest{}
	case "SendSignal":
		req = &processpb.SendSignalRequest{}
	case "Update":
		req = &processpb.UpdateRequest{}
	}
	c, e := readUnary(r, req)
	if e != nil {
		writeUnaryError(w, e)
		return
	}
	p := s.table(sandboxID(r)).find(req.GetProcess())
	if p == nil {
		writeUnaryError(w, rpcErrorf(codeNotFound, "process %s not found", selectorString(req.GetProcess())))
		return
	}
	var (
		err error
		out proto.Message
	)
	switch req := req.(type) {
	case *processpb.SendInputRequest:
		if req.Input == nil {
			writeUnaryError(w, rpcErrorf(codeInvalidArgument, "input is missing"))
			return
		}
		p.stdin.Lock()
		_, err = p.p.Stdin().Write(append(req.Input.GetStdin(), req.Input.GetPty()...))
		p.stdin.Unlock()
		out = &processpb.SendInputResponse{}
	case *processpb.CloseStdinRequest:
		p.stdin.Lock()
		err = p.p.Stdin().Close()
		p.stdin.Unlock()
		out = &processpb.CloseStdinResponse{}
	case *processpb.SendSignalRequest:
		name, ok := signals[req.GetSignal()]
		if !ok {
			writeUnaryError(w, rpcErrorf(codeInvalidArgument, "signal %v: want SIGNAL_SIGKILL or SIGNAL_SIGTERM", req.GetSignal()))
			return
		}
		err = p.p.Signal(name)
		out = &processpb.SendSignalResponse{}
	case *processpb.UpdateRequest:
		out = &processpb.UpdateResponse{}
		if req.Pty == nil {
			break
		}
		if !p.tty {
			writeUnaryError(w, rpcErrorf(codeFailedPrecondition, "process %d has no PTY", p.pid))
			return
		}
		err = p.p.Resize(int(req.Pty.GetSize().GetRows()), int(req.Pty.GetSize().GetCols()))
	}
	if err != nil {
		writeUnaryError(w, s.asRPC(r, strings.ToLower(method), err))
		return
	}
	writeUnary(w, c, out)
}

// listProcesses serves List: the sandbox's processes by pid.
func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) {
	c, e := readUnary(r, &processpb.ListRequest{})
	if e != nil {
		writeUnaryError(w, e)
		return
	}
	t := s.table(sandboxID(r))
	out := &processpb.ListResponse{}
	t.mu.Lock()
	for _, p := range t.procs {
		info := &processpb.ProcessInfo{Pid: p.pid, Config: p.cfg}
		if p.tag != "" {
			info.Tag = &p.tag
		}
		out.Processes = append(out.Processes, info)
	}
	t.mu.Unlock()
	sort.Slice(out.Processes, func(i, j int) bool { return out.Processes[i].Pid < out.Processes[j].Pid })
	writeUnary(w, c, out)
}
