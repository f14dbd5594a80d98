package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
)

// Process is one command running in a guest.
type Process interface {
	// Stdin is the command's standard input; Close sends EOF.
	Stdin() io.WriteCloser
	// Stdout and Stderr are the command's output streams; with a TTY all
	// output arrives on Stdout and Stderr is at EOF at once. Both must be
	// read (or the command stalls once the transport's window fills).
	Stdout() io.Reader
	Stderr() io.Reader
	Resize(rows, cols int) error
	// Signal sends a signal by name ("INT", "TERM", "KILL", …).
	Signal(name string) error
	// Wait blocks until the command exits and its output is drained.
	Wait() (api.ExitStatus, error)
}

// guestErr turns an agent error into an API error. What names the
// operation for messages.
func guestErr(id, what string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return err // the session's state said it already (parked, failed, gone)
	}
	var re *agentproto.RemoteError
	if errors.As(err, &re) {
		switch re.Code {
		case agentproto.CodeNotFound:
			return api.Errorf(api.CodeNotFound, "%s", re.Message)
		case agentproto.CodeInvalid, agentproto.CodeExists:
			return api.Errorf(api.CodeInvalid, "%s", re.Message)
		case agentproto.CodeNoSpace:
			return api.Errorf(api.CodeInsufficientStorage, "session %s: %s", id, re.Message)
		default:
			return api.Errorf(api.CodeInternal, "%s: %s", what, re.Message)
		}
	}
	if errors.Is(err, agentproto.ErrNoAnswer) {
		return api.Errorf(api.CodeTimeout, "session %s: %s: %v", id, what, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("session %s: %s: %w", id, what, err)
	}
	return api.Errorf(api.CodeUnavailable, "session %s: %s: guest agent not answering (%v)", id, what, err)
}

// Exec starts a command in the session's guest.
func (m *Manager) Exec(ctx context.Context, id string, req api.ExecRequest) (Process, error) {
	x := agentproto.Exec{Argv: req.Argv, Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols, User: req.User}
	if x.User == "root" {
		x.User = "" // what every agent runs as, those before users too
	}
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 {
			return nil, api.Errorf(api.CodeInvalid, "timeout %q: want a positive duration like 30s", req.Timeout)
		}
		x.Timeout = d.Milliseconds()
	}
	var (
		l *live
		p *agentproto.Process
	)
	err := m.withAgent(ctx, id, func(al *live) (bool, error) {
		if err := CheckExec(req, al.env); err != nil {
			return false, err
		}
		if x.User != "" && !al.client().Can(agentproto.FeatureExecUser) {
			// It would run the command as root.
			return false, api.Errorf(api.CodeConflict, "session %s: its guest agent predates running a command as a user (%q): restart the session to run one", id, x.User)
		}
		x.Env = envList(al.env, req.Env)
		al.inflight.Add(1)
		var err error
		if p, err = al.client().Exec(ctx, x); err != nil {
			al.release()
			// Sent again only if it never left: a command must not
			// run twice.
			return errors.Is(err, yamux.ErrSessionShutdown), err
		}
		l = al
		return false, nil
	})
	if err != nil {
		var re *agentproto.RemoteError
		if errors.As(err, &re) && re.Code == agentproto.CodeNotFound {
			// A missing executable is the request's fault, not a missing
			// resource of the API.
			return nil, api.Errorf(api.CodeInvalid, "%s", re.Message)
		}
		return nil, guestErr(id, "exec", err)
	}
	proc := &process{m: m, id: id, pid: p.PID, cur: p, l: l, done: make(chan struct{}), gone: ctx.Done(), rollbacks: m.rollbackGen(id),
		pace: rate.NewLimiter(execOutputRate, execOutputBurst)}
	proc.stdoutR, proc.stdoutW = io.Pipe()
	proc.stderrR, proc.stderrW = io.Pipe()
	go proc.pump(ctx)
	return proc, nil
}

