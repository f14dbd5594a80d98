package agent

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
)

// drainGrace is how long output is still read after a command exits while
// a pipe stays open for writing: a background child that keeps it open
// must not hold the exec forever.
const drainGrace = 500 * time.Millisecond

var defaultEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/cove/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
}

// reaper waits for every child of the agent (as PID 1: every orphan too)
// and hands exit statuses to the goroutines that started them.
//
// It waits in a blocking wait4, and SIGCHLD keeps its default action, so
// the kernel drops the signal instead of delivering it: an exit wakes the
// waiting thread directly. A delivered signal runs kernel and Go runtime
// code that nothing else runs in a woken guest, and under emulation every
// path run after a restore is translated afresh (the first exec after a
// wake translated about 200 fewer blocks with this loop).
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus // guarded by mu
	started chan struct{}                // a child may exist: wakes a reaper that saw none
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan unix.WaitStatus{}, started: make(chan struct{}, 1)}
	// Where this fails the runtime's handler gets the signal and ignores
	// it (nothing asked for it): wait4 still sees every exit.
	_ = defaultAction(unix.SIGCHLD)
	go r.loop()
	return r
}

// defaultAction sets sig's disposition to SIG_DFL behind the Go runtime,
// which installs a handler for every signal.
func defaultAction(sig unix.Signal) error {
	// The kernel's struct sigaction: handler (SIG_DFL is 0), flags,
	// restorer, mask.
	var act [4]uint64
	if _, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// loop reaps children for as long as the agent runs. With no child left
// (ECHILD) it waits for start: as PID 1 the agent is every process's
// ancestor, so no orphan can appear before it starts something.
func (r *reaper) loop() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			<-r.started
			continue
		}
		// start holds mu from the fork until its waiter is registered,
		// so a child that exits at once still finds it; an orphan has
		// none, and its status goes.
		r.mu.Lock()
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- ws
		}
		r.mu.Unlock()
	}
}

// start forks and execs under the reaper's lock, so the child's status is
// never lost, and returns a channel that receives it.
func (r *reaper) start(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	select {
	case r.started <- struct{}{}:
	default: // a wake-up is pending already
	}
	return pid, ch, nil
}

// lookPath finds file in the PATH of env.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", fmt.Errorf("exec: %q: %w", file, err)
		}
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH: %w", file, os.ErrNotExist)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: permission denied: %w", p, os.ErrPermission)
	}
	return nil
}

func mergeEnv(env, defaults []string) []string {
	out := append([]string(nil), env...)
	for _, d := range defaults {
		k, _, _ := strings.Cut(d, "=")
		found := false
		for _, kv := range env {
			if strings.HasPrefix(kv, k+"=") {
				found = true
				break
			}
		}
		if !found {
			out = append(out, d)
		}
	}
	return out
}

// frameWriter serializes frame writes on one stream: stdout and stderr
// copiers write concurrently.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

func (f *frameWriter) frame(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return agentproto.WriteFrame(f.w, typ, p)
}

func (f *frameWriter) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return f.frame(typ, b)
}

func (a *Agent) exec(st io.ReadWriter, req agentproto.Request) {
	x := req.Exec
	if x == nil || len(x.Argv) == 0 {
		respondErr(st, agentproto.CodeInvalid, errors.New("exec: empty argv"))
		return
	}
	defaults, home := defaultEnv, "/root"
	var cred *syscall.Credential
	if x.User != "" {
		u, err := lookupUser(x.User)
		if err != nil {
			respondErr(st, codeOf(err), fmt.Errorf("exec: %w", err))
			return
		}
		defaults, home, cred = mergeEnv(u.env, defaultEnv), u.home, u.cred
	}
	env := mergeEnv(x.Env, defaults)
	if x.TTY {
		env = mergeEnv(env, []string{"TERM=xterm-256color"})
	}
	a.mu.Lock()
	egress, addr := a.egressLn != nil, a.egressAddr
	a.mu.Unlock()
	if egress {
		env = mergeEnv(env, egressEnv(addr))
	}
	bin, err := lookPath(x.Argv[0], env)
	if err != nil {
		respondErr(st, codeOf(err), err)
		return
	}
	cwd := x.Cwd
	if cwd == "" {
		cwd = home
		if _, err := os.Stat(cwd); err != nil {
			cwd = "/"
		}
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("exec: working directory %q does not exist", cwd))
		return
	}

	p, err := startProcess(a.reaper, bin, x, env, cwd, cred)
	if err != nil {
		respondErr(st, codeOf(err), fmt.Errorf("exec: %s: %w", x.Argv[0], err))
		return
	}
	r := &running{p: p}
	a.track(r)
	go a.supervise(r, x.Timeout)
	a.attach(st, r, &agentproto.Offsets{})
}

