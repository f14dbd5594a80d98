package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
)

// maxBufferedOutput is how much of each of stdout and stderr the buffered
// exec form keeps.
const maxBufferedOutput = 16 << 20

// chunkSize is the most output one stream event carries.
const chunkSize = 32 << 10

// exec serves POST /v1/sessions/{id}/exec, buffered or, with
// Accept: application/x-ndjson, streamed.
func (s *Server) exec(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := validateExec(req); err != nil {
		return err
	}
	id := r.PathValue("id")
	act := execAction(id, req)
	if err := s.decide(r.Context(), act); err != nil {
		return err
	}
	liftDeadlines(w)
	ctx := r.Context()
	start := time.Now()
	proc, err := s.sessions.Exec(ctx, id, req)
	if err != nil {
		s.outcome(ctx, act, execOutcome(ExitStatus{}, err, start))
		return err
	}
	proc = &auditedProcess{Process: proc, done: func(st ExitStatus, err error) {
		s.outcome(ctx, act, execOutcome(st, err, start))
	}}
	defer func() { s.metrics.exec.Observe(time.Since(start).Seconds()) }()
	// The client going away kills the command (ctx, which the session
	// manager also watches, is the request's).
	stop := context.AfterFunc(ctx, func() { _ = proc.Signal("KILL") })
	defer stop()
	go func() {
		in := proc.Stdin()
		if len(req.Stdin) > 0 {
			_, _ = in.Write(req.Stdin)
		}
		_ = in.Close()
	}()

	if accepts(r, "application/x-ndjson") {
		return s.execStream(w, r, proc)
	}
	return s.execBuffered(w, proc, start)
}

// execAction is the second decision of an exec: with its command line
// (never empty: validateExec requires a command).
func execAction(id string, req api.ExecRequest) Action {
	return Action{Verb: "session.exec", SessionID: id, Argv: req.Argv, Cwd: req.Cwd, TTY: req.TTY}
}

// auditedProcess records the command's end in the audit log when Wait
// returns it.
type auditedProcess struct {
	Process
	done func(ExitStatus, error)
}

func (p *auditedProcess) Wait() (ExitStatus, error) {
	st, err := p.Process.Wait()
	p.done(st, err)
	return st, err
}

func (s *Server) execBuffered(w http.ResponseWriter, proc Process, start time.Time) error {
	stdout := &capBuffer{max: maxBufferedOutput}
	stderr := &capBuffer{max: maxBufferedOutput}
	var wg sync.WaitGroup
	var outErr, errErr error
	wg.Go(func() { _, outErr = io.Copy(stdout, proc.Stdout()) })
	wg.Go(func() { _, errErr = io.Copy(stderr, proc.Stderr()) })
	wg.Wait()
	st, err := proc.Wait()
	if err != nil {
		return fmt.Errorf("exec: wait: %w", err)
	}
	if err := errors.Join(outErr, errErr); err != nil {
		return fmt.Errorf("exec: read output: %w", err)
	}
	return writeJSON(w, http.StatusOK, api.ExecResult{
		ExitCode:   st.Code,
		Stdout:     stdout.bytes(),
		Stderr:     stderr.bytes(),
		Signal:     st.Signal,
		TimedOut:   st.TimedOut,
		Truncated:  stdout.truncated || stderr.truncated,
		DurationMs: time.Since(start).Milliseconds(),
	})
}

func (s *Server) execStream(w http.ResponseWriter, r *http.Request, proc Process) error {
	out := startNDJSON(w)
	defer out.close()
	send := func(ev api.ExecEvent) error { return out.send(ev) }
	var wg sync.WaitGroup
	wg.Go(func() { pumpOutput(proc.Stdout(), api.EventStdout, send) })
	wg.Go(func() { pumpOutput(proc.Stderr(), api.EventStderr, send) })
	wg.Wait()
	st, err := proc.Wait()
	if err != nil {
		err = fmt.Errorf("exec: wait: %w", err)
		_ = out.send(api.ExecEvent{Type: api.EventError, Error: ptr(s.errorBody(r.Context(), "session.exec", err))})
		return reported(err)
	}
	return reported(out.send(exitEvent(st)))
}

// pumpOutput sends r's content as events of type typ until EOF. When a send
// fails (the client is gone) it keeps reading, so that the command never
// blocks on a full pipe.
func pumpOutput(r io.Reader, typ string, send func(api.ExecEvent) error) {
	buf := make([]byte, chunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			// Data is encoded before send returns, so buf can be reused.
			if send(api.ExecEvent{Type: typ, Data: buf[:n]}) != nil {
				_, _ = io.Copy(io.Discard, r)
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func exitEvent(st ExitStatus) api.ExecEvent {
	return api.ExecEvent{Type: api.EventExit, ExitCode: st.Code, Signal: st.Signal, TimedOut: st.TimedOut}
}

func ptr[T any](v T) *T { return &v }

// capBuffer keeps the first max bytes written to it and counts the rest
// away; it never fails, so a copy into it drains its source.
type capBuffer struct {
	max       int
	buf       []byte
	truncated bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := b.max - len(b.buf); room < len(p) {
		b.buf = append(b.buf, p[:max(room, 0)]...)
		b.truncated = true
	} else {
		b.buf = append(b.buf, p...)
	}
	return len(p), nil
}

// bytes returns what was kept, never nil (so JSON says "" not null).
func (b *capBuffer) bytes() []byte {
	if b.buf == nil {
		return []byte{}
	}
	return b.buf
}