// Attach attaches to a command running in the session's guest whose
// stream was cut before its exit was read, by its guest pid: a command
// started by Exec through a server that has since restarted (a process
// outlives the host's connection; the agent keeps its output and exit).
// The output the guest kept (the last agentproto.MaxOutputLog bytes of
// each stream) is replayed first, then the rest and the exit. An
// unknown pid is CodeNotFound. Another Process still attached to the
// command loses it to this one.
func (m *Manager) Attach(ctx context.Context, id string, pid int) (Process, error) {
	var (
		l *live
		p *agentproto.Process
	)
	err := m.withAgent(ctx, id, func(al *live) (bool, error) {
		al.inflight.Add(1)
		var err error
		if p, err = al.client().AttachAt(ctx, pid, agentproto.Offsets{}); err != nil {
			al.release()
			return errors.Is(err, yamux.ErrSessionShutdown), err
		}
		l = al
		return false, nil
	})
	if err != nil {
		return nil, guestErr(id, "attach", err)
	}
	proc := &process{m: m, id: id, pid: pid, cur: p, l: l, done: make(chan struct{}), gone: ctx.Done(), rollbacks: m.rollbackGen(id),
		pace: rate.NewLimiter(execOutputRate, execOutputBurst)}
	// The replay starts where the guest's log does: what it no longer
	// kept counts as received, and, unlike a gap after a park, is not
	// news (this caller never had a stream of it).
	proc.recv = p.Lost
	proc.stdoutR, proc.stdoutW = io.Pipe()
	proc.stderrR, proc.stderrW = io.Pipe()
	go proc.pump(ctx)
	return proc, nil
}

// A command's output is relayed at up to execOutputRate: a guest that
// floods its output (26 MiB/s of yes, relayed as NDJSON) would otherwise
// take the host's CPU from its neighbours; past the rate the command's
// writes wait in the guest.
const (
	execOutputRate  = 8 << 20 // bytes per second
	execOutputBurst = 1 << 20
)

// paced writes to w no faster than its limiter allows.
type paced struct {
	w   io.Writer
	lim *rate.Limiter
}

func (p paced) Write(b []byte) (int, error) {
	for rest := b; len(rest) > 0; {
		n := min(len(rest), p.lim.Burst())
		_ = p.lim.WaitN(context.Background(), n)
		rest = rest[n:]
	}
	return p.w.Write(b)
}

// counted counts the bytes written through it into *n.
type counted struct {
	w io.Writer
	n *int64
}

func (c counted) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	*c.n += int64(n)
	return n, err
}

// process is a command in a guest, as the API sees it. Its streams outlive
// the agent connection they started on: when the session is parked the
// command runs on in the frozen guest, and after the wake process
// re-attaches to it, so a client attached to a PTY sees a pause, not an
// end. process counts the output it received and the re-attach resumes
// from those offsets: the guest replays what a cut kept from the host,
// and nothing twice (see agentproto.OutputLog); the exit is acknowledged
// once read, and the guest keeps it until then.
type process struct {
	m   *Manager
	id  string // the session
	pid int    // in the guest
	// rollbacks is the session's rollback count when the command started
	// (see Manager.rolledBack): after a rollback its stream ends.
	rollbacks int

	mu  sync.Mutex
	cur *agentproto.Process // guarded by mu: the current attachment
	l   *live               // guarded by mu: the VM it is attached through

	stdoutR, stderrR *io.PipeReader
	stdoutW, stderrW *io.PipeWriter

	// recv counts the bytes of stdout and stderr received over all
	// attachments (and those the guest no longer had on a re-attach);
	// only pump and its copies use it.
	recv agentproto.Offsets

	pace   *rate.Limiter   // the output's relay rate (see execOutputRate)
	gone   <-chan struct{} // the caller's context ended
	done   chan struct{}   // closed when the command ended (or was lost)
	status api.ExitStatus  // set before done closes
	err    error           // set before done closes
}

func (p *process) current() (*agentproto.Process, *live) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur, p.l
}

