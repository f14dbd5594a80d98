package session_test

import (
	"context"
	"io"
	"testing"

	"github.com/cove-dev/cove/api"
)

// TestFakeAttachByPID: a command whose caller went (a restarted server's)
// is attached to again by its guest pid: stdin reaches it, its output and
// its end come through the new Process; an unknown pid is not found.
func TestFakeAttachByPID(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	id := r.create(api.CreateSessionRequest{}).ID
	first, cancel := context.WithCancel(context.Background())
	p, err := r.mgr.Exec(first, id, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.(interface{ PID() int }).PID()
	cancel() // the caller goes; the command runs on in the guest
	_, _ = p.Wait()

	ctx := context.Background()
	if _, err := r.mgr.Attach(ctx, id, pid+1000); api.CodeOf(err) != api.CodeNotFound {
		t.Fatalf("attach to an unknown pid: %v, want not found", err)
	}
	q, err := r.mgr.Attach(ctx, id, pid)
	if err != nil {
		t.Fatalf("attach to pid %d: %v", pid, err)
	}
	if got := q.(interface{ PID() int }).PID(); got != pid {
		t.Errorf("attached pid %d, want %d", got, pid)
	}
	errOut := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(q.Stderr()); errOut <- b }()
	if _, err := io.WriteString(q.Stdin(), "again\n"); err != nil {
		t.Fatal(err)
	}
	if err := q.Stdin().Close(); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(q.Stdout())
	if err != nil || string(out) != "again\n" {
		t.Errorf("stdout after the attach: %q, %v; want the input echoed", out, err)
	}
	st, err := q.Wait()
	if err != nil || st.Code != 0 {
		t.Errorf("exit after the attach: %+v, %v; want 0 (cat at EOF)", st, err)
	}
	if b := <-errOut; len(b) != 0 {
		t.Errorf("stderr: %q", b)
	}
}
