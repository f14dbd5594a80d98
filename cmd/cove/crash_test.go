package main_test

// Crash safety: the real server is killed with SIGKILL at every named step
// of its lifecycle operations, and a new server must find every session
// running or parked with its memory intact, and nothing left behind of an
// operation that did not finish.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// crashEnv arms the server's test crash point (see cmd/cove/server.go).
const crashEnv = "COVE_TEST_CRASH_AT"

// crashAt restarts the server armed to kill itself at point, runs op
// against it (op's commands fail when the server dies under them), waits
// for the server to die there, and starts a plain server again. With op
// nil the point is one the server reaches by itself (at start).
func (e *e2e) crashAt(point string, op func()) {
	t := e.t
	t.Helper()
	if e.srv != nil {
		// Killed, not stopped: a graceful stop waits for spare QEMU
		// processes still starting, which a loaded host makes slow.
		if err := e.stopServer(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("stop the server before crash point %s: %v", point, err)
		}
	}
	s := e.launchServer(crashEnv + "=" + point)
	if op != nil {
		if !e.waitHealthy(s) {
			t.Fatalf("crash point %s: the server died before it served:\n%s", point, tailOf(s.log.String()))
		}
		op()
	}
	select {
	case <-s.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("crash point %s: never reached (the server still runs):\n%s", point, tailOf(s.log.String()))
	}
	e.srv = nil
	if !strings.Contains(s.log.String(), "crash point "+point+": SIGKILL") {
		t.Fatalf("crash point %s: the server exited (%v) without reaching it:\n%s", point, s.err, tailOf(s.log.String()))
	}
	if ws, ok := s.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("crash point %s: the server ended with %v, want SIGKILL", point, s.err)
	}
	e.startServer()
}

// waitHealthy waits until s answers /healthz, or dies.
func (e *e2e) waitHealthy(s *server) bool {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return false
		default:
		}
		if resp, err := http.Get("http://" + e.addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func tailOf(s string) string {
	if len(s) > 6000 {
		return s[len(s)-6000:]
	}
	return s
}

// memorySession is a session whose memory the crash tests check: a marker
// in a tmpfs and a background process, neither of which survives a reboot
// or a lost snapshot.
type memorySession struct {
	id, token, pid string
}

func (e *e2e) newMemorySession(args ...string) memorySession {
	e.t.Helper()
	s := memorySession{id: e.create(args...), token: randomToken()}
	s.pid = strings.TrimSpace(e.ok(nil, "exec", s.id, "--", "sh", "-c",
		"echo "+s.token+" > /dev/shm/marker; sleep 100000 </dev/null >/dev/null 2>&1 & echo $!"))
	return s
}

func randomToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// checkMemory checks that s is running or parked, and that its tmpfs
// marker and background process are there (an exec wakes it if parked).
func (e *e2e) checkMemory(s memorySession, after string) {
	e.t.Helper()
	got, ok := e.sessions()[s.id]
	if !ok || (got.State != api.StateRunning && got.State != api.StateParked) {
		e.t.Fatalf("after %s: session %s is %q (%s), want running or parked%s", after, s.id, got.State, got.Error, e.serverLog())
	}
	out, errOut, code := e.run(nil, "exec", s.id, "--", "sh", "-c", "cat /dev/shm/marker; kill -0 "+s.pid+" && echo alive")
	if want := s.token + "\nalive\n"; code != 0 || out != want {
		e.t.Fatalf("after %s (session was %s): exec: exit %d, %q (stderr %q), want %q: memory lost%s", after, got.State, code, out, errOut, want, e.serverLog())
	}
}

// checkClean checks that nothing is left of VMs no session runs: every
// QEMU process of the home is a spare or runs a running session, every
// session dir belongs to a listed session, every spare dir has its
// process, every cgroup a VM. Spares start in the background, so it waits
// for a settled view.
func (e *e2e) checkClean(after string) {
	e.t.Helper()
	var problems []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		problems = e.leftovers()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("after %s: left behind:\n  %s%s", after, strings.Join(problems, "\n  "), e.serverLog())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *e2e) leftovers() []string {
	var out []string
	ls := e.sessions()
	sessions := filepath.Join(e.home, "sessions")
	spareDir := filepath.Join(sessions, ".spares")
	for _, p := range qemu.Procs(sessions) {
		if p.Spare {
			continue
		}
		if s, ok := ls[p.ID]; !ok || s.State != api.StateRunning {
			out = append(out, fmt.Sprintf("QEMU %d runs %s, which is %q", p.PID, p.ID, s.State))
		}
	}
	ents, _ := os.ReadDir(sessions)
	for _, d := range ents {
		name := d.Name()
		switch {
		case name == ".spares" || name == ".clone-files":
		case strings.HasPrefix(name, "s-"):
			if s, ok := ls[name]; !ok {
				out = append(out, "session dir "+name+" of no session")
			} else if s.State == api.StateFailed && strings.Contains(s.Error, "being created") {
				out = append(out, "session dir "+name+" of a create cut short")
			}
		}
	}
	spares, _ := os.ReadDir(spareDir)
	procs := qemu.Procs(spareDir)
	live := map[string]bool{} // VMs and spares that may hold a cgroup
	for _, d := range spares {
		e.seen[d.Name()] = true
		used := false
		for _, p := range procs {
			for _, a := range p.Args {
				if strings.Contains(a, filepath.Join(spareDir, d.Name())+"/") {
					used = true
				}
			}
		}
		if !used {
			out = append(out, "spare dir "+d.Name()+" with no process")
		}
		live[d.Name()] = true
	}
	for id, s := range ls {
		if s.State == api.StateRunning {
			live[id] = true
		}
	}
	for _, ctrl := range []string{"memory", "cpu"} {
		cg, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctrl, "cove"))
		for _, d := range cg {
			id, ours := qemu.CgroupID(e.home, d.Name())
			if d.IsDir() && ours && e.seen[id] && !live[id] {
				out = append(out, "cgroup "+ctrl+"/cove/"+d.Name()+" of no VM")
			}
		}
	}
	return out
}