// pump copies the command's output to the API's streams until it exits,
// re-attaching after a park and wake.
func (p *process) pump(ctx context.Context) {
	defer close(p.done)
	for {
		cur, l := p.current()
		var wg sync.WaitGroup
		relay := func(w *io.PipeWriter, n *int64, r io.Reader) {
			wg.Go(func() { _, _ = io.Copy(counted{paced{w, p.pace}, n}, r) })
		}
		relay(p.stdoutW, &p.recv.Stdout, cur.Stdout())
		relay(p.stderrW, &p.recv.Stderr, cur.Stderr())
		wg.Wait()
		exit, err := cur.Wait()
		if err == nil {
			p.status = api.ExitStatus{Code: exit.Code, TimedOut: exit.TimedOut}
			if exit.Signal > 0 {
				p.status.Signal = strings.TrimPrefix(unix.SignalName(unix.Signal(exit.Signal)), "SIG")
			}
			p.end(l, nil)
			return
		}
		// The stream ended before the command: a park, a rollback, or the
		// VM is gone.
		if name, ok := p.m.rolledBack(p.id, p.rollbacks); ok {
			p.end(l, api.Errorf(api.CodeConflict, "exec: session %s was rolled back to checkpoint %s: this command's stream ends", p.id, name))
			return
		}
		next, nl, aerr := p.reattach(ctx)
		if aerr != nil {
			code := api.CodeUnavailable
			if c := api.CodeOf(aerr); c == api.CodeNotFound || c == api.CodeConflict {
				code = c // removed, or failed, meanwhile
			}
			p.end(l, api.Errorf(code, "exec: lost the guest before the command ended: %v", aerr))
			return
		}
		nl.inflight.Add(1)
		p.mu.Lock()
		p.cur, p.l = next, nl
		p.mu.Unlock()
		l.release()
		p.noteLost(next.Lost)
	}
}

// noteLost counts the output a re-attach skipped because the guest no
// longer had it, and says so on the command's stderr: a gap is never
// silent.
func (p *process) noteLost(lost agentproto.Offsets) {
	if lost == (agentproto.Offsets{}) {
		return
	}
	p.recv.Stdout += lost.Stdout
	p.recv.Stderr += lost.Stderr
	var what []string
	if lost.Stdout > 0 {
		what = append(what, fmt.Sprintf("%d bytes of stdout", lost.Stdout))
	}
	if lost.Stderr > 0 {
		what = append(what, fmt.Sprintf("%d bytes of stderr", lost.Stderr))
	}
	_, _ = fmt.Fprintf(p.stderrW, "\n[cove: %s lost: written while a park had cut the command's stream, beyond the last %d KiB of each stream that the guest keeps]\n",
		strings.Join(what, " and "), agentproto.MaxOutputLog>>10)
}

