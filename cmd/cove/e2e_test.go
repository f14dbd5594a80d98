package main_test

// The end-to-end test: the real cove and cove-agent binaries, a real
// 'cove server' child process booting real VMs, driven through the CLI as
// a user would.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// e2e is one cove home with its server and the binaries that drive it.
type e2e struct {
	t    *testing.T
	cove string // the cove binary
	home string // COVE_HOME
	addr string // host:port the server listens on
	// config is the client commands' XDG_CONFIG_HOME: where the CLI keeps
	// the sign-in it bootstraps from the admin token (never the real
	// home's).
	config string
	// token is the operator's API token that the CLI signed in with
	// (userToken); "" until asked for.
	token string

	srv *server
	// serverArgs are added to the command line of each server started.
	serverArgs []string
	// seen holds every session id and spare name this home has listed:
	// what the leftover checks look for among the host's cgroups, which
	// other tests' VMs share.
	seen map[string]bool
}

// server is a running 'cove server' child process.
type server struct {
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{} // closed when it exited; err is then set
	err  error
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newE2E builds the binaries and prepares a home whose kernel and images
// are the vmtest cache's (symlinked): the kernel is not fetched again, tiny
// is not rebuilt, and debian, once built by any run, is reused by all.
func newE2E(t *testing.T) *e2e {
	t.Helper()
	vmtest.Get(t) // skips without QEMU; fetches the kernel into the cache once
	cove := testBinaries(t)

	home := vmtest.Dir(t)
	for _, d := range []string{"kernels", "images"} {
		// On a fresh cache the images dir may not exist yet.
		if err := os.MkdirAll(filepath.Join(vmtest.CacheDir(), d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(vmtest.CacheDir(), d), filepath.Join(home, d)); err != nil {
			t.Fatal(err)
		}
	}
	e := &e2e{t: t, cove: cove, home: home, addr: freeAddr(t), config: t.TempDir(), seen: map[string]bool{}}
	// Registered first, so it runs last: whatever the test did, no QEMU
	// of this home outlives it.
	t.Cleanup(func() {
		e.stopServer(syscall.SIGKILL)
		for pid, cmd := range vmtest.QEMUProcs(home) {
			t.Errorf("cleanup: killing QEMU %d left running: %.160s", pid, cmd)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return e
}

// binaries are the cove and cove-agent binaries built from this tree,
// once per test process: every e2e test runs the same ones, and a build
// (a link of each) takes seconds of the machine's few cores.
var binaries struct {
	once sync.Once
	dir  string // removed by TestMain
	cove string
	err  error
}

// testBinaries returns the cove binary, with cove-agent beside it (where
// the server looks for it), building both on first use.
func testBinaries(t *testing.T) string {
	t.Helper()
	binaries.once.Do(func() {
		start := time.Now()
		dir, err := os.MkdirTemp("", "cove-e2e-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.dir = dir
		if binaries.cove, err = vmtest.BuildCove(dir); err != nil {
			binaries.err = err
			return
		}
		if _, err := vmtest.BuildAgent(dir); err != nil {
			binaries.err = err
			return
		}
		t.Logf("built cove and cove-agent in %s", time.Since(start).Round(time.Millisecond))
	})
	if binaries.err != nil {
		t.Fatalf("build the binaries: %v", binaries.err)
	}
	return binaries.cove
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServer starts 'cove server' on e.home, with env added to its
// environment, and waits for /healthz.
func (e *e2e) startServer(env ...string) {
	t := e.t
	t.Helper()
	start := time.Now()
	s := e.launchServer(env...)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-s.done:
			t.Fatalf("cove server exited during start (%v):\n%s", s.err, s.log)
		default:
		}
		resp, err := http.Get("http://" + e.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("server up in %s", time.Since(start).Round(time.Millisecond))
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cove server not healthy after 2 minutes:\n%s", s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// launchServer starts 'cove server' on e.home, with env added to its
// environment, and returns at once.
func (e *e2e) launchServer(env ...string) *server {
	t := e.t
	t.Helper()
	s := &server{log: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(e.cove, append([]string{"server", "--listen", e.addr, "--home", e.home, "--build-images", "tiny"}, e.serverArgs...)...)
	s.cmd.Env = append(append(os.Environ(), "COVE_HOME="+e.home), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	e.srv = s
	return s
}

// stopServer sends sig to the server and waits for it to exit; it returns
// the exit error. A stopped server is left alone.
func (e *e2e) stopServer(sig syscall.Signal) error {
	s := e.srv
	if s == nil {
		return nil
	}
	e.srv = nil
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("server did not exit within 30s of %v", sig)
	}
	return s.err
}

// run runs a cove client command and returns its output and exit status.
func (e *e2e) run(stdin []byte, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := e.command(args...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = e.clientEnv()
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		e.t.Fatalf("cove %q: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// command is a cove client command against e's server.
func (e *e2e) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e.cove, args...)
	cmd.Env = e.clientEnv()
	return cmd
}

func (e *e2e) clientEnv() []string {
	return append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "COVE_")
	}), "COVE_ADDR="+e.addr, "COVE_HOME="+e.home, "XDG_CONFIG_HOME="+e.config)
}

// userToken is the API token of the server's first admin user that the
// CLI signed in with, bootstrapping from the admin token as on an
// operator's host (a 'cove ls' signs in first if none did): what tests
// that speak HTTP themselves act with, as the admin token only
// bootstraps.
func (e *e2e) userToken() string {
	e.t.Helper()
	if e.token != "" {
		return e.token
	}
	e.ok(nil, "ls")
	path := filepath.Join(e.config, "cove", "credentials.json")
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatalf("the CLI's sign-in: %v", err)
	}
	var creds struct {
		Servers map[string]struct {
			Token string `json:"token"`
		} `json:"servers"`
	}
	if err := json.Unmarshal(b, &creds); err != nil || creds.Servers["http://"+e.addr].Token == "" {
		e.t.Fatalf("%s holds no sign-in to http://%s (%v): %s", path, e.addr, err, b)
	}
	e.token = creds.Servers["http://"+e.addr].Token
	return e.token
}

// ok runs a cove command that must succeed and returns its stdout.
func (e *e2e) ok(stdin []byte, args ...string) string {
	e.t.Helper()
	out, errOut, code := e.run(stdin, args...)
	if code != 0 {
		e.t.Fatalf("cove %q: exit %d\nstdout: %s\nstderr: %s%s", args, code, out, errOut, e.serverLog())
	}
	return out
}

func (e *e2e) serverLog() string {
	if e.srv == nil {
		return ""
	}
	log := e.srv.log.String()
	if len(log) > 4000 {
		log = log[len(log)-4000:]
	}
	return "\nserver log (tail):\n" + log
}

// sessions runs 'cove ls --json'.
func (e *e2e) sessions() map[string]api.Session {
	e.t.Helper()
	var ss []api.Session
	out := e.ok(nil, "ls", "--json")
	if err := json.Unmarshal([]byte(out), &ss); err != nil {
		e.t.Fatalf("ls --json: %v: %q", err, out)
	}
	m := map[string]api.Session{}
	for _, s := range ss {
		m[s.ID] = s
		e.seen[s.ID] = true
	}
	return m
}

var idLine = regexp.MustCompile(`^[a-z0-9-]+\n$`)

// create runs 'cove session create' and checks it prints an id alone.
func (e *e2e) create(args ...string) string {
	e.t.Helper()
	start := time.Now()
	out := e.ok(nil, append([]string{"session", "create"}, args...)...)
	if !idLine.MatchString(out) {
		e.t.Fatalf("session create printed %q, want the id alone on a line", out)
	}
	id := strings.TrimSpace(out)
	e.t.Logf("session create %q: %s in %s", args, id, time.Since(start).Round(time.Millisecond))
	return id
}

// wantRunning checks, through the CLI, that id is running and answers.
func (e *e2e) wantRunning(id string) {
	e.t.Helper()
	if s, ok := e.sessions()[id]; !ok || s.State != api.StateRunning {
		e.t.Fatalf("session %s: %+v (listed %v), want running%s", id, s, ok, e.serverLog())
	}
	if got := e.ok(nil, "exec", id, "--", "echo", "up"); got != "up\n" {
		e.t.Fatalf("exec in %s: %q", id, got)
	}
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()

	var s1 string
	if !t.Run("CreateListExec", func(t *testing.T) {
		s1 = e.create()
		table := e.ok(nil, "ls")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(s1) + `\s+running\s+tiny\s`).MatchString(table) {
			t.Fatalf("ls does not show %s running tiny:\n%s", s1, table)
		}
		if s, ok := e.sessions()[s1]; !ok || s.State != api.StateRunning || s.Image != "tiny" || s.MemoryMiB != 512 {
			t.Fatalf("ls --json: %+v", s)
		}

		for _, code := range []int{0, 7, 255} {
			if _, _, got := e.run(nil, "exec", s1, "--", "sh", "-c", fmt.Sprintf("exit %d", code)); got != code {
				t.Errorf("exec exit %d: cove exited %d", code, got)
			}
		}
		out, errOut, code := e.run(nil, "exec", s1, "--", "sh", "-c", "echo out; echo err >&2")
		if out != "out\n" || errOut != "err\n" || code != 0 {
			t.Errorf("exec streams: stdout %q stderr %q exit %d", out, errOut, code)
		}
		if got := e.ok([]byte("piped in\n"), "exec", s1, "--", "cat"); got != "piped in\n" {
			t.Errorf("stdin through cat: %q", got)
		}
		big := make([]byte, 300<<10)
		rand.Read(big)
		sum := sha256.Sum256(big)
		if got := e.ok(big, "exec", s1, "--", "sha256sum"); !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
			t.Errorf("300 KiB stdin: guest sha256 %q, want %x", got, sum)
		}
		if got := e.ok(nil, "exec", "-e", "A=b c", "-w", "/tmp", s1, "--", "sh", "-c", `echo "$A" $(pwd)`); got != "b c /tmp\n" {
			t.Errorf("exec --env --cwd: %q", got)
		}
		if _, errOut, code := e.run(nil, "exec", s1, "--", "no-such-command"); code != 127 {
			t.Errorf("exec of a missing command: exit %d (%s), want 127", code, errOut)
		}
		if _, _, code := e.run(nil, "exec", "--timeout", "1s", s1, "--", "sleep", "100"); code != 124 {
			t.Errorf("exec past --timeout: exit %d, want 124", code)
		}
	}) {
		return
	}
	if !t.Run("UnknownSessionIs404", func(t *testing.T) { testUnknownSession(t, e) }) {
		return
	}
	if !t.Run("ExecTTY", func(t *testing.T) { testExecTTY(t, e, s1) }) {
		return
	}

	if !t.Run("CopyTreeInAndOut", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "proj")
		writeTree(t, src, map[string]string{
			"README":             "top\n",
			"bin/run.sh":         "#!/bin/sh\necho ran\n",
			"src/pkg/deep/x.txt": "deep\n",
			"src/empty":          "",
			"data.bin":           string(randomBytes(t, 200<<10)),
		})
		os.Chmod(filepath.Join(src, "bin/run.sh"), 0o755)
		os.Chmod(filepath.Join(src, "README"), 0o600)
		if err := os.Symlink("bin/run.sh", filepath.Join(src, "run")); err != nil {
			t.Fatal(err)
		}
		e.ok(nil, "cp", src, s1+":/root/")
		if got := e.ok(nil, "exec", s1, "--", "/root/proj/run"); got != "ran\n" {
			t.Fatalf("the copied script, run through its symlink in the guest: %q", got)
		}
		out := t.TempDir()
		e.ok(nil, "cp", s1+":/root/proj", out)
		if diff := compareTrees(t, src, filepath.Join(out, "proj")); diff != "" {
			t.Fatalf("tree after cp in and out differs:\n%s", diff)
		}
		// A single file, through stdin and stdout.
		e.ok([]byte("via stdin"), "cp", "-", s1+":/root/one.txt")
		if got := e.ok(nil, "cp", s1+":/root/one.txt", "-"); got != "via stdin" {
			t.Fatalf("cp - and back: %q", got)
		}
	}) {
		return
	}
	if !t.Run("ParkWakeKeepsTheMachine", func(t *testing.T) { testParkWake(t, e, s1) }) {
		return
	}

	if !t.Run("Remove", func(t *testing.T) {
		if got := e.ok(nil, "rm", s1); got != s1+"\n" {
			t.Fatalf("rm printed %q", got)
		}
		if _, ok := e.sessions()[s1]; ok {
			t.Fatalf("%s still listed after rm", s1)
		}
		if pid := qemu.PIDOf(e.home, s1); pid != 0 {
			t.Fatalf("QEMU %d of %s still runs after rm", pid, s1)
		}
		if _, err := os.Stat(filepath.Join(e.home, "sessions", s1)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("session dir of %s after rm: %v", s1, err)
		}
		if _, errOut, code := e.run(nil, "exec", s1, "--", "true"); code != 1 || !strings.Contains(errOut, "not found") {
			t.Fatalf("exec in a removed session: exit %d, %q; want 1 and not found", code, errOut)
		}
		if _, _, code := e.run(nil, "rm", s1); code != 1 {
			t.Fatalf("rm of a removed session: exit %d, want 1", code)
		}
	}) {
		return
	}

	var s2 string
	if !t.Run("SessionsOutliveServerRestarts", func(t *testing.T) {
		// With auto-wake off: NoAutoWake and ParkUntilSignedDelivery
		// use it next, and it must stay off across the restarts.
		s2 = e.create("-e", "WHO=s2", "--no-auto-wake")
		e.ok(nil, "exec", s2, "--", "sh", "-c", "echo kept > /root/state")
		pid := qemu.PIDOf(e.home, s2)

		// A crash: the server dies at once, the VM runs on.
		if err := e.stopServer(syscall.SIGKILL); err == nil {
			t.Fatal("server killed with SIGKILL exited 0")
		}
		if qemu.PIDOf(e.home, s2) != pid || pid == 0 {
			t.Fatalf("QEMU of %s did not outlive the server's SIGKILL", s2)
		}
		e.startServer()
		e.wantRunning(s2)
		if got := e.ok(nil, "exec", s2, "--", "sh", "-c", `cat /root/state; echo "$WHO"`); got != "kept\ns2\n" {
			t.Fatalf("after kill -9 and restart: %q, want the file and the session env", got)
		}

		// A clean stop: SIGTERM, exit 0, the VM runs on.
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Fatalf("server on SIGTERM: %v", err)
		}
		if qemu.PIDOf(e.home, s2) != pid {
			t.Fatalf("QEMU of %s did not outlive the server's SIGTERM", s2)
		}
		e.startServer()
		e.wantRunning(s2)
		if got := e.ok(nil, "exec", s2, "--", "cat", "/root/state"); got != "kept\n" {
			t.Fatalf("after SIGTERM and restart: %q", got)
		}
		if qemu.PIDOf(e.home, s2) != pid {
			t.Fatalf("%s runs in another QEMU after the restarts: want the same process", s2)
		}
	}) {
		return
	}
	if !t.Run("NoAutoWakeIs409", func(t *testing.T) { testNoAutoWake(t, e, s2) }) {
		return
	}
	if !t.Run("ParkUntilSignedDelivery", func(t *testing.T) { testParkUntilDelivery(t, e, s2) }) {
		return
	}

	var s3 string
	if !t.Run("DebianImage", func(t *testing.T) {
		start := time.Now()
		key := e.ok(nil, "image", "build", "debian")
		if !regexp.MustCompile(`^[0-9a-f]{16}\n$`).MatchString(key) {
			t.Fatalf("image build printed %q, want the key alone", key)
		}
		t.Logf("image build debian: %s", time.Since(start).Round(time.Millisecond))
		s3 = e.create("--image", "debian")
		script := `set -e
cd /root && mkdir repo && cd repo
git init -q
echo hello > greeting
git add greeting
git -c user.email=a@b -c user.name=n commit -q -m "first commit"
git log --oneline`
		out := e.ok(nil, "exec", s3, "--", "bash", "-c", script)
		if !regexp.MustCompile(`^[0-9a-f]{7,} first commit\n$`).MatchString(out) {
			t.Fatalf("git log --oneline: %q", out)
		}
		if got := e.ok(nil, "exec", s3, "--", "python3", "-c", "print(1+1)"); got != "2\n" {
			t.Fatalf("python3: %q", got)
		}
		if got := e.ok(nil, "exec", s3, "--", "cat", "/etc/cove-image"); got != "debian\n" {
			t.Fatalf("/etc/cove-image: %q", got)
		}
	}) {
		return
	}

	t.Run("ForksReseedPythonRandom", func(t *testing.T) {
		// A Python process running when the session is forked is in
		// every fork with the same generator state; once it reseeds
		// (random.seed(), from the kernel's pool, which each fork's is
		// reseeded), each fork draws its own numbers.
		script := `import os, random, signal, time
def draw(sig, frame):
    before = random.random()
    random.seed()
    open('/root/py-random', 'w').write('%r %r\n' % (before, random.random()))
signal.signal(signal.SIGUSR1, draw)
open('/root/py-ready', 'w').write(str(os.getpid()))
while True:
    time.sleep(0.1)
`
		e.ok([]byte(script), "exec", s3, "--", "bash", "-c", "cat > /root/pyrand.py")
		e.ok(nil, "exec", s3, "--", "bash", "-c",
			"setsid python3 /root/pyrand.py </dev/null >/dev/null 2>&1 & for i in $(seq 200); do test -s /root/py-ready && break; sleep 0.1; done; test -s /root/py-ready")
		forks := strings.Fields(e.ok(nil, "fork", s3, "-n", "2"))
		if len(forks) != 2 {
			t.Fatalf("fork -n 2 printed %q", forks)
		}
		var before, after []string
		for _, f := range forks {
			out := e.ok(nil, "exec", f, "--", "bash", "-c",
				"kill -USR1 $(cat /root/py-ready); for i in $(seq 200); do test -s /root/py-random && break; sleep 0.1; done; cat /root/py-random")
			fields := strings.Fields(out)
			if len(fields) != 2 {
				t.Fatalf("fork %s: the Python process printed %q", f, out)
			}
			before, after = append(before, fields[0]), append(after, fields[1])
			e.ok(nil, "rm", f)
		}
		t.Logf("Python's random in the two forks: before a reseed %v, after %v", before, after)
		if after[0] == after[1] {
			t.Fatalf("the forks drew the same number after random.seed(): %v", after)
		}
	})

	if !t.Run("TemplateFollowsRepoPushes", func(t *testing.T) {
		// A repository on the server's host, and GitHub's hook secret.
		src := filepath.Join(t.TempDir(), "acme", "web")
		gitIn := func(args ...string) string {
			t.Helper()
			cmd := exec.Command("git", append([]string{"-c", "user.name=n", "-c", "user.email=n@example.com"}, args...)...)
			cmd.Dir = src
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("git %v: %v: %s", args, err, out)
			}
			return strings.TrimSpace(string(out))
		}
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		gitIn("init", "-q", "-b", "main")
		commitApp := func(content string) string {
			if err := os.WriteFile(filepath.Join(src, "app.txt"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			gitIn("add", "app.txt")
			gitIn("commit", "-q", "-m", "app "+content)
			return gitIn("rev-parse", "HEAD")
		}
		c1 := commitApp("one\n")
		secret := filepath.Join(t.TempDir(), "github.secret")
		if err := os.WriteFile(secret, []byte("e2e-push-secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.ok(nil, "hook", "add", "github", "--secret-file", secret)

		line := e.ok(nil, "template", "create", "web", "--image", "debian", "--repo", src,
			"--setup", "cp /workspace/app.txt /var/built")
		if want := "version=1 commit=" + c1[:12]; !strings.Contains(line, want) {
			t.Fatalf("template create printed %q, want %q in it", line, want)
		}
		c2 := commitApp("two\n")
		body, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "before": c1, "after": c2,
			"repository": map[string]any{"full_name": "acme/web"}, "sender": map[string]any{"login": "mira-k"}})
		send := func(sig string) int {
			req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+"/v1/hooks/github", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-GitHub-Event", "push")
			req.Header.Set("X-GitHub-Delivery", "e2e-push-1")
			req.Header.Set("X-Hub-Signature-256", sig)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if code := send(trigger.Sign([]byte("wrong secret"), body)); code != http.StatusUnauthorized {
			t.Fatalf("a push signed with the wrong secret answered %d, want 401", code)
		}
		if code := send(trigger.Sign([]byte("e2e-push-secret"), body)); code != http.StatusAccepted {
			t.Fatalf("the signed push answered %d, want 202", code)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			var vs []api.TemplateVersion
			if err := json.Unmarshal([]byte(e.ok(nil, "template", "history", "web", "--json")), &vs); err != nil {
				t.Fatal(err)
			}
			if len(vs) == 2 && vs[1].State == api.VersionReady && vs[1].Current && vs[1].Commit == c2 && vs[1].Reason == "push e2e-push-1" {
				break
			}
			if len(vs) == 2 && vs[1].State == api.VersionFailed {
				t.Fatalf("version 2 failed: %s", vs[1].Error)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no version 2 after the push: %+v", vs)
			}
			time.Sleep(250 * time.Millisecond)
		}
		// Column widths follow the longest state shown (version 1 may
		// be "removed" by now, or not yet).
		if table := e.ok(nil, "template", "history", "web"); !regexp.MustCompile(`\n2\*\s+ready\s+` + c2[:12] + ` `).MatchString(table) {
			t.Fatalf("template history:\n%s", table)
		}
		id := e.create("--template", "web")
		if got := e.ok(nil, "exec", id, "--", "cat", "/var/built"); got != "two\n" {
			t.Fatalf("a session of version 2 reads %q", got)
		}
		e.ok(nil, "rm", id)
		e.ok(nil, "template", "rm", "web")
	}) {
		return
	}
	if !t.Run("FailedSessionIs409", func(t *testing.T) { testFailedSession(t, e, s3) }) {
		return
	}

	t.Run("RemoveAllLeavesNoQEMU", func(t *testing.T) {
		ids := []string{s2, s3}
		if got := e.ok(nil, append([]string{"rm"}, ids...)...); got != strings.Join(ids, "\n")+"\n" {
			t.Fatalf("rm printed %q", got)
		}
		if ss := e.sessions(); len(ss) != 0 {
			t.Fatalf("sessions after rm of all: %v", ss)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(vmtest.VMProcs(e.home)) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("QEMU processes left under %s: %v", e.home, vmtest.VMProcs(e.home))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Fatalf("server on SIGTERM: %v", err)
		}
	})
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// compareTrees describes how the trees at a and b differ in names, types,
// permission bits, contents and symlink targets; "" if they do not.
func compareTrees(t *testing.T, a, b string) string {
	t.Helper()
	describe := func(root string) map[string]string {
		m := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fi, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				m[rel] = "symlink -> " + target
			case fi.IsDir():
				m[rel] = fmt.Sprintf("dir %o", fi.Mode().Perm())
			default:
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				m[rel] = fmt.Sprintf("file %o %d %x", fi.Mode().Perm(), len(data), sum[:6])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := describe(a), describe(b)
	var diff []string
	for k, v := range ma {
		if mb[k] != v {
			diff = append(diff, fmt.Sprintf("%s: %q vs %q", k, v, mb[k]))
		}
	}
	for k, v := range mb {
		if _, ok := ma[k]; !ok {
			diff = append(diff, fmt.Sprintf("%s: missing vs %q", k, v))
		}
	}
	slices.Sort(diff)
	return strings.Join(diff, "\n")
}
