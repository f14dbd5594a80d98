package session_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
)

// The server killed at the steps of the lifecycle that no other fake test
// kills at: those of a create, a park and a removal left to the end of
// their records, a clone's and a pool refill's, a template's build (its
// create, and a rebuild from its claim on), and a webhook delivery's (from
// its claim on). Work the dead server did in the background (a delivery, a
// rebuild, a refill) is stuck at the step for good, as a SIGKILL leaves it:
// nothing of it runs after, not even its deferred clean-up. The manager
// restarts with the same server id, as 'cove server' does from
// $COVE_HOME/server-id, so the claims the dead one held are its own.

// crashRestart plays a server killed at step while op (which may return
// at once and leave the step to a background loop) runs: once the step is
// reached, the manager is dropped without waiting for anything, and a new
// one recovers from the same store file, dir and driver.
func (r *fakeRig) crashRestart(step string, op func(*session.Manager)) {
	r.t.Helper()
	reached := r.crash.arm(step, nil)
	go op(r.mgr)
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		r.t.Fatalf("step %s not reached", step)
	}
	r.mgr.Crash()
	r.driver.Disconnect()
	r.store.Close()
	r.open()
}

// sameServer makes every manager of a rig the same server, as a restarted
// 'cove server' is.
func sameServer(c *session.Config) { c.ServerID = "srv-crash-test" }

// wantNoOrphans fails unless the only VMs running are those of want (the
// sessions and pooled clones that should run) and the sessions dir holds
// no directory but theirs, those of parked, and the server's own.
func (r *fakeRig) wantNoOrphans(parked []string, want ...string) {
	r.t.Helper()
	running := r.driver.Running()
	slices.Sort(running)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(running, w) {
		r.t.Fatalf("VMs running after the restart: %v, want %v", running, w)
	}
	want = append(want, parked...)
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || e.Name() == "templates" || slices.Contains(want, e.Name()) {
			continue
		}
		r.t.Fatalf("the sessions dir holds %s after the restart (want only %v)", e.Name(), want)
	}
}