// reattach waits for the session to run again and re-attaches to the
// command.
func (p *process) reattach(ctx context.Context) (*agentproto.Process, *live, error) {
	for {
		l, err := p.m.waitRunning(ctx, p.id)
		if err != nil {
			return nil, nil, err
		}
		np, err := l.client().AttachAt(ctx, p.pid, p.recv)
		if err == nil {
			return np, l, nil
		}
		var re *agentproto.RemoteError
		if errors.As(err, &re) || ctx.Err() != nil {
			return nil, nil, err // the guest no longer knows the command
		}
		// The connection went again (parked once more, or lost and being
		// connected again): wait anew.
		select {
		case <-ctx.Done():
			return nil, nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *process) end(l *live, err error) {
	p.err = err
	if err != nil {
		p.stdoutW.CloseWithError(err)
		p.stderrW.CloseWithError(err)
	} else {
		p.stdoutW.Close()
		p.stderrW.Close()
	}
	l.release()
}

// do runs f on the current attachment; if that fails because the stream
// is gone (a park), it wakes the session (auto-wake), waits for the
// re-attach and tries once more.
func (p *process) do(f func(*agentproto.Process) error) error {
	cur, _ := p.current()
	err := f(cur)
	if err == nil {
		return nil
	}
	select {
	case <-p.done:
		return err
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.m.cfg.DefaultBootTimeout)
	defer cancel()
	if _, werr := p.m.agent(ctx, p.id); werr != nil {
		return werr
	}
	for {
		next, _ := p.current()
		if next != cur {
			return f(next)
		}
		select {
		case <-p.done:
			return err
		case <-p.gone:
			return err
		case <-ctx.Done():
			return err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (p *process) Stdin() io.WriteCloser { return stdin{p} }
func (p *process) Stdout() io.Reader     { return p.stdoutR }
func (p *process) Stderr() io.Reader     { return p.stderrR }

func (p *process) Resize(rows, cols int) error {
	if rows <= 0 || cols <= 0 || rows > 10000 || cols > 10000 {
		return api.Errorf(api.CodeInvalid, "resize %dx%d: rows and cols must be 1..10000", rows, cols)
	}
	return p.do(func(c *agentproto.Process) error { return c.Resize(rows, cols) })
}

func (p *process) Signal(name string) error {
	sig := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG"))
	if sig == 0 {
		return api.Errorf(api.CodeInvalid, "unknown signal %q", name)
	}
	return p.do(func(c *agentproto.Process) error { return c.Signal(int(sig)) })
}

// PID is the command's process id in the guest: what the guest's own
// tools (ps, kill) call it. It stays the same across a park and wake.
func (p *process) PID() int { return p.pid }

func (p *process) Wait() (api.ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

type stdin struct{ p *process }

func (s stdin) Write(b []byte) (int, error) {
	err := s.p.do(func(c *agentproto.Process) error { _, err := c.Write(b); return err })
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

func (s stdin) Close() error {
	return s.p.do(func(c *agentproto.Process) error { return c.CloseStdin() })
}

// withAgent runs f against the session's agent (waking a parked session
// first, see agent). A call that failed because the connection was taken
// away under it (a park, a reconnect) before it could have done anything
// is run once more on the session's next connection, which waits for the
// park and wakes it: callers see a pause, not an error. f reports whether
// it may be retried (it sent no body yet).
//
// While f runs the call is counted in l.calls, taken under the manager's
// lock with the check that the session is not being parked or removed: a
// park waits for the calls counted (see Park), so a call never loses its
// connection to a park; one that loses it to a removal is told so (404 or
// 409, not a guest error).
func (m *Manager) withAgent(ctx context.Context, id string, f func(l *live) (retry bool, err error)) error {
	for try := 0; ; try++ {
		l, err := m.agent(ctx, id)
		if err != nil {
			return err
		}
		m.mu.Lock()
		moved := l.deleting || m.live[id] != l
		if !moved {
			l.calls.Add(1)
		}
		m.mu.Unlock()
		if moved {
			if try > 3 {
				return api.Errorf(api.CodeConflict, "session %s is being parked or removed", id)
			}
			continue // agent waits for the park now
		}
		c := l.client()
		retry, err := f(l)
		l.calls.Add(-1)
		if err == nil || ctx.Err() != nil {
			return err
		}
		var re *agentproto.RemoteError
		if errors.As(err, &re) || errors.Is(err, agentproto.ErrNoAnswer) {
			return err
		}
		m.mu.Lock()
		moved = l.deleting || m.live[id] != l
		m.mu.Unlock()
		if !moved && l.client() == c {
			return err // the connection itself is the problem, not a park
		}
		if gone := m.goneErr(ctx, id); gone != nil {
			return gone
		}
		if try > 0 || !retry {
			return err
		}
	}
}

// goneErr is the API's error for a session whose connection went because
// it is being removed (or failed) meanwhile, or nil.
func (m *Manager) goneErr(ctx context.Context, id string) error {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return api.Errorf(api.CodeNotFound, "session %q not found (removed meanwhile)", id)
	case err != nil:
		return nil
	case cannotServe(rec.State):
		return api.Errorf(api.CodeConflict, "session %s is %s", id, rec.State)
	}
	return nil
}

// Open streams a regular file from the guest.
func (m *Manager) Open(ctx context.Context, id, path string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		l.inflight.Add(1)
		r, err := l.client().Read(ctx, path)
		if err != nil {
			l.release()
			return true, err
		}
		l.calls.Add(1) // until the download is closed
		rc = &releasing{ReadCloser: r, m: m, l: l, id: id, what: "read " + path}
		return false, nil
	})
	if err != nil {
		return nil, guestErr(id, "read "+path, err)
	}
	return rc, nil
}

// counting counts the bytes read through it: a body not read yet can be
// sent again.
type counting struct {
	io.Reader
	n int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.Reader.Read(p)
	c.n += int64(n)
	return n, err
}

// WriteFile writes a regular file in the guest.
func (m *Manager) WriteFile(ctx context.Context, id, path string, mode uint32, r io.Reader) error {
	body := &counting{Reader: r}
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		l.inflight.Add(1)
		defer l.release()
		return body.n == 0, l.client().Write(ctx, path, mode, body)
	})
	if err != nil {
		return guestErr(id, "write "+path, err)
	}
	return nil
}

// Stat describes a guest path.
func (m *Manager) Stat(ctx context.Context, id, path string) (api.FileInfo, error) {
	var fi agentproto.FileInfo
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		var err error
		fi, err = l.client().Stat(ctx, path)
		return true, err
	})
	if err != nil {
		return api.FileInfo{}, guestErr(id, "stat "+path, err)
	}
	return fileInfo(fi), nil
}