// attachOp re-attaches a stream to a command whose stream ended before its
// exit was acknowledged (the host parked the VM, or restarted): its output
// is replayed from the host's offsets (see agentproto.OutputLog), then the
// exit if it ended meanwhile.
func (a *Agent) attachOp(st io.ReadWriter, req agentproto.Request) {
	a.mu.Lock()
	r := a.running[req.PID]
	a.mu.Unlock()
	if r == nil {
		respondErr(st, agentproto.CodeNotFound, fmt.Errorf("attach: no command with pid %d", req.PID))
		return
	}
	a.attach(st, r, req.Offsets)
}

// running is a started command. Its output goes to its log (the last
// agentproto.MaxOutputLog bytes of each stream, at their offsets) and to
// the attached stream, if any; an attach replays the log from the host's
// offsets. The command never depends on a stream: it runs on when the
// host's connection ends, and once it ended it is kept until the host
// acknowledges its exit (or agentproto.KeptExits newer ones wait).
type running struct {
	p *process

	mu   sync.Mutex
	sink *frameWriter         // guarded by mu: the attached stream, nil while detached
	out  agentproto.OutputLog // guarded by mu
	exit *agentproto.Exit     // guarded by mu: set once the command ended and its output drained
	// endedAt is when exit was set, in Unix nanoseconds (0 while the
	// command runs), for keepExits, which must not take mu: an emit holds
	// it while it writes to a stream the host may not be reading.
	endedAt atomic.Int64
	exitTo  *frameWriter // guarded by mu: the stream that took the exit, awaiting its ack
}

func (r *running) emit(typ byte, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.out.Write(typ, data)
	if r.sink != nil {
		if r.sink.frame(typ, data) == nil {
			r.out.Sent(typ, end)
			return
		}
		r.sink = nil // the stream broke: the log keeps the output for the next attach
	}
}

func (a *Agent) track(r *running) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running == nil {
		a.running = map[int]*running{}
	}
	a.running[r.p.pid] = r
}

func (a *Agent) forget(r *running) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running[r.p.pid] == r {
		delete(a.running, r.p.pid)
	}
}

// keepExits forgets the commands that ended longest ago while more than
// agentproto.KeptExits wait for the host's acknowledgement (a host whose
// ack was cut, or that predates acks).
//
// It takes no command's mu under a.mu: an emit holds its command's mu
// while it writes to a stream the host is not reading (its window full),
// and every request that takes a.mu, a park's detach among them, would
// wait behind it (make soak saw a detach unanswered for 30 s).
func (a *Agent) keepExits() {
	a.mu.Lock()
	defer a.mu.Unlock()
	var exited []*running
	for _, r := range a.running {
		if r.endedAt.Load() != 0 {
			exited = append(exited, r)
		}
	}
	if len(exited) <= agentproto.KeptExits {
		return
	}
	slices.SortFunc(exited, func(x, y *running) int { return cmp.Compare(x.endedAt.Load(), y.endedAt.Load()) })
	for _, r := range exited[:len(exited)-agentproto.KeptExits] {
		delete(a.running, r.p.pid)
	}
}