func TestFakeCrashAtLateSteps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("create.recorded", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		r.crashRestart("create.recorded", func(m *session.Manager) {
			_, _ = m.Create(ctx, testOwner, api.CreateSessionRequest{})
		})
		ss, err := r.mgr.List(ctx)
		if err != nil || len(ss) != 1 {
			t.Fatalf("sessions after a create cut short: %+v, %v", ss, err)
		}
		r.wantState(ss[0].ID, api.StateFailed, "")
		r.wantNoOrphans(nil)
		if err := r.mgr.Delete(ctx, ss[0].ID); err != nil {
			t.Fatalf("remove the failed create: %v", err)
		}
		r.echo(r.create(api.CreateSessionRequest{}).ID)
	})
	t.Run("create.done", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		r.crashRestart("create.done", func(m *session.Manager) {
			_, _ = m.Create(ctx, testOwner, api.CreateSessionRequest{})
		})
		ss, err := r.mgr.List(ctx)
		if err != nil || len(ss) != 1 {
			t.Fatalf("sessions after a create cut short: %+v, %v", ss, err)
		}
		id := ss[0].ID
		r.wantState(id, api.StateRunning, "")
		r.wantNoOrphans(nil, id)
		r.write(id, "/root/f", "x")
		r.park(id)
		r.wantFile(id, "/root/f", "x")
	})
	t.Run("park.done", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		id := r.create(api.CreateSessionRequest{}).ID
		r.write(id, "/root/f", "kept\n")
		r.crashRestart("park.done", func(m *session.Manager) { park(m, id) })
		r.wantState(id, api.StateParked, "")
		r.wantNoOrphans([]string{id}) // its dir only: a parked session runs no VM
		if vm := r.driver.Find(id); vm != nil {
			t.Fatal("a parked session's VM runs")
		}
		r.wantFile(id, "/root/f", "kept\n")
	})
	t.Run("rm.files-removed", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		id := r.create(api.CreateSessionRequest{}).ID
		keep := r.create(api.CreateSessionRequest{}).ID
		r.crashRestart("rm.files-removed", func(m *session.Manager) { remove(m, id) })
		if _, err := r.mgr.Get(ctx, id); !api.IsCode(err, api.CodeNotFound) {
			t.Fatalf("session after a removal cut short: %v, want it gone", err)
		}
		r.wantNoOrphans(nil, keep)
		r.echo(keep)
	})
	t.Run("clone.restored", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
			t.Fatal(err)
		}
		r.crashRestart("clone.restored", func(m *session.Manager) {
			_, _ = m.Create(ctx, testOwner, api.CreateSessionRequest{Template: "web"})
		})
		// A clone is recorded only once it runs: none is listed, and its
		// VM and files are swept.
		if ss, err := r.mgr.List(ctx); err != nil || len(ss) != 0 {
			t.Fatalf("sessions after a clone cut short: %+v, %v", ss, err)
		}
		r.wantNoOrphans(nil)
		s := r.create(api.CreateSessionRequest{Template: "web"})
		if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
			t.Fatalf("a clone after the crash lacks the template's file: %v", err)
		}
	})
	t.Run("pool.restored", func(t *testing.T) {
		r := newFakeRigWith(t, sameServer)
		r.crashRestart("pool.restored", func(m *session.Manager) {
			_, _ = m.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}, Pool: 1})
		})
		// The dead server's pooled clone is swept; the new server fills
		// the pool again, and a create claims that clone.
		r.eventually("the pool refills after the crash", func() bool {
			tp, err := r.mgr.GetTemplate(ctx, "web")
			return err == nil && tp.PoolReady == 1
		})
		r.eventually("the dead server's pooled clone is gone", func() bool { return len(r.driver.Running()) == 1 })
		pooled := r.driver.Running()[0]
		s := r.create(api.CreateSessionRequest{Template: "web"})
		if s.ID != pooled {
			t.Fatalf("the create made %s, not the pooled %s", s.ID, pooled)
		}
		if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
			t.Fatalf("the pooled clone lacks the template's file: %v", err)
		}
	})
	for _, step := range []string{"template.recorded", "template.built"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRigWith(t, sameServer)
			r.crashRestart(step, func(m *session.Manager) {
				_, _ = m.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}})
			})
			tp, err := r.mgr.GetTemplate(ctx, "web")
			if err != nil || tp.State != api.TemplateFailed || !strings.Contains(tp.Error, "server stopped") {
				t.Fatalf("template after its build was cut short: %+v, %v; want failed, saying the server stopped", tp, err)
			}
			r.wantNoOrphans(nil) // the build's VM is killed
			if _, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "web"}); err == nil {
				t.Fatal("a clone of a failed template was made")
			}
			if err := r.mgr.DeleteTemplate(ctx, "web"); err != nil {
				t.Fatalf("remove the failed template: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(r.dir, "templates")); len(ents) != 0 {
				t.Fatalf("template files left after its removal: %v", ents)
			}
			if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
				t.Fatalf("create the template again: %v", err)
			}
			s := r.create(api.CreateSessionRequest{Template: "web"})
			if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
				t.Fatalf("a clone lacks the template's file: %v", err)
			}
		})
	}
	for _, step := range []string{"build.claimed", "build.recorded", "build.saved", "build.swapped"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRigWith(t, sameServer)
			tp, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}})
			if err != nil {
				t.Fatal(err)
			}
			r.crashRestart(step, func(m *session.Manager) { _, _ = m.RebuildTemplate(ctx, "web") })
			got, err := r.mgr.GetTemplate(ctx, "web")
			if err != nil || got.State != api.TemplateReady {
				t.Fatalf("template after its rebuild was cut short: %+v, %v; want ready", got, err)
			}
			// The version the swap made current serves; none is left
			// building, and a cut build is failed with the reason.
			wantVersion := tp.Version
			if step == "build.swapped" {
				wantVersion = tp.Version + 1
			}
			if got.Version != wantVersion {
				t.Fatalf("current version %d after a crash at %s, want %d", got.Version, step, wantVersion)
			}
			vs, err := r.mgr.TemplateVersions(ctx, "web")
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range vs {
				if v.State == "building" {
					t.Fatalf("version %d still building after the restart: %+v", v.Version, vs)
				}
				if v.Version > wantVersion && (v.State != "failed" || !strings.Contains(v.Error, "server stopped")) {
					t.Fatalf("version %d cut short is %s (%q), want failed saying the server stopped", v.Version, v.State, v.Error)
				}
			}
			r.wantNoOrphans(nil)
			s := r.create(api.CreateSessionRequest{Template: "web"})
			if _, err := r.mgr.Stat(ctx, s.ID, "/root/setup-ran"); err != nil {
				t.Fatalf("a clone after the crash lacks the template's file: %v", err)
			}
			// The next rebuild runs: the dead server's claim does not
			// hold the template for good.
			if _, err := r.mgr.RebuildTemplate(ctx, "web"); err != nil {
				t.Fatal(err)
			}
			r.eventually("the next rebuild makes a version", func() bool {
				tp, err := r.mgr.GetTemplate(ctx, "web")
				return err == nil && tp.Version > wantVersion
			})
		})
	}
	// A server that dies mid-build and is followed by one under another
	// id (a second server on the store, or one whose server-id file was
	// lost) finds the build claimed at its start and leaves it: the next
	// build, once the dead one's claim has expired, fails the cut version
	// and removes its files.
	t.Run("build.saved/another-server", func(t *testing.T) {
		r := newFakeRigWith(t, func(c *session.Config) { c.LeaseTTL = time.Second })
		tp, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}})
		if err != nil {
			t.Fatal(err)
		}
		r.crashRestart("build.saved", func(m *session.Manager) { _, _ = m.RebuildTemplate(ctx, "web") })
		cut := tp.Version + 1
		cutDir := filepath.Join(r.dir, "templates", "web", fmt.Sprintf("v%d", cut))
		if _, err := os.Stat(cutDir); err != nil {
			t.Fatalf("the cut version's files before the next build: %v", err)
		}
		r.eventually("a rebuild after the dead server's claim expired", func() bool {
			if _, err := r.mgr.RebuildTemplate(ctx, "web"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			got, err := r.mgr.GetTemplate(ctx, "web")
			return err == nil && got.Version > cut
		})
		vs, err := r.mgr.TemplateVersions(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Version == cut && (v.State != "failed" || !strings.Contains(v.Error, "server stopped")) {
				t.Fatalf("the cut version %d is %s (%q) after a later build, want failed saying the server stopped", cut, v.State, v.Error)
			}
		}
		if _, err := os.Stat(cutDir); !os.IsNotExist(err) {
			t.Fatalf("the cut version's files: %v, want them removed", err)
		}
	})
	// The same for a template's first build: the template is failed
	// once the dead server's claim has expired, and can be removed and
	// made again.
	t.Run("template.built/another-server", func(t *testing.T) {
		r := newFakeRigWith(t, func(c *session.Config) { c.LeaseTTL = time.Second })
		r.crashRestart("template.built", func(m *session.Manager) {
			_, _ = m.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}})
		})
		r.eventually("the cut template is failed once the dead server's claim expired", func() bool {
			tp, err := r.mgr.GetTemplate(ctx, "web")
			return err == nil && tp.State == api.TemplateFailed && strings.Contains(tp.Error, "server stopped")
		})
		r.wantNoOrphans(nil)
		if err := r.mgr.DeleteTemplate(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
			t.Fatalf("create the template again: %v", err)
		}
	})
	for _, step := range []string{"deliver.claimed", "deliver.woken", "deliver.written"} {
		t.Run(step, func(t *testing.T) {
			r := newFakeRigWith(t, sameServer)
			id := r.create(api.CreateSessionRequest{}).ID
			if _, err := r.mgr.ParkUntil(ctx, id, []string{"deploys:done"}, 0); err != nil {
				t.Fatal(err)
			}
			ev, err := trigger.GenericEvent("deploys", []byte(`{"event":"done"}`))
			if err != nil {
				t.Fatal(err)
			}
			ev.ID, ev.Received = "d1", time.Now()
			r.crashRestart(step, func(m *session.Manager) { _, _ = m.Accept(ctx, ev) })
			// The restarted server makes the pending delivery: the
			// session runs with the event in its guest once.
			r.eventually("the event is delivered after the restart", func() bool {
				ds, err := r.store.ListDeliveries(ctx, store.DeliveryDelivered)
				return err == nil && len(ds) == 1
			})
			r.wantState(id, api.StateRunning, "")
			files, err := r.mgr.ListDir(ctx, id, "/run/cove/events")
			if err != nil || len(files) != 1 {
				t.Fatalf("events in the guest: %+v (%v), want one", files, err)
			}
			for _, s := range []string{store.DeliveryPending, store.DeliveryFailed} {
				if ds, _ := r.store.ListDeliveries(ctx, s); len(ds) != 0 {
					t.Fatalf("%s deliveries after the restart: %+v", s, ds)
				}
			}
			r.wantNoOrphans(nil, id)
		})
	}
}

