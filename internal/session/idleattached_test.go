package session_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// TestFakeIdleParkingSkipsWhatIsAttached: past its idle timeout a session
// is not parked while something is attached to it: a terminal (an exec
// with a PTY, silent), a download held open, an upload whose body is
// still coming. An idle neighbour parks
// meanwhile; each busy one parks once what held it ends.
func TestFakeIdleParkingSkipsWhatIsAttached(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	r := newFakeRigWith(t, func(c *session.Config) { c.DefaultIdleTimeout = idle })
	ctx := context.Background()
	pty, down, up, idler := r.create(api.CreateSessionRequest{}).ID, r.create(api.CreateSessionRequest{}).ID,
		r.create(api.CreateSessionRequest{}).ID, r.create(api.CreateSessionRequest{}).ID
	r.write(down, "/root/big", strings.Repeat("x", 1<<20))

	// A terminal whose command waits for its input, writing nothing.
	p, err := r.mgr.Exec(ctx, pty, api.ExecRequest{Argv: []string{"cat"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, p.Stdout()) }()
	go func() { _, _ = io.Copy(io.Discard, p.Stderr()) }()
	// A download of which one byte is read, then nothing.
	rc, err := r.mgr.Open(ctx, down, "/root/big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// An upload whose body has begun and not ended.
	body, feed := io.Pipe()
	uploaded := make(chan error, 1)
	go func() { uploaded <- r.mgr.WriteFile(ctx, up, "/root/up", 0o644, body) }()
	if _, err := feed.Write([]byte("first part ")); err != nil {
		t.Fatal(err)
	}

	r.eventually("the idle neighbour parks", func() bool { return r.get(idler).State == api.StateParked })
	time.Sleep(2 * idle) // more ticks of the idle loop, every one past the timeout
	for _, id := range []string{pty, down, up} {
		r.wantState(id, api.StateRunning, "")
	}

	// What held each ends: each parks.
	p.Stdin().Close()
	if st, err := p.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("the terminal's command: %+v, %v", st, err)
	}
	rc.Close()
	feed.Write([]byte("and the rest"))
	feed.Close()
	if err := <-uploaded; err != nil {
		t.Fatalf("upload: %v", err)
	}
	for _, id := range []string{pty, down, up} {
		r.eventually("a session parks once nothing holds it", func() bool { return r.get(id).State == api.StateParked })
	}
	r.wantFile(up, "/root/up", "first part and the rest")
}