// attach serves one stream for r: the PID, the output from the host's
// offsets (from; nil: what no stream took), then live output and input
// until the host acknowledges the exit or the stream ends.
func (a *Agent) attach(st io.ReadWriter, r *running, from *agentproto.Offsets) {
	fw := &frameWriter{w: st}
	r.mu.Lock()
	replay, lost, err := r.out.Replay(from)
	if err != nil {
		r.mu.Unlock()
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("attach: pid %d: %w", r.p.pid, err))
		return
	}
	resp := agentproto.Response{PID: r.p.pid}
	if lost != (agentproto.Offsets{}) {
		resp.Lost = &lost
	}
	if err := fw.json(agentproto.FrameResponse, resp); err != nil {
		r.mu.Unlock()
		return
	}
	for _, c := range replay {
		if fw.frame(c.Typ, c.Data) != nil {
			r.mu.Unlock()
			return
		}
		r.out.Sent(c.Typ, c.End)
	}
	if r.exit != nil {
		if fw.json(agentproto.FrameExit, *r.exit) != nil {
			r.mu.Unlock()
			return
		}
		r.exitTo = fw
	} else {
		r.sink = fw
	}
	r.mu.Unlock()

	if r.input(st, fw) {
		a.forget(r)
		return
	}
	// The stream ended first: detach; the command runs on, or its exit
	// waits for the next attach.
	r.mu.Lock()
	if r.sink == fw {
		r.sink = nil
	}
	r.mu.Unlock()
}

// input serves host → guest frames on a stream attached to r (stdin,
// resize, signals) until the host acknowledges the exit this stream took
// (true) or the stream ends (false).
func (r *running) input(st io.Reader, fw *frameWriter) bool {
	p := r.p
	buf := make([]byte, 0, 64<<10)
	for {
		typ, payload, err := agentproto.ReadFrame(st, buf)
		if err != nil {
			return false
		}
		switch typ {
		case agentproto.FrameStdin:
			if _, err := p.stdin.Write(payload); err != nil {
				p.closeStdin()
			}
		case agentproto.FrameStdinEOF:
			p.closeStdin()
		case agentproto.FrameResize:
			var sz agentproto.Size
			if json.Unmarshal(payload, &sz) == nil && p.tty != nil {
				_ = pty.Setsize(p.tty, &pty.Winsize{Rows: uint16(sz.Rows), Cols: uint16(sz.Cols)})
			}
		case agentproto.FrameSignal:
			r.mu.Lock()
			ended := r.exit != nil // its PID may be another process's now
			r.mu.Unlock()
			if len(payload) == 1 && !ended {
				p.signal(unix.Signal(payload[0]))
			}
		case agentproto.FrameExitAck:
			r.mu.Lock()
			took := r.exitTo == fw
			r.mu.Unlock()
			if took {
				return true
			}
		}
	}
}