// TestEveryCrashPointIsKilledAt holds the list of the lifecycle's crash
// points to the tests: each step the session layer or the QEMU driver
// names (Config.CrashPoint, COVE_TEST_CRASH_AT) must be one a test kills
// the server at, here with the fake driver or in cmd/cove's crash tests
// with the real server, so that a step added without a test fails.
func TestEveryCrashPointIsKilledAt(t *testing.T) {
	t.Parallel()
	read := func(glob string, tests bool) string {
		t.Helper()
		files, err := filepath.Glob(glob)
		if err != nil || len(files) == 0 {
			t.Fatalf("no files %s: %v", glob, err)
		}
		var b strings.Builder
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") != tests {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b.Write(data)
		}
		return b.String()
	}
	src := read("*.go", false) + read("../vmm/qemu/*.go", false)
	tests := read("*_test.go", true) + read("../../cmd/cove/crash_test.go", true)
	steps := regexp.MustCompile(`crashPoint\("([a-z.-]+)"\)`).FindAllStringSubmatch(src, -1)
	if len(steps) < 40 {
		t.Fatalf("found %d crash points in the sources; the pattern no longer matches how they are named", len(steps))
	}
	for _, s := range steps {
		if !strings.Contains(tests, `"`+s[1]+`"`) {
			t.Errorf("crash point %q: no test kills the server there", s[1])
		}
	}
}
