package session_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestParkWakeIsExact parks and wakes one session many times and checks
// that nothing of the guest is lost: a background process keeps its PID
// and keeps counting from where it was, files written just before a park
// are there, the clock is right after each wake, and no QEMU process or
// RAM is held while parked.
func TestParkWakeIsExact(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	ctx := context.Background()
	r.sh(t, s.ID, "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.02; done) </dev/null >/dev/null 2>&1 & echo $! > /tmp/pid")
	pid := strings.TrimSpace(r.sh(t, s.ID, "cat /tmp/pid"))
	// A pipeline whose writer keeps an open file and a pipe across parks:
	// each tick goes through the pipe and is appended through fd 3.
	r.sh(t, s.ID, "(exec 3>>/root/ticks; (while true; do echo tick; sleep 0.05; done) | while read l; do echo $l >&3; done) </dev/null >/dev/null 2>&1 &")
	last := 0
	const cycles = 20
	for i := 0; i < cycles; i++ {
		r.sh(t, s.ID, "echo cycle-"+strconv.Itoa(i)+" >> /root/log; sync")
		p, err := r.mgr.Park(ctx, s.ID)
		if err != nil {
			t.Fatalf("cycle %d: park: %v", i, err)
		}
		if p.State != api.StateParked || p.Snapshot == nil {
			t.Fatalf("cycle %d: parked session is %s with snapshot %v", i, p.State, p.Snapshot)
		}
		if p.Snapshot.DiskBytes <= 0 || p.Snapshot.DiskBytes >= p.Snapshot.MemoryBytes {
			t.Fatalf("cycle %d: snapshot takes %d bytes for %d bytes of RAM: want sparse (only touched pages)", i, p.Snapshot.DiskBytes, p.Snapshot.MemoryBytes)
		}
		if procs := vmtest.VMProcs(r.dir); len(procs) != 0 {
			t.Fatalf("cycle %d: QEMU still running while parked: %v", i, procs)
		}
		if i < 2 {
			// Not a wait for anything: the time parked is what a woken
			// guest's clock must catch up on, so it must be longer than
			// checkGuestClock's slack for a clock left behind to show.
			time.Sleep(2 * clockSlack)
		}
		// Wake explicitly on even cycles; on odd ones the exec wakes it.
		if i%2 == 0 {
			w, err := r.mgr.Wake(ctx, s.ID)
			if err != nil {
				t.Fatalf("cycle %d: wake: %v", i, err)
			}
			if w.State != api.StateRunning {
				t.Fatalf("cycle %d: woken session is %s", i, w.State)
			}
		}
		n, err := strconv.Atoi(strings.TrimSpace(r.sh(t, s.ID, "cat /tmp/count")))
		if err != nil {
			t.Fatalf("cycle %d: counter: %v", i, err)
		}
		if n < last {
			t.Fatalf("cycle %d: counter went back from %d to %d", i, last, n)
		}
		last = n
		if got := strings.TrimSpace(r.sh(t, s.ID, "kill -0 "+pid+" && echo alive")); got != "alive" {
			t.Fatalf("cycle %d: background process %s is gone", i, pid)
		}
		ticks := strings.Count(r.sh(t, s.ID, "cat /root/ticks"), "tick")
		if !waitFor(time.Minute, func() bool { return strings.Count(r.sh(t, s.ID, "cat /root/ticks"), "tick") > ticks }) {
			t.Fatalf("cycle %d: the pipeline writing through a pipe and an open file stopped (%d ticks)", i, ticks)
		}
		if got := strings.Count(r.sh(t, s.ID, "cat /root/log"), "cycle-"); got != i+1 {
			t.Fatalf("cycle %d: log has %d lines, want %d", i, got, i+1)
		}
		if i < 2 { // after a wake and after an auto-wake
			checkGuestClock(t, r, s.ID, fmt.Sprintf("cycle %d's wake", i))
		}
	}
	// The counter kept counting after the last wake.
	if !waitFor(time.Minute, func() bool {
		n, _ := strconv.Atoi(strings.TrimSpace(r.sh(t, s.ID, "cat /tmp/count")))
		return n > last
	}) {
		t.Fatalf("counter stuck at %d after %d park/wake cycles", last, cycles)
	}
}