// newIDs returns the ids listed now that were not in before.
func newIDs(before, now map[string]api.Session) []string {
	var out []string
	for id := range now {
		if _, ok := before[id]; !ok {
			out = append(out, id)
		}
	}
	return out
}

// TestCrashPoints walks every named step of create, park, wake, clone,
// pool refill, template rebuild, trigger delivery and rm, killing the
// server there (SIGKILL, by itself: the step is armed through
// COVE_TEST_CRASH_AT) and checking what a new server makes of it. The
// steps are walked in groups, each on a home, server and session of its
// own, two groups at a time (go test's -parallel): a group's crashes and
// checks touch nothing of another's.
func TestCrashPoints(t *testing.T) {
	var mu sync.Mutex
	var walked []string
	// A cleanup runs once the parallel groups are done.
	t.Cleanup(func() { t.Logf("crash points walked: %d: %s", len(walked), strings.Join(walked, " ")) })
	group := func(name string, walk func(t *testing.T, e *e2e, walked func(point string))) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t)
			e.startServer()
			walk(t, e, func(p string) {
				mu.Lock()
				defer mu.Unlock()
				walked = append(walked, p)
			})
			e.checkClean("all " + name + " crash points")
			e.stopAll()
		})
	}

	group("park", func(t *testing.T, e *e2e, walked func(string)) {
		s := e.newMemorySession("--memory", "256")
		for _, p := range []string{"park.recorded", "park.detached", "save.migrating", "save.migrated", "save.synced", "save.renamed", "park.saved", "park.done"} {
			e.crashAt(p, func() { e.run(nil, "park", s.id) })
			e.checkMemory(s, "a crash at "+p)
			e.checkClean("a crash at " + p)
			walked(p)
		}
	})
	group("wake", func(t *testing.T, e *e2e, walked func(string)) {
		s := e.newMemorySession("--memory", "256")
		for _, p := range []string{"wake.recorded", "restore.spawned", "restore.loaded", "wake.handle-recorded", "restore.continued", "wake.connected"} {
			e.ok(nil, "park", s.id)
			e.crashAt(p, func() { e.run(nil, "wake", s.id) })
			e.checkMemory(s, "a crash at "+p)
			e.checkClean("a crash at " + p)
			walked(p)
		}
	})
	group("checkpoint", func(t *testing.T, e *e2e, walked func(string)) {
		s := e.newMemorySession("--memory", "256")
		ckpts := filepath.Join(e.home, "sessions", s.id, "checkpoints")
		for _, p := range []string{"checkpoint.recorded", "checkpoint.stopped", "checkpoint.disk-switched", "checkpoint.migrated",
			"checkpoint.paused", "checkpoint.switched", "checkpoint.renamed"} {
			e.crashAt(p, func() { e.run(nil, "checkpoint", "create", s.id) })
			e.checkMemory(s, "a crash at "+p)
			e.checkClean("a crash at " + p)
			if out := e.ok(nil, "checkpoint", "ls", s.id); strings.Count(out, "\n") != 1 {
				t.Fatalf("after a crash at %s: checkpoints listed:\n%s", p, out)
			}
			if ents, _ := os.ReadDir(ckpts); len(ents) != 0 {
				t.Fatalf("after a crash at %s: %d checkpoint dirs left (%s…)", p, len(ents), ents[0].Name())
			}
			// The record names the disk the VM writes: a park and wake
			// keep the memory (and the disk).
			e.ok(nil, "park", s.id)
			e.checkMemory(s, "a park and wake after a crash at "+p)
			walked(p)
		}
	})
	group("rollback-fork", func(t *testing.T, e *e2e, walked func(string)) {
		s := e.newMemorySession("--memory", "256")
		e.ok(nil, "checkpoint", "create", s.id, "--name", "good")
		for _, p := range []string{"rollback.staged", "rollback.recorded", "rollback.stopped", "rollback.moving"} {
			e.crashAt(p, func() { e.run(nil, "rollback", s.id, "good") })
			e.checkMemory(s, "a crash at "+p)
			e.checkClean("a crash at " + p)
			if _, err := os.Stat(filepath.Join(e.home, "sessions", s.id, "rollback.tmp")); err == nil {
				t.Fatalf("after a crash at %s: the staged rollback is left", p)
			}
			walked(p)
		}
		// A fork is recorded once it runs, as a clone is: a crash before
		// leaves no session, and nothing of it.
		for _, p := range []string{"restore.spawned", "restore.loaded", "restore.continued", "fork.restored"} {
			before := e.sessions()
			e.crashAt(p, func() { e.run(nil, "fork", s.id, "--from", "good") })
			if ids := newIDs(before, e.sessions()); len(ids) != 0 {
				t.Fatalf("after a crash at %s during a fork: sessions %v appeared, want none", p, ids)
			}
			e.checkMemory(s, "a crash at "+p+" during a fork")
			e.checkClean("a crash at " + p + " during a fork")
			walked("fork:" + p)
		}
		e.ok(nil, "checkpoint", "rm", s.id, "good")
	})
	group("create", func(t *testing.T, e *e2e, walked func(string)) {
		for _, p := range []string{"create.recorded", "create.booted", "create.done"} {
			before := e.sessions()
			e.crashAt(p, func() { e.run(nil, "session", "create", "--memory", "256") })
			now := e.sessions()
			for _, id := range newIDs(before, now) {
				switch got := now[id]; {
				case got.State == api.StateRunning:
					e.wantRunning(id)
				case got.State == api.StateFailed && got.Error != "":
				default:
					t.Fatalf("after a crash at %s: the new session %s is %q (%q), want running, or failed with its reason", p, id, got.State, got.Error)
				}
			}
			e.checkClean("a crash at " + p)
			for _, id := range newIDs(before, now) {
				e.ok(nil, "rm", id)
			}
			walked(p)
		}
	})
	const t1Setup = "echo built > /root/built"
	group("clone-rm", func(t *testing.T, e *e2e, walked func(string)) {
		e.ok(nil, "template", "create", "t1", "--memory", "256", "--setup", t1Setup)
		for _, p := range []string{"restore.spawned", "restore.loaded", "restore.continued", "clone.restored"} {
			before := e.sessions()
			e.crashAt(p, func() { e.run(nil, "session", "create", "--template", "t1") })
			if ids := newIDs(before, e.sessions()); len(ids) != 0 {
				t.Fatalf("after a crash at %s during a clone: sessions %v appeared, want none (a clone is recorded once it runs)", p, ids)
			}
			e.checkClean("a crash at " + p + " during a clone")
			walked("clone:" + p)
		}
		for _, p := range []string{"rm.recorded", "rm.stopped", "rm.files-removed"} {
			id := e.create("--template", "t1")
			e.crashAt(p, func() { e.run(nil, "rm", id) })
			if got, ok := e.sessions()[id]; ok {
				t.Fatalf("after a crash at %s: the removed session is still listed: %+v", p, got)
			}
			if _, err := os.Stat(filepath.Join(e.home, "sessions", id)); err == nil {
				t.Fatalf("after a crash at %s: the removed session's dir is still there", p)
			}
			e.checkClean("a crash at " + p)
			walked(p)
		}
		e.ok(nil, "template", "rm", "t1")
	})
	group("build", func(t *testing.T, e *e2e, walked func(string)) {
		e.ok(nil, "template", "create", "t1", "--memory", "256", "--setup", t1Setup)
		for _, p := range []string{"build.claimed", "build.recorded", "build.saved", "build.swapped"} {
			e.crashAt(p, func() { e.run(nil, "template", "rebuild", "t1", "--wait", "5m") })
			var tpl api.Template
			if err := json.Unmarshal([]byte(e.ok(nil, "template", "inspect", "t1")), &tpl); err != nil {
				t.Fatal(err)
			}
			if tpl.State != api.TemplateReady {
				t.Fatalf("after a crash at %s: template t1 is %s (%s), want ready", p, tpl.State, tpl.Error)
			}
			id := e.create("--template", "t1")
			if out := e.ok(nil, "exec", id, "--", "cat", "/root/built"); out != "built\n" {
				t.Fatalf("after a crash at %s: a clone of t1 reads %q", p, out)
			}
			e.ok(nil, "rm", id)
			e.checkClean("a crash at " + p)
			walked(p)
		}
		e.ok(nil, "template", "rm", "t1")
	})
	group("template-pool", func(t *testing.T, e *e2e, walked func(string)) {
		for _, p := range []string{"template.recorded", "template.built"} {
			e.crashAt(p, func() { e.run(nil, "template", "create", "t3", "--memory", "256") })
			var tpl api.Template
			if err := json.Unmarshal([]byte(e.ok(nil, "template", "inspect", "t3")), &tpl); err != nil {
				t.Fatal(err)
			}
			if tpl.State != api.TemplateFailed || tpl.Error == "" {
				t.Fatalf("after a crash at %s: template t3 is %s (%q), want failed with the reason", p, tpl.State, tpl.Error)
			}
			if procs := qemu.Procs(filepath.Join(e.home, "templates")); len(procs) != 0 {
				t.Fatalf("after a crash at %s: %d QEMU processes of the template build left running", p, len(procs))
			}
			e.ok(nil, "template", "rm", "t3")
			e.checkClean("a crash at " + p)
			walked(p)
		}
		e.ok(nil, "template", "create", "t2", "--memory", "256", "--pool", "1")
		// The next server refills the pool as it starts: it dies there.
		e.crashAt("pool.restored", nil)
		id := e.create("--template", "t2")
		e.wantRunning(id)
		e.ok(nil, "rm", id)
		e.ok(nil, "template", "rm", "t2")
		e.checkClean("a crash at pool.restored")
		walked("pool.restored")
	})
	group("deliver", func(t *testing.T, e *e2e, walked func(string)) {
		s := e.newMemorySession("--memory", "256")
		secret := filepath.Join(t.TempDir(), "ci.secret")
		if err := os.WriteFile(secret, []byte("crash-secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.ok(nil, "hook", "add", "ci", "--secret-file", secret)
		for i, p := range []string{"deliver.claimed", "deliver.woken", "deliver.written"} {
			name := fmt.Sprintf("done-%d", i)
			e.ok(nil, "park", s.id, "--until", "ci:"+name)
			e.crashAt(p, func() {
				body := []byte(`{"event":"` + name + `"}`)
				req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+"/v1/hooks/ci", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(trigger.HeaderDelivery, "crash-"+name)
				req.Header.Set(trigger.HeaderSignature, trigger.Sign([]byte("crash-secret"), body))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("signed delivery answered %d, want 202", resp.StatusCode)
				}
			})
			// The delivery is pending or done: the event reaches the
			// guest, once.
			count := func() string {
				out, _, _ := e.run(nil, "exec", s.id, "--", "sh", "-c",
					`grep -l '"name": "`+name+`"' /run/cove/events/*.json /run/cove/events/taken/*.json 2>/dev/null | wc -l`)
				return strings.TrimSpace(out)
			}
			deadline := time.Now().Add(2 * time.Minute)
			for count() == "0" {
				if time.Now().After(deadline) {
					t.Fatalf("after a crash at %s: the event never reached the guest%s", p, e.serverLog())
				}
				time.Sleep(200 * time.Millisecond)
			}
			if n := count(); n != "1" {
				t.Fatalf("after a crash at %s: the guest holds the event %s times, want once", p, n)
			}
			e.checkMemory(s, "a crash at "+p)
			walked(p)
		}
	})
}

