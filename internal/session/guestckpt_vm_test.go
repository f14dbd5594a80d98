package session_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestGuestCheckpointsAndRollsBackItself runs, in a real guest, the line
//
//	cove-agent checkpoint --name before && risky-step || cove-agent rollback before
//
// where the risky step changes the disk and fails. In the first timeline
// the checkpoint call prints the checkpoint's name and exits 0 (the risky
// step runs); the rollback puts the guest back to the checkpoint, where
// the same call returns again, printing "rolled back to before" and
// exiting 3; the rollback the line then asks for is refused (exit 3,
// nothing done) rather than going round again: the line ends with 3, and
// the disk is the checkpoint's. A rollback to an unknown name fails (exit
// 1) and changes nothing. In a fork of the checkpoint the same call
// returns "forked from" the session (exit 4).
func TestGuestCheckpointsAndRollsBackItself(t *testing.T) {
	parallelVM(t)
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	s := r.create(t, api.CreateSessionRequest{})
	r.sh(t, s.ID, `echo before > /root/state
cat > /root/risky.sh <<'EOF'
cp /dev/shm/ck.out /root/seen
echo after > /root/state
sync
while [ ! -e /root/go ]; do sleep 0.1; done
exit 1
EOF
cat > /root/line.sh <<'EOF'
cove-agent rollback nosuch 2>/root/unknown.err; echo $? > /root/unknown.rc
cove-agent checkpoint --name before >/dev/shm/ck.out 2>/dev/shm/ck.err && sh /root/risky.sh || cove-agent rollback before 2>/dev/shm/rb.err
echo $? > /dev/shm/line.rc
EOF
sync
sh /root/line.sh </dev/null >/dev/null 2>&1 &`)
	ok := func(id, script string) bool {
		res, err := runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"sh", "-c", script}}, nil)
		return err == nil && res.status.Code == 0
	}
	// The first timeline: checkpointed, the risky step under way.
	if !waitFor(3*time.Minute, func() bool { return ok(s.ID, "test -e /root/seen") }) {
		t.Fatalf("the risky step never ran; checkpoint said %q", r.sh(t, s.ID, "cat /dev/shm/ck.out /dev/shm/ck.err"))
	}
	if got := r.sh(t, s.ID, "cat /root/seen /root/state /root/unknown.rc"); got != "before\nafter\n1\n" {
		t.Fatalf("first timeline: checkpoint's output, the state, the unknown rollback's status: %q, want before, after, 1", got)
	}
	if got := r.sh(t, s.ID, "cat /root/unknown.err"); !strings.Contains(got, `no checkpoint "nosuch"`) {
		t.Fatalf("rollback to an unknown checkpoint said %q", got)
	}
	list, err := r.mgr.ListCheckpoints(ctx, s.ID)
	if err != nil || len(list) != 1 || list[0].Name != "before" {
		t.Fatalf("checkpoints: %+v, %v; want before", list, err)
	}

	// The risky step fails: the line rolls the guest back.
	r.sh(t, s.ID, "touch /root/go")
	if !waitFor(5*time.Minute, func() bool { return ok(s.ID, "test -e /dev/shm/line.rc") }) {
		t.Fatal("the line never ended after the rollback")
	}
	got := r.sh(t, s.ID, "cat /dev/shm/line.rc /dev/shm/ck.out /root/state; test -e /root/seen || echo seen-gone")
	if got != "3\nrolled back to before\nbefore\nseen-gone\n" {
		t.Fatalf("rolled-back timeline: the line's status, checkpoint's output, the state, the risky step's file: %q", got)
	}
	if got := r.sh(t, s.ID, "cat /dev/shm/rb.err"); !strings.Contains(got, "rolled back to that checkpoint already") {
		t.Fatalf("the second rollback said %q, want a refusal", got)
	}
	// Refused in the whole guest, not the line's only; nothing done.
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "rollback", "before"}}, nil)
	if res.status.Code != 3 || !strings.Contains(res.stderr, "--again") {
		t.Fatalf("rollback to before again: exit %+v, stderr %q; want 3 and a refusal", res.status, res.stderr)
	}
	if got := r.sh(t, s.ID, "cat /root/state"); got != "before\n" {
		t.Fatalf("state: %q", got)
	}
	if s2, err := r.mgr.Get(ctx, s.ID); err != nil || s2.ID != s.ID || s2.State != api.StateRunning {
		t.Fatalf("session after the rollback: %+v, %v", s2, err)
	}

	// A fork of the checkpoint: there the same call returns "forked"
	// (exit 4), and the line's rollback fails: the fork has no
	// checkpoint of that name.
	forks, err := r.mgr.Fork(ctx, s.ID, api.ForkRequest{From: "before"})
	if err != nil {
		t.Fatalf("fork: %v", err)
	}
	f := forks[0].ID
	if !waitFor(3*time.Minute, func() bool { return ok(f, "test -e /dev/shm/line.rc") }) {
		t.Fatal("the line never ended in the fork")
	}
	if got, want := r.sh(t, f, "cat /dev/shm/line.rc /dev/shm/ck.out /root/state"), "1\nforked from "+s.ID+" at before\nbefore\n"; got != want {
		t.Fatalf("fork: the line's status, checkpoint's output, the state: %q, want %q", got, want)
	}
	if err := r.mgr.Delete(ctx, f); err != nil {
		t.Fatal(err)
	}
}
