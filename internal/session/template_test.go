package session_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// TestTemplateClones builds a template, restores clones of it and checks
// each has the setup's result and the start command running, its own
// random state, its own disk, and can be parked and woken; a template with
// clones cannot be removed.
func TestTemplateClones(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	tpl, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{
		Name:  "py",
		Setup: []string{"mkdir -p /work && echo ready > /work/setup", "echo second >> /work/setup"},
		Start: "sleep 100000",
	})
	if err != nil {
		t.Fatal(err)
	}
	if tpl.State != api.TemplateReady || tpl.Snapshot == nil {
		t.Fatalf("template is %s, snapshot %v", tpl.State, tpl.Snapshot)
	}
	_, err = r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "py"})
	wantCode(t, "second template with the same name", err, api.CodeConflict)
	_, err = r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "bad", Setup: []string{"exit 3"}})
	wantCode(t, "template whose setup fails", err, api.CodeInvalid)
	_, err = r.mgr.GetTemplate(ctx, "bad")
	wantCode(t, "the refused template", err, api.CodeNotFound) // a refused create records nothing

	var ids []string
	randoms := map[string]bool{}
	for i := 0; i < 3; i++ {
		start := time.Now()
		s, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "py"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("clone %d ready after %s", i, time.Since(start).Round(time.Millisecond))
		ids = append(ids, s.ID)
		if s.Template != "py" {
			t.Fatalf("clone's template is %q", s.Template)
		}
		if got := r.sh(t, s.ID, "cat /work/setup"); got != "ready\nsecond\n" {
			t.Fatalf("clone %d: setup output %q", i, got)
		}
		if got := strings.TrimSpace(r.sh(t, s.ID, "ps | grep -q '[s]leep 100000' && echo running || ps")); got != "running" {
			t.Fatalf("clone %d: start command not running: %s", i, got)
		}
		rnd := strings.TrimSpace(r.sh(t, s.ID, "head -c 16 /dev/urandom | od -An -tx1"))
		if randoms[rnd] {
			t.Fatalf("clone %d reads the same random bytes as another clone: %s", i, rnd)
		}
		randoms[rnd] = true
		r.sh(t, s.ID, "echo "+s.ID+" > /work/me")
	}
	for _, id := range ids {
		if got := strings.TrimSpace(r.sh(t, id, "cat /work/me")); got != id {
			t.Fatalf("clone %s sees %q: disks are shared", id, got)
		}
	}
	// A clone parks and wakes like any session.
	if _, err := r.mgr.Park(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(r.sh(t, ids[0], "cat /work/me")); got != ids[0] {
		t.Fatalf("clone after park/wake: %q", got)
	}
	wantCode(t, "remove a template with clones", r.mgr.DeleteTemplate(ctx, "py"), api.CodeConflict)
	for _, id := range ids {
		if err := r.mgr.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.mgr.DeleteTemplate(ctx, "py"); err != nil {
		t.Fatal(err)
	}
	_, err = r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "py"})
	wantCode(t, "clone of a removed template", err, api.CodeNotFound)
}