func fileInfo(fi agentproto.FileInfo) api.FileInfo {
	return api.FileInfo{Name: fi.Name, Size: fi.Size, Mode: fi.Mode, IsDir: fi.IsDir, Symlink: fi.Symlink, ModTime: fi.ModTime, UID: fi.UID, GID: fi.GID}
}

// ListDir lists a guest directory.
func (m *Manager) ListDir(ctx context.Context, id, path string) ([]api.FileInfo, error) {
	var fis []agentproto.FileInfo
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		var err error
		fis, err = l.client().List(ctx, path)
		return true, err
	})
	if err != nil {
		return nil, guestErr(id, "list "+path, err)
	}
	out := make([]api.FileInfo, 0, len(fis))
	for _, fi := range fis {
		out = append(out, fileInfo(fi))
	}
	return out, nil
}

// Mkdir creates a guest directory and its parents.
func (m *Manager) Mkdir(ctx context.Context, id, path string) error {
	err := m.withAgent(ctx, id, func(l *live) (bool, error) { return true, l.client().Mkdir(ctx, path) })
	if err != nil {
		return guestErr(id, "mkdir "+path, err)
	}
	return nil
}

// Remove removes a guest path recursively.
func (m *Manager) Remove(ctx context.Context, id, path string) error {
	err := m.withAgent(ctx, id, func(l *live) (bool, error) { return true, l.client().Remove(ctx, path) })
	if err != nil {
		return guestErr(id, "remove "+path, err)
	}
	return nil
}

// GetTar streams a tar archive of a guest path.
func (m *Manager) GetTar(ctx context.Context, id, path string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		l.inflight.Add(1)
		r, err := l.client().TarGet(ctx, path)
		if err != nil {
			l.release()
			return true, err
		}
		l.calls.Add(1) // until the download is closed
		rc = &releasing{ReadCloser: r, m: m, l: l, id: id, what: "tar " + path}
		return false, nil
	})
	if err != nil {
		return nil, guestErr(id, "tar "+path, err)
	}
	return rc, nil
}

// PutTar extracts a tar archive into a guest directory.
func (m *Manager) PutTar(ctx context.Context, id, dir string, r io.Reader) error {
	body := &counting{Reader: r}
	err := m.withAgent(ctx, id, func(l *live) (bool, error) {
		l.inflight.Add(1)
		defer l.release()
		return body.n == 0, l.client().TarPut(ctx, dir, body)
	})
	if err != nil {
		return guestErr(id, "untar into "+dir, err)
	}
	return nil
}

// releasing ends a streaming call's activity when the stream is closed,
// and turns a stream cut short into the API's error.
type releasing struct {
	io.ReadCloser
	m        *Manager
	l        *live
	id, what string
	once     sync.Once
}

func (r *releasing) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		// Cut by a removal (or a failure) of the session meanwhile: say
		// that, not that the guest stopped answering.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		gone := r.m.goneErr(ctx, r.id)
		cancel()
		if gone != nil {
			err = gone
		} else {
			err = guestErr(r.id, r.what, err)
		}
	}
	return n, err
}

func (r *releasing) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(func() {
		r.l.calls.Add(-1)
		r.l.release()
	})
	return err
}