// supervise runs a command's life: output to its log and stream, the
// timeout, the exit.
func (a *Agent) supervise(r *running, timeoutMillis int64) {
	p := r.p
	var timedOut atomic.Bool
	if timeoutMillis > 0 {
		t := time.AfterFunc(time.Duration(timeoutMillis)*time.Millisecond, func() {
			timedOut.Store(true)
			p.kill()
		})
		defer t.Stop()
	}
	var wg sync.WaitGroup
	read := make([]atomic.Bool, len(p.outputs)) // output i was read to its end
	for i, o := range p.outputs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer read[i].Store(true)
			buf := make([]byte, 32<<10)
			for {
				n, err := o.r.Read(buf)
				if n > 0 {
					r.emit(o.typ, buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
	ws := <-p.done
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	for waiting := true; waiting; {
		select {
		case <-drained:
			waiting = false
		case <-time.After(drainGrace):
			// A pipe no one writes to any more that is not read to its
			// end yet has a reader that has not run (a slow guest):
			// wait on. One still open for writing is a background
			// child's, which must not hold the exec.
			waiting = p.unreadEnd(read)
		}
	}
	p.closeOutputs()
	<-drained

	exit := agentproto.Exit{TimedOut: timedOut.Load()}
	switch {
	case ws.Exited():
		exit.Code = ws.ExitStatus()
	case ws.Signaled():
		exit.Signal = int(ws.Signal())
		exit.Code = 128 + int(ws.Signal())
	}
	// Bound the kept exits before the exit goes out: a host that read it
	// and attaches to the oldest at once finds that one already forgotten.
	r.endedAt.Store(time.Now().UnixNano())
	a.keepExits()
	r.mu.Lock()
	r.exit = &exit
	if r.sink != nil && r.sink.json(agentproto.FrameExit, exit) == nil {
		r.exitTo = r.sink // its attach forgets the command on the ack
	}
	r.sink = nil
	r.mu.Unlock()
}

type output struct {
	typ byte
	r   *os.File
}

type process struct {
	pid     int
	done    <-chan unix.WaitStatus
	stdin   *os.File
	tty     *os.File // pty master, when TTY
	outputs []output

	mu     sync.Mutex
	closed bool // guarded by mu: stdin closed
}

// startProcess starts bin; cred, if set, is the user it runs as (nil:
// the agent's, root).
func startProcess(r *reaper, bin string, x *agentproto.Exec, env []string, cwd string, cred *syscall.Credential) (*process, error) {
	p := &process{}
	attr := &syscall.ProcAttr{Dir: cwd, Env: env, Sys: &syscall.SysProcAttr{Credential: cred}}
	var childFiles []*os.File
	if x.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, err
		}
		if x.Rows > 0 && x.Cols > 0 {
			_ = pty.Setsize(master, &pty.Winsize{Rows: uint16(x.Rows), Cols: uint16(x.Cols)})
		}
		if cred != nil {
			// The terminal is its user's, as login makes it.
			_ = slave.Chown(int(cred.Uid), -1)
		}
		childFiles = []*os.File{slave}
		attr.Files = []uintptr{slave.Fd(), slave.Fd(), slave.Fd()}
		attr.Sys.Setsid = true
		attr.Sys.Setctty = true
		attr.Sys.Ctty = 0
		p.tty = master
		p.stdin = master
		p.outputs = []output{{agentproto.FrameStdout, master}}
	} else {
		inR, inW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		childFiles = []*os.File{inR, outW, errW}
		attr.Files = []uintptr{inR.Fd(), outW.Fd(), errW.Fd()}
		attr.Sys.Setpgid = true
		p.stdin = inW
		p.outputs = []output{{agentproto.FrameStdout, outR}, {agentproto.FrameStderr, errR}}
	}
	pid, done, err := r.start(bin, x.Argv, attr)
	for _, f := range childFiles {
		f.Close()
	}
	if err != nil {
		p.stdin.Close()
		for _, o := range p.outputs {
			o.r.Close()
		}
		return nil, err
	}
	p.pid, p.done = pid, done
	return p, nil
}

func (p *process) closeStdin() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.tty != nil {
		// A PTY's master is also its output: closing it would cut the
		// output. EOF on a terminal is the EOF character.
		if !p.closed && p.tty != nil {
			_, _ = p.tty.Write([]byte{4})
		}
		p.closed = true
		return
	}
	p.closed = true
	p.stdin.Close()
}

// unreadEnd reports whether an output pipe that is not read to its end
// (read[i] false) has no writer left: its end is there to be read.
func (p *process) unreadEnd(read []atomic.Bool) bool {
	for i, o := range p.outputs {
		if read[i].Load() {
			continue
		}
		rc, err := o.r.SyscallConn()
		if err != nil {
			continue
		}
		hungUp := false
		_ = rc.Control(func(fd uintptr) {
			ev, err := pollNow(int(fd))
			hungUp = err == nil && ev&unix.POLLHUP != 0
		})
		if hungUp {
			return true
		}
	}
	return false
}

func (p *process) closeOutputs() {
	for _, o := range p.outputs {
		o.r.Close()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && p.tty == nil {
		p.stdin.Close()
	}
	p.closed = true
}

// signal signals the command's process group (its session for a TTY).
func (p *process) signal(sig unix.Signal) {
	if err := unix.Kill(-p.pid, sig); err != nil {
		_ = unix.Kill(p.pid, sig)
	}
}

func (p *process) kill() { p.signal(unix.SIGKILL) }