// stopAll removes every session left and stops the server (its spares go
// with it).
func (e *e2e) stopAll() {
	e.t.Helper()
	for id := range e.sessions() {
		e.ok(nil, "rm", id)
	}
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		e.t.Fatal(err)
	}
}

// TestCrashRandom kills the server (SIGKILL, from outside) at random
// moments during park/wake cycles and template clones: every session is
// running or parked afterwards with its memory intact, and no clone cut
// short leaves anything behind. COVE_CRASH_KILLS sets the number of kills
// (default 30; make soak runs 300: TestCrashPoints kills at every named
// step in make test already), shared by two homes, each with its own
// server and session, that run at once.
func TestCrashRandom(t *testing.T) {
	kills := envIntDefault("COVE_CRASH_KILLS", 30)
	var mu sync.Mutex
	survived, interrupted := 0, 0
	// A cleanup runs once the parallel homes are done; the line is the
	// top-level test's, where covebench reads it.
	t.Cleanup(func() {
		t.Logf("random kills: %d of %d survived; %d of them cut an operation short", survived, kills, interrupted)
	})
	for i, n := range []int{kills - kills/2, kills / 2} {
		if n == 0 {
			continue
		}
		t.Run(fmt.Sprintf("home-%d", i+1), func(t *testing.T) {
			t.Parallel()
			s, c := crashRandom(t, n)
			mu.Lock()
			defer mu.Unlock()
			survived, interrupted = survived+s, interrupted+c
		})
	}
}

