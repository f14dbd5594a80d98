package session_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// TestAdmissionRefusesWhatTheHostCannotHold asks for more than this host
// has (400, nothing recorded), then, on a host sized for one 256 MiB VM
// (600 MiB, no overcommit), fills it: a second create and a wake that
// would not fit are refused with 503 and what is left, the parked session
// staying parked; once the room is free again the wake goes through.
func TestAdmissionRefusesWhatTheHostCannotHold(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The real host's size: 64 GiB or 64 CPUs is more than a test host has.
	r := newRig(t, rigOptions{})
	_, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{MemoryMiB: 1 << 30})
	wantCode(t, "create with more memory than the host", err, api.CodeInvalid)
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{MemoryMiB: 256, CPUs: 4096})
	wantCode(t, "create with more CPUs than the host", err, api.CodeInvalid)
	if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 0 {
		t.Fatalf("refused creates left sessions: %v (%v)", ss, err)
	}
	r.close()

	small := newRig(t, rigOptions{admission: session.Admission{HostMemoryMiB: 600, HostCPUs: 2, MemoryOvercommit: 1, CPUOvercommit: 1}})
	a := small.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	_, err = small.mgr.Create(ctx, testOwner, api.CreateSessionRequest{MemoryMiB: 256})
	wantCode(t, "create beyond the host's room", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "host has 216 MiB left of 600 (memory overcommit 1)") {
		t.Fatalf("refusal does not say what is left: %v", err)
	}
	if ss, _ := small.mgr.List(ctx); len(ss) != 1 {
		t.Fatalf("a refused create left a record: %d sessions", len(ss))
	}

	// Parked, a session holds no memory: another fits, and then the wake
	// does not.
	if _, err := small.mgr.Park(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	b := small.create(t, api.CreateSessionRequest{MemoryMiB: 256})
	_, err = small.mgr.Wake(ctx, a.ID)
	wantCode(t, "wake beyond the host's room", err, api.CodeUnavailable)
	if s, _ := small.mgr.Get(ctx, a.ID); s.State != api.StateParked {
		t.Fatalf("session refused a wake is %s, want parked", s.State)
	}
	if err := small.mgr.Delete(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := small.mgr.Wake(ctx, a.ID); err != nil {
		t.Fatalf("wake once there is room: %v", err)
	}
	if got := small.sh(t, a.ID, "echo woken"); got != "woken\n" {
		t.Fatalf("woken session answered %q", got)
	}
}
