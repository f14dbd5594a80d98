package session_test

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// TestIdleParkingSkips checks what idle parking leaves running, beside a
// session it parks: a session with a command in flight (no API call since
// the command started), and one whose idle timeout is 0s (never), on a
// server whose default idle timeout is short. Once its command ends, the
// busy session is parked too.
//
// A check that something was not parked needs a moment at which it would
// have been. The idle loop looks at the sessions in the order they were
// created, once a second. The idle one is created last and used last, with
// the same timeout (the server default) as the busy one would have and the
// never one would have if 0s meant the default: in the pass of the loop
// that parks it, both were looked at first, each idle longer than it.
func TestIdleParkingSkips(t *testing.T) {
	const idle = 3 * time.Second
	r := newRig(t, rigOptions{adjust: func(c *session.Config) { c.DefaultIdleTimeout = idle }})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil { // starts the idle loop
		t.Fatal(err)
	}
	never := r.create(t, api.CreateSessionRequest{IdleTimeout: "0s"})
	busy := r.create(t, api.CreateSessionRequest{})
	// A command that waits for its stdin, writing nothing meanwhile.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	p, err := r.mgr.Exec(cctx, busy.ID, api.ExecRequest{Argv: []string{"sh", "-c", "read x; echo got $x"}})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(p.Stdout())
		out <- string(b)
	}()
	go func() { _, _ = io.Copy(io.Discard, p.Stderr()) }()
	idler := r.create(t, api.CreateSessionRequest{})
	r.sh(t, idler.ID, "true") // its last API call: after the others'

	if never.IdleTimeout != "0s" || idler.IdleTimeout != idle.String() {
		t.Fatalf("idle timeouts: %q for 0s, %q for the default; want 0s and %s", never.IdleTimeout, idler.IdleTimeout, idle)
	}
	ss, err := r.mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	at := func(id string) int { return slices.IndexFunc(ss, func(s api.Session) bool { return s.ID == id }) }
	if at(never.ID) > at(idler.ID) || at(busy.ID) > at(idler.ID) {
		t.Fatalf("sessions listed as %v: want the idle one (%s) after the others (the loop's order, which this test relies on)", ss, idler.ID)
	}

	state := func(id string) string {
		s, err := r.mgr.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return s.State
	}
	if !waitFor(2*time.Minute, func() bool { return state(idler.ID) == api.StateParked }) {
		t.Fatalf("the idle session is %s, not parked, 2 minutes after its last call (idle timeout %s)", state(idler.ID), idle)
	}
	if got := state(busy.ID); got != api.StateRunning {
		t.Fatalf("the session with a command in flight is %s, want running", got)
	}
	if got := state(never.ID); got != api.StateRunning {
		t.Fatalf("the session with idle timeout 0s is %s, want running", got)
	}

	// The command ends: the busy session is idle from then on.
	if _, err := p.Stdin().Write([]byte("it\n")); err != nil {
		t.Fatal(err)
	}
	p.Stdin().Close()
	if got := <-out; got != "got it\n" {
		t.Fatalf("the command in flight wrote %q", got)
	}
	if st, err := p.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("the command in flight ended %+v, %v", st, err)
	}
	if !waitFor(2*time.Minute, func() bool { return state(busy.ID) == api.StateParked }) {
		t.Fatalf("the busy session is %s, not parked, 2 minutes after its command ended", state(busy.ID))
	}
	if got := state(never.ID); got != api.StateRunning {
		t.Fatalf("the session with idle timeout 0s is %s, want running", got)
	}
	if got := strings.TrimSpace(r.sh(t, never.ID, "echo up")); got != "up" {
		t.Fatalf("the session with idle timeout 0s: %q", got)
	}
}