// crashRandom is TestCrashRandom on one home: it kills the server kills
// times and returns how many times the session survived, and how many
// of the kills cut an operation short.
func crashRandom(t *testing.T, kills int) (survived, interrupted int) {
	e := newE2E(t)
	e.startServer()
	s := e.newMemorySession("--memory", "256")
	e.ok(nil, "template", "create", "tr", "--memory", "256")
	for i := 0; i < kills; i++ {
		delay := randDuration(300 * time.Millisecond)
		var op []string
		switch i % 3 {
		case 0:
			op = []string{"park", s.id}
		case 1:
			e.ok(nil, "park", s.id)
			op = []string{"wake", s.id}
		case 2:
			op = []string{"session", "create", "--template", "tr"}
		}
		before := e.sessions()
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.runQuiet(op...)
		}()
		time.Sleep(delay)
		if err := e.stopServer(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("kill %d: %v", i, err)
		}
		<-done
		e.startServer()
		if log := e.srv.log.String(); strings.Contains(log, "cut short") || strings.Contains(log, "orphan QEMU") {
			interrupted++ // the kill cut an operation: the new server settled it
		}
		e.checkMemory(s, fmt.Sprintf("kill %d (%v after %q began)", i, delay, op))
		for _, id := range newIDs(before, e.sessions()) {
			// A clone the kill did not cut short.
			e.wantRunning(id)
			e.ok(nil, "rm", id)
		}
		e.checkClean(fmt.Sprintf("kill %d (%v after %q began)", i, delay, op))
		survived++
	}
	t.Logf("random kills on this home: %d of %d survived; %d of them cut an operation short", survived, kills, interrupted)
	e.ok(nil, "template", "rm", "tr")
	e.stopAll()
	return survived, interrupted
}

// runQuiet runs a cove command whose result does not matter (the server
// is killed under it).
func (e *e2e) runQuiet(args ...string) {
	cmd := e.command(args...)
	_ = cmd.Run()
}

func randDuration(max time.Duration) time.Duration {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(max)))
	return time.Duration(n.Int64())
}

func envIntDefault(key string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(key), &n); err == nil && n > 0 {
		return n
	}
	return def
}