// TestParkedSessionSurvivesRestart parks a session, restarts the manager,
// and wakes it. The guest is parked with nothing left to write back: what
// it wrote just before is on its disk, not pending in the woken guest.
func TestParkedSessionSurvivesRestart(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	r.sh(t, s.ID, "echo before > /root/f; head -c 4194304 /dev/urandom > /root/dirty")
	ctx := context.Background()
	if _, err := r.mgr.Park(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	r.close()
	r2 := openRig(t, rigOptions{dir: r.dir, db: r.db})
	if err := r2.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r2.mgr.Get(ctx, s.ID)
	if err != nil || got.State != api.StateParked {
		t.Fatalf("after restart: %+v, %v; want parked", got, err)
	}
	if out := strings.TrimSpace(r2.sh(t, s.ID, "cat /root/f")); out != "before" {
		t.Fatalf("file after restart and wake: %q", out)
	}
	out := strings.Fields(r2.sh(t, s.ID, "wc -c < /root/dirty; grep '^Dirty:' /proc/meminfo"))
	if len(out) < 3 || out[0] != "4194304" {
		t.Fatalf("after the wake: %q, want the 4 MiB file and the dirty memory", out)
	}
	if kb, err := strconv.Atoi(out[2]); err != nil || kb > 1024 {
		t.Fatalf("the woken guest has %s kB to write back: the 4 MiB written before the park were not synced", out[2])
	}
}

// TestCorruptSnapshotFailsClearly corrupts a parked session's state file:
// the wake fails with a clear error, the session is failed, not rebooted.
func TestCorruptSnapshotFailsClearly(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	ctx := context.Background()
	if _, err := r.mgr.Park(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(r.dir, s.ID, "state")
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Wake(ctx, s.ID)
	wantCode(t, "wake of a corrupt snapshot", err, api.CodeUnavailable)
	if !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("error %q does not say the snapshot is corrupt", err)
	}
	got, _ := r.mgr.Get(ctx, s.ID)
	if got.State != api.StateFailed {
		t.Fatalf("session is %s after a failed wake, want failed", got.State)
	}
	if len(vmtest.VMProcs(r.dir)) != 0 {
		t.Fatal("a QEMU process runs after a failed wake")
	}
}

// TestIdleSessionParks checks the idle timeout parks a session with no
// activity, and an exec wakes it.
func TestIdleSessionParks(t *testing.T) {
	r := newRig(t, rigOptions{})
	if err := r.mgr.Recover(context.Background()); err != nil { // starts the idle loop
		t.Fatal(err)
	}
	s := r.create(t, api.CreateSessionRequest{IdleTimeout: "2s"})
	ctx := context.Background()
	if !waitFor(30*time.Second, func() bool {
		got, _ := r.mgr.Get(ctx, s.ID)
		return got.State == api.StateParked
	}) {
		t.Fatal("idle session was not parked")
	}
	if out := strings.TrimSpace(r.sh(t, s.ID, "echo awake")); out != "awake" {
		t.Fatalf("exec on a parked session: %q", out)
	}
}

// TestInterruptedParkRecovers simulates a server that died in the middle
// of a park: with the VM still running the session is running again; with
// a complete snapshot on disk it is parked and wakes.
func TestInterruptedParkRecovers(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	a := r.create(t, api.CreateSessionRequest{})
	b := r.create(t, api.CreateSessionRequest{})
	r.sh(t, a.ID, "echo a > /root/f")
	r.sh(t, b.ID, "echo b > /root/f")
	// b: a complete snapshot, then the server died before recording it.
	if _, err := r.mgr.Park(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	r.close()
	st, err := sqlite.Open(ctx, r.db)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a.ID, b.ID} {
		rec, err := st.GetSession(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		rec.State = api.StateParking // as if the server stopped mid-park
		if err := st.UpdateSession(ctx, &rec); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	r2 := openRig(t, rigOptions{dir: r.dir, db: r.db})
	if err := r2.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	ga, _ := r2.mgr.Get(ctx, a.ID)
	gb, _ := r2.mgr.Get(ctx, b.ID)
	if ga.State != api.StateRunning || gb.State != api.StateParked {
		t.Fatalf("after recovery: a is %s (want running; %s), b is %s (want parked)", ga.State, ga.Error, gb.State)
	}
	if got := strings.TrimSpace(r2.sh(t, a.ID, "cat /root/f")); got != "a" {
		t.Fatalf("a: %q", got)
	}
	if got := strings.TrimSpace(r2.sh(t, b.ID, "cat /root/f")); got != "b" {
		t.Fatalf("b after wake: %q", got)
	}
}

// TestPTYSurvivesPark keeps an interactive shell attached across a park
// and a wake: the same shell answers afterwards with its variables and its
// working directory, through the same stream.
func TestPTYSurvivesPark(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh"}, TTY: true, Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out strings.Builder
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := p.Stdout().Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func(sub string) bool {
		return waitFor(30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return strings.Contains(out.String(), sub)
		})
	}
	if _, err := p.Stdin().Write([]byte("cd /tmp; X=4$((1+1)); echo ready-$X\n")); err != nil {
		t.Fatal(err)
	}
	if !seen("ready-42") {
		t.Fatalf("shell did not answer: %q", out.String())
	}
	if _, err := r.mgr.Park(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	// Typing into the parked session's shell wakes it.
	if _, err := p.Stdin().Write([]byte("echo after-$X-$(pwd)\n")); err != nil {
		t.Fatalf("write after park: %v", err)
	}
	if !seen("after-42-/tmp") {
		t.Fatalf("the shell lost its state across park/wake: %q", out.String())
	}
	if _, err := p.Stdin().Write([]byte("exit 5\n")); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 5 {
		t.Fatalf("shell ended with %+v, %v; want exit 5", st, err)
	}
}

// clockSlack is how far checkGuestClock lets the guest's wall clock be
// outside the host's: the guest's stamp is its coarse time (up to a tick
// old), and a woken guest's clock is stepped by the lag it applied the
// host's time with, which may leave it a little ahead. Load cannot
// stretch it: it widens the host's bracket instead.
const clockSlack = time.Second

// checkGuestClock fails the test unless the guest's wall clock reads a
// time between the host's before the request and after the answer (give
// or take clockSlack): an order, which a clock left behind (not set on a
// wake) or running fast breaks, and a slow host does not. A guest shell
// stamps a file and reads the stamp back.
func checkGuestClock(t *testing.T, r *rig, id, when string) {
	t.Helper()
	before := time.Now()
	out := r.sh(t, id, "touch /tmp/stamp && stat -c %y /tmp/stamp")
	after := time.Now()
	guest, err := time.Parse("2006-01-02 15:04:05.999999999 -0700", strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("%s: guest stamp %q: %v", when, out, err)
	}
	if guest.Before(before.Add(-clockSlack)) || guest.After(after.Add(clockSlack)) {
		t.Fatalf("%s: the guest clock read %s while the host's went from %s to %s",
			when, guest.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
	}
}
