package session_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// TestFakeEveryWakeReseeds: the guest's RNG gets fresh entropy from the
// host at every wake, not only at a clone's restore: a guest parked and
// woken three times (and rolled back, and its fork) has been given a new
// 32-byte seed each time, none the same, and two clones of one template
// were given different ones.
func TestFakeEveryWakeReseeds(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	seeds := func(id string) []string {
		t.Helper()
		rc, err := r.mgr.Open(ctx, id, fake.SeedsPath)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(b))
	}
	seen := map[string]string{}
	wantFresh := func(id, after string, atLeast int) []string {
		t.Helper()
		got := seeds(id)
		if len(got) < atLeast {
			t.Fatalf("%s: the guest was given %d seeds, want at least %d", after, len(got), atLeast)
		}
		for _, s := range got {
			if len(s) != 64 {
				t.Fatalf("%s: a seed of %d hex digits (%q), want 32 bytes", after, len(s), s)
			}
		}
		last := got[len(got)-1]
		if prev, ok := seen[last]; ok && prev != id+after {
			t.Fatalf("%s: the guest's last seed %s was given before (%s)", after, last, prev)
		}
		seen[last] = id + after
		return got
	}
	s := r.create(api.CreateSessionRequest{})
	n := len(wantFresh(s.ID, "boot", 1))
	for i := range 3 {
		r.park(s.ID)
		got := wantFresh(s.ID, "wake", n+1) // the read wakes it
		if got[len(got)-1] == got[n-1] {
			t.Fatalf("wake %d: the same seed as before it", i+1)
		}
		n = len(got)
	}
	r.checkpoint(s.ID, "c")
	if _, err := r.mgr.Rollback(ctx, s.ID, "c"); err != nil {
		t.Fatal(err)
	}
	wantFresh(s.ID, "rollback", n+1)
	forks := r.fork(s.ID, api.ForkRequest{From: "c"})
	wantFresh(forks[0].ID, "fork", n+1)

	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	a, b := r.create(api.CreateSessionRequest{Template: "web"}), r.create(api.CreateSessionRequest{Template: "web"})
	sa, sb := seeds(a.ID), seeds(b.ID)
	if sa[len(sa)-1] == sb[len(sb)-1] {
		t.Fatalf("two clones of one template were given the same seed %s", sa[len(sa)-1])
	}
}
