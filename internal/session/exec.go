package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
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
	var re *agentproto.RemoteError
	if errors.As(err, &re) {
		switch re.Code {
		case agentproto.CodeNotFound:
			return api.Errorf(api.CodeNotFound, "%s", re.Message)
		case agentproto.CodeInvalid, agentproto.CodeExists:
			return api.Errorf(api.CodeInvalid, "%s", re.Message)
		default:
			return api.Errorf(api.CodeInternal, "%s: %s", what, re.Message)
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("session %s: %s: %w", id, what, err)
	}
	return api.Errorf(api.CodeUnavailable, "session %s: %s: guest agent not answering (%v)", id, what, err)
}

// Exec starts a command in the session's guest.
func (m *Manager) Exec(ctx context.Context, id string, req api.ExecRequest) (Process, error) {
	l, err := m.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	x := agentproto.Exec{Argv: req.Argv, Env: envList(l.env, req.Env), Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols}
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 {
			return nil, api.Errorf(api.CodeInvalid, "timeout %q: want a positive duration like 30s", req.Timeout)
		}
		x.Timeout = d.Milliseconds()
	}
	l.inflight.Add(1)
	p, err := l.agent.Exec(ctx, x)
	if err != nil {
		l.release()
		var re *agentproto.RemoteError
		if errors.As(err, &re) && re.Code == agentproto.CodeNotFound {
			// A missing executable is the request's fault, not a missing
			// resource of the API.
			return nil, api.Errorf(api.CodeInvalid, "%s", re.Message)
		}
		return nil, guestErr(id, "exec", err)
	}
	return &process{p: p, l: l}, nil
}

type process struct {
	p    *agentproto.Process
	l    *live
	once sync.Once
}

func (p *process) Stdin() io.WriteCloser { return stdin{p.p} }
func (p *process) Stdout() io.Reader     { return p.p.Stdout() }
func (p *process) Stderr() io.Reader     { return p.p.Stderr() }

func (p *process) Resize(rows, cols int) error {
	if rows <= 0 || cols <= 0 || rows > 10000 || cols > 10000 {
		return api.Errorf(api.CodeInvalid, "resize %dx%d: rows and cols must be 1..10000", rows, cols)
	}
	return p.p.Resize(rows, cols)
}

func (p *process) Signal(name string) error {
	sig := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG"))
	if sig == 0 {
		return api.Errorf(api.CodeInvalid, "unknown signal %q", name)
	}
	return p.p.Signal(int(sig))
}

func (p *process) Wait() (api.ExitStatus, error) {
	exit, err := p.p.Wait()
	p.once.Do(p.l.release)
	if err != nil {
		return api.ExitStatus{}, api.Errorf(api.CodeUnavailable, "exec: lost the guest before the command ended: %v", err)
	}
	st := api.ExitStatus{Code: exit.Code, TimedOut: exit.TimedOut}
	if exit.Signal > 0 {
		st.Signal = strings.TrimPrefix(unix.SignalName(unix.Signal(exit.Signal)), "SIG")
	}
	return st, nil
}

type stdin struct{ p *agentproto.Process }

func (s stdin) Write(b []byte) (int, error) { return s.p.Write(b) }
func (s stdin) Close() error                { return s.p.CloseStdin() }

// Open streams a regular file from the guest.
func (m *Manager) Open(ctx context.Context, id, path string) (io.ReadCloser, error) {
	l, err := m.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	l.inflight.Add(1)
	r, err := l.agent.Read(ctx, path)
	if err != nil {
		l.release()
		return nil, guestErr(id, "read "+path, err)
	}
	return &releasing{ReadCloser: r, l: l}, nil
}

// WriteFile writes a regular file in the guest.
func (m *Manager) WriteFile(ctx context.Context, id, path string, mode uint32, r io.Reader) error {
	l, err := m.agent(ctx, id)
	if err != nil {
		return err
	}
	l.inflight.Add(1)
	defer l.release()
	if err := l.agent.Write(ctx, path, mode, r); err != nil {
		return guestErr(id, "write "+path, err)
	}
	return nil
}

// Stat describes a guest path.
func (m *Manager) Stat(ctx context.Context, id, path string) (api.FileInfo, error) {
	l, err := m.agent(ctx, id)
	if err != nil {
		return api.FileInfo{}, err
	}
	fi, err := l.agent.Stat(ctx, path)
	if err != nil {
		return api.FileInfo{}, guestErr(id, "stat "+path, err)
	}
	return fileInfo(fi), nil
}

func fileInfo(fi agentproto.FileInfo) api.FileInfo {
	return api.FileInfo{Name: fi.Name, Size: fi.Size, Mode: fi.Mode, IsDir: fi.IsDir, Symlink: fi.Symlink, ModTime: fi.ModTime}
}

// ListDir lists a guest directory.
func (m *Manager) ListDir(ctx context.Context, id, path string) ([]api.FileInfo, error) {
	l, err := m.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	fis, err := l.agent.List(ctx, path)
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
	l, err := m.agent(ctx, id)
	if err != nil {
		return err
	}
	if err := l.agent.Mkdir(ctx, path); err != nil {
		return guestErr(id, "mkdir "+path, err)
	}
	return nil
}

// Remove removes a guest path recursively.
func (m *Manager) Remove(ctx context.Context, id, path string) error {
	l, err := m.agent(ctx, id)
	if err != nil {
		return err
	}
	if err := l.agent.Remove(ctx, path); err != nil {
		return guestErr(id, "remove "+path, err)
	}
	return nil
}

// GetTar streams a tar archive of a guest path.
func (m *Manager) GetTar(ctx context.Context, id, path string) (io.ReadCloser, error) {
	l, err := m.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	l.inflight.Add(1)
	r, err := l.agent.TarGet(ctx, path)
	if err != nil {
		l.release()
		return nil, guestErr(id, "tar "+path, err)
	}
	return &releasing{ReadCloser: r, l: l}, nil
}

// PutTar extracts a tar archive into a guest directory.
func (m *Manager) PutTar(ctx context.Context, id, dir string, r io.Reader) error {
	l, err := m.agent(ctx, id)
	if err != nil {
		return err
	}
	l.inflight.Add(1)
	defer l.release()
	if err := l.agent.TarPut(ctx, dir, r); err != nil {
		return guestErr(id, "untar into "+dir, err)
	}
	return nil
}

// releasing ends a streaming call's activity when the stream is closed.
type releasing struct {
	io.ReadCloser
	l    *live
	once sync.Once
}

func (r *releasing) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.l.release)
	return err
}