// TestWarmPool checks a template's pool fills, a create claims one of its
// ready clones (the session is that clone: its id, its QEMU process), and
// the pool refills with a new clone.
func TestWarmPool(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "warm", Pool: 2}); err != nil {
		t.Fatal(err)
	}
	// A pooled clone has a session id and a session dir from its restore
	// on, but no record until a create claims it.
	pooled := func() map[string]bool {
		t.Helper()
		ss, err := r.mgr.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range sessionEntries(r.dir) {
			if strings.HasPrefix(e, "s-") && !slices.ContainsFunc(ss, func(s api.Session) bool { return s.ID == e }) {
				out[e] = true
			}
		}
		return out
	}
	// full: two clones ready, and no third being restored.
	full := func(clones map[string]bool) bool {
		tpl, err := r.mgr.GetTemplate(ctx, "warm")
		return err == nil && tpl.PoolReady == 2 && len(clones) == 2
	}
	if !waitFor(time.Minute, func() bool { return full(pooled()) }) {
		tpl, _ := r.mgr.GetTemplate(ctx, "warm")
		t.Fatalf("pool did not fill: %d ready, clone dirs %v", tpl.PoolReady, pooled())
	}
	before := pooled()
	pids := map[string]int{}
	for id := range before {
		pids[id] = qemuPID(t, r.dir, id)
	}

	s, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	if !before[s.ID] {
		t.Fatalf("created session %s is none of the pooled clones %v: the create did not claim one", s.ID, before)
	}
	if pid := qemuPID(t, r.dir, s.ID); pid != pids[s.ID] {
		t.Fatalf("the claimed clone runs in QEMU process %d, the pooled one ran in %d", pid, pids[s.ID])
	}
	if got := strings.TrimSpace(r.sh(t, s.ID, "echo hi")); got != "hi" {
		t.Fatalf("pooled clone: %q", got)
	}
	// The claimed clone's guest requests reach the host under its id (its
	// listen stream opened in the pool): a refused park comes back at once.
	res := r.run(t, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "park", "--until", "bad expression"}}, nil)
	if res.status.Code != 1 || !strings.Contains(res.stderr, "^") {
		t.Fatalf("park with a bad expression from a pooled clone: exit %d, stderr %q", res.status.Code, res.stderr)
	}

	// The refill restores a new clone beside the one left.
	refilled := func() bool {
		now := pooled()
		if !full(now) {
			return false
		}
		for id := range now {
			if !before[id] {
				return true
			}
		}
		return false
	}
	if !waitFor(time.Minute, refilled) {
		tpl, _ := r.mgr.GetTemplate(ctx, "warm")
		t.Fatalf("pool did not refill: %d ready, clone dirs %v (before the claim: %v)", tpl.PoolReady, pooled(), before)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.mgr.DeleteTemplate(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
}

// TestCloneFilesMadeAhead: a ready template gets a set of clone files (a
// RAM file, a disk overlay) made ahead; a create renames it into the new
// session instead of copying, and that clone is a clone like any other
// (the setup's result, a disk of its own, park and wake); the set is made
// again for the next create. A restart drops the sets it finds and makes
// new ones; removing the template removes its set.
func TestCloneFilesMadeAhead(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil { // starts the maker
		t.Fatal(err)
	}
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "ahead", Setup: []string{"echo ready > /root/setup"}}); err != nil {
		t.Fatal(err)
	}
	setsDir := filepath.Join(r.dir, ".clone-files")
	sets := func() []string {
		var out []string
		ents, _ := os.ReadDir(setsDir)
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	waitSet := func(r *rig, what string) string {
		t.Helper()
		made := waitFor(time.Minute, func() bool {
			tp, err := r.mgr.GetTemplate(ctx, "ahead")
			return err == nil && tp.CloneFilesReady == 1 && len(sets()) == 1
		})
		if !made {
			tp, _ := r.mgr.GetTemplate(ctx, "ahead")
			t.Fatalf("%s: no set of clone files made ahead (clone_files_ready %d, dir holds %v)", what, tp.CloneFilesReady, sets())
		}
		set := sets()[0]
		for _, f := range []string{qemu.MemFile, "disk.qcow2"} {
			if _, err := os.Stat(filepath.Join(setsDir, set, f)); err != nil {
				t.Fatalf("%s: set %s: %v", what, set, err)
			}
		}
		return set
	}

	first := waitSet(r, "template made")
	a, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "ahead"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(setsDir, first)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the set made ahead is still in place after a create took it: %v", err)
	}
	if got := r.sh(t, a.ID, "cat /root/setup"); got != "ready\n" {
		t.Fatalf("clone from the set made ahead: setup output %q", got)
	}
	second := waitSet(r, "after a create took the set")
	if second == first {
		t.Fatalf("the set taken (%s) is listed again", first)
	}
	r.sh(t, a.ID, "echo a > /root/me && sync")
	b, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "ahead"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.sh(t, b.ID, "cat /root/me 2>/dev/null || echo none"); got != "none\n" {
		t.Fatalf("a second clone sees the first one's file: %q", got)
	}
	if _, err := r.mgr.Park(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.Wake(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := r.sh(t, a.ID, "cat /root/me"); got != "a\n" {
		t.Fatalf("clone from a set made ahead, after park and wake: %q", got)
	}

	// A restart drops the set the last server left and makes a new one.
	third := waitSet(r, "after the second create")
	r.close()
	r2 := openRig(t, rigOptions{dir: r.dir, db: r.db})
	if err := r2.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got := waitSet(r2, "after a restart"); got == third {
		t.Fatalf("the set left by the last server (%s) is used after a restart", third)
	}
	for _, id := range []string{a.ID, b.ID} {
		if err := r2.mgr.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := r2.mgr.DeleteTemplate(ctx, "ahead"); err != nil {
		t.Fatal(err)
	}
	if left := sets(); len(left) != 0 {
		t.Fatalf("clone files left after the template was removed: %v", left)
	}
}

// TestCloneFilesLeftToCreates: a pool refill restores without the set of
// clone files made ahead; the set is kept for a create that finds the
// pool empty.
func TestCloneFilesLeftToCreates(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil { // starts the maker
		t.Fatal(err)
	}
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "pooled", Pool: 1}); err != nil {
		t.Fatal(err)
	}
	setsDir := filepath.Join(r.dir, ".clone-files")
	ready := func(pool int) bool {
		tp, err := r.mgr.GetTemplate(ctx, "pooled")
		ents, _ := os.ReadDir(setsDir)
		return err == nil && tp.PoolReady == pool && tp.CloneFilesReady == 1 && len(ents) == 1
	}
	if !waitFor(time.Minute, func() bool { return ready(1) }) {
		t.Fatal("pool or clone files not ready")
	}
	ents, _ := os.ReadDir(setsDir)
	set := ents[0].Name()
	s, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "pooled"})
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return ready(1) }) {
		t.Fatal("pool did not refill")
	}
	if ents, _ := os.ReadDir(setsDir); len(ents) != 1 || ents[0].Name() != set {
		t.Fatalf("after a claim and a pool refill the clone files are %v, want the set %s left as it was", ents, set)
	}
	if err := r.mgr.Delete(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
}
