package agent_test

// These tests run the real guest handler in the test process, over a
// socket pair instead of a virtio-serial port: the host side is the real
// agentproto client. No VM is involved.
//
// The agent reaps its children with wait4(-1), so this package must not
// start processes any other way (no os/exec here), and all tests share one
// Agent: two reapers would steal each other's exit statuses.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/testenv"
)

var (
	agentOnce sync.Once
	theAgent  *agent.Agent
)

func sharedAgent() *agent.Agent {
	agentOnce.Do(func() {
		theAgent = agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	})
	return theAgent
}

// socketPair returns two connected, buffered unix stream sockets.
func socketPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host, guest = conn(fds[0], "host"), conn(fds[1], "guest")
	t.Cleanup(func() { host.Close(); guest.Close() })
	return host, guest
}

// serveGuest runs the guest side on conn as Agent.Serve does for one host
// connection: sync, then serve until the session ends.
func serveGuest(t *testing.T, guest net.Conn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if agentproto.GuestSync(guest, sharedAgent().SayHello) != nil {
			return
		}
		sharedAgent().ServeConn(ctx, guest)
	}()
	t.Cleanup(func() {
		cancel()
		guest.Close()
		<-done
	})
}

// connect returns a host client connected to the real agent handler
// through agentproto.Connect. Every dial is a fresh connection, as to a
// VM's chardev socket: a retried sync starts clean.
func connect(t *testing.T) *agentproto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) {
		host, guest := socketPair(t)
		serveGuest(t, guest)
		return host, nil
	})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var re *agentproto.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("got %v, want a guest error with code %s", err, code)
	}
	if re.Code != code {
		t.Fatalf("got code %s (%s), want %s", re.Code, re.Message, code)
	}
}

func TestHello(t *testing.T) {
	c := connect(t)
	h, err := c.Hello(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if h.Kernel != strings.TrimSpace(string(release)) {
		t.Errorf("kernel %q, want this machine's %q", h.Kernel, strings.TrimSpace(string(release)))
	}
	if h.Version != agent.Version {
		t.Errorf("version %q, want %q", h.Version, agent.Version)
	}
	if h.UptimeMillis <= 0 {
		t.Errorf("uptime %d ms, want positive", h.UptimeMillis)
	}
}

type result struct {
	stdout, stderr string
	exit           agentproto.Exit
}

// wait reads both outputs of p to the end and waits for it.
func wait(t *testing.T, p *agentproto.Process) result {
	t.Helper()
	var r result
	var errb bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&errb, p.Stderr()); close(done) }()
	out, _ := io.ReadAll(p.Stdout())
	<-done
	exit, err := p.Wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	r.stdout, r.stderr, r.exit = string(out), errb.String(), exit
	return r
}

func run(t *testing.T, c *agentproto.Client, x agentproto.Exec) result {
	t.Helper()
	p, err := c.Exec(ctxT(t), x)
	if err != nil {
		t.Fatalf("exec %q: %v", x.Argv, err)
	}
	t.Cleanup(func() { syscall.Kill(-p.PID, syscall.SIGKILL) }) // leftovers of the group
	return wait(t, p)
}

func TestExecSplitsOutputAndReportsExitCode(t *testing.T) {
	c := connect(t)
	r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", "echo out; echo err >&2; echo more; exit 3"}, Cwd: "/"})
	if r.stdout != "out\nmore\n" || r.stderr != "err\n" {
		t.Errorf("stdout %q, stderr %q; want \"out\\nmore\\n\", \"err\\n\"", r.stdout, r.stderr)
	}
	if r.exit.Code != 3 || r.exit.Signal != 0 || r.exit.TimedOut {
		t.Errorf("exit %+v, want code 3", r.exit)
	}
}

func TestExecEnvironmentAndCwd(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	// No PATH given: the agent adds its default one, so "sh" is found.
	r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", `echo "$FOO"; echo "$HOME"; pwd`}, Env: []string{"FOO=bar"}, Cwd: dir})
	if want := "bar\n/root\n" + dir + "\n"; r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

// TestExecAsUser: a command run as a guest user (Exec.User) has that
// user's uid, gid and groups, set by the agent itself (the tiny image's
// setpriv cannot change uids), and its HOME, USER and LOGNAME; the
// guest's permissions hold for it.
func TestExecAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "changing users needs root, as the agent is in the guest")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		testenv.Skipf(t, "this host has no user nobody: %v", err)
	}
	groups, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t)
	if !c.Can(agentproto.FeatureExecUser) {
		t.Errorf("the agent's hello does not say it runs commands as users")
	}
	private := t.TempDir() // 0700, root's
	r := run(t, c, agentproto.Exec{
		Argv: []string{"sh", "-c", `id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; touch "$1/x" 2>/dev/null || echo refused`, "sh", private},
		Cwd:  "/", User: "nobody",
	})
	lines := strings.Split(r.stdout, "\n")
	slices.Sort(groups)
	var ids []string
	if len(lines) == 6 {
		ids = strings.Fields(lines[2])
		slices.Sort(ids)
	}
	if len(lines) != 6 || lines[0] != u.Uid || lines[1] != u.Gid || !slices.Equal(ids, groups) ||
		lines[3] != u.HomeDir+" nobody nobody" || lines[4] != "refused" || r.exit.Code != 0 {
		t.Errorf("as nobody: stdout %q, stderr %q, exit %+v; want uid %s, gid %s, groups %v, HOME %s, a refused write", r.stdout, r.stderr, r.exit, u.Uid, u.Gid, groups, u.HomeDir)
	}
	// Its own Env wins over the user's; no Cwd: its home, or / where
	// that is missing (nobody's is /nonexistent).
	r = run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", `echo "$HOME"; pwd`}, Env: []string{"HOME=/tmp"}, User: "nobody"})
	wd := u.HomeDir
	if _, err := os.Stat(wd); err != nil {
		wd = "/"
	}
	if want := "/tmp\n" + wd + "\n"; r.stdout != want {
		t.Errorf("as nobody with HOME set: stdout %q, want %q", r.stdout, want)
	}
}

func TestExecStdin(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(ctxT(t), agentproto.Exec{Argv: []string{"cat"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	in := make([]byte, 1<<20+17) // several frames and pipe buffers
	fill(in, 1)
	go func() {
		p.Write(in)
		p.CloseStdin()
	}()
	r := wait(t, p)
	if r.stdout != string(in) {
		t.Fatalf("cat echoed %d bytes that differ from the %d sent", len(r.stdout), len(in))
	}
	if r.exit.Code != 0 {
		t.Fatalf("exit %+v, want 0 after stdin EOF", r.exit)
	}
}

// TestExecTimeoutKillsTheCommand: a command past its timeout is killed
// with its whole process group and reported as timed out. The command
// would run for ten minutes: were the timeout ignored, the wait would end
// only with the test's context (ctxT), as an error.
func TestExecTimeoutKillsTheCommand(t *testing.T) {
	c := connect(t)
	r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", "sleep 600; echo not reached"}, Cwd: "/", Timeout: 300})
	if !r.exit.TimedOut || r.exit.Signal != int(syscall.SIGKILL) || r.exit.Code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit %+v, want timed out by SIGKILL (code 137)", r.exit)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q: the whole process group must die", r.stdout)
	}
}

func TestExecSignalReachesTheProcessGroup(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(ctxT(t), agentproto.Exec{Argv: []string{"sh", "-c", "echo ready; sleep 30; echo not reached"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	go io.Copy(&errb, p.Stderr())
	line := make([]byte, 6)
	if _, err := io.ReadFull(p.Stdout(), line); err != nil || string(line) != "ready\n" {
		t.Fatalf("first output %q, %v", line, err)
	}
	if err := p.Signal(int(syscall.SIGTERM)); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(p.Stdout())
	exit, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if exit.Signal != int(syscall.SIGTERM) || exit.Code != 128+int(syscall.SIGTERM) || exit.TimedOut {
		t.Errorf("exit %+v, want killed by SIGTERM", exit)
	}
	if len(rest) != 0 {
		t.Errorf("output after the signal: %q", rest)
	}
	if err := p.Signal(0); err == nil {
		t.Error("Signal(0) accepted; the client must refuse signal numbers outside 1..64")
	}
}

// TestExecDoesNotWaitForBackgroundChildren: the exec ends when its command
// does, though a background child still holds the output pipe open. The
// child sleeps for ten minutes and is still alive when the exec has
// ended; an exec that waited for the pipe would end only with the test's
// context (ctxT), as an error.
func TestExecDoesNotWaitForBackgroundChildren(t *testing.T) {
	c := connect(t)
	r := run(t, c, agentproto.Exec{Argv: []string{"sh", "-c", "sleep 600 & echo $!"}, Cwd: "/"})
	if r.exit.Code != 0 {
		t.Fatalf("exit %+v, want 0", r.exit)
	}
	pid := strings.TrimSpace(r.stdout)
	// A live process has its command line; a dead one (a zombie) has none.
	cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
	if err != nil || string(cmdline) != "sleep\x00600\x00" {
		t.Fatalf("background child %q after the exec ended: cmdline %q, %v; want the sleep still running", pid, cmdline, err)
	}
}

func TestExecTTY(t *testing.T) {
	if f, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err != nil {
		// A container without devpts: the guest always has it (the agent
		// mounts it at boot), so only this host cannot run the test.
		testenv.Skipf(t, "no pseudo-terminals here (%v)", err)
	} else {
		f.Close()
	}
	c := connect(t)
	r := run(t, c, agentproto.Exec{
		Argv: []string{"sh", "-c", `test -t 0 && test -t 1 && echo "tty $TERM"; stty size`},
		Cwd:  "/", TTY: true, Rows: 40, Cols: 100,
	})
	out := strings.ReplaceAll(r.stdout, "\r\n", "\n")
	if want := "tty xterm-256color\n40 100\n"; out != want {
		t.Fatalf("output %q, want %q", out, want)
	}
	if r.stderr != "" {
		t.Errorf("stderr %q: a terminal has one output", r.stderr)
	}
}

func TestExecErrors(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	cases := []struct {
		name string
		x    agentproto.Exec
		code string
	}{
		{"empty argv", agentproto.Exec{}, agentproto.CodeInvalid},
		{"missing executable", agentproto.Exec{Argv: []string{"no-such-command-cove"}, Cwd: "/"}, agentproto.CodeNotFound},
		{"missing absolute executable", agentproto.Exec{Argv: []string{"/no/such/bin"}, Cwd: "/"}, agentproto.CodeNotFound},
		{"missing cwd", agentproto.Exec{Argv: []string{"true"}, Cwd: "/no/such/dir"}, agentproto.CodeInvalid},
		{"unknown user", agentproto.Exec{Argv: []string{"true"}, Cwd: "/", User: "no-such-user-cove"}, agentproto.CodeNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := c.Exec(ctx, tc.x)
			if err == nil {
				p.Close()
			}
			wantCode(t, err, tc.code)
		})
	}
}

func TestFilesWriteReadStat(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	data := make([]byte, 3<<20+5) // a few MB: many frames, past the yamux window
	fill(data, 3)
	path := dir + "/sub/dir/file.bin" // parents are created
	if err := c.Write(ctx, path, 0o640, bytes.NewReader(data)); err != nil {
		t.Fatalf("write: %v", err)
	}
	onDisk, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("file on disk: %d bytes, %v; want the %d written", len(onDisk), err, len(data))
	}
	rc, err := c.Read(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	fi, err := c.Stat(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "file.bin" || fi.Size != int64(len(data)) || fi.Mode != 0o640 || fi.IsDir || fi.Symlink {
		t.Fatalf("stat %+v, want file.bin, %d bytes, mode 0640", fi, len(data))
	}

	// Overwriting replaces the whole file; mode 0 means 0644.
	if err := c.Write(ctx, path, 0, strings.NewReader("short")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "short" {
		t.Fatalf("after overwrite: %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode after write with mode 0: %v, want 0644", fi.Mode().Perm())
	}
	// An empty file.
	if err := c.Write(ctx, dir+"/empty", 0o600, strings.NewReader("")); err != nil {
		t.Fatal(err)
	}
	rc, err = c.Read(ctx, dir+"/empty")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(rc); err != nil || len(b) != 0 {
		t.Fatalf("empty file read as %q, %v", b, err)
	}
	rc.Close()
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir + "/sub/dir")
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want only file.bin", len(ents))
	}
}

func TestFilesStatSymlink(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	os.Symlink("/nonexistent/target", dir+"/link")
	fi, err := c.Stat(ctxT(t), dir+"/link")
	if err != nil {
		t.Fatalf("stat of a dangling symlink: %v (the final link is not followed)", err)
	}
	if !fi.Symlink || fi.IsDir {
		t.Fatalf("stat %+v, want a symlink", fi)
	}
}

func TestFilesListMkdirRemove(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	if err := c.Mkdir(ctx, dir+"/a/b/c"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, dir+"/a/b/c"); err != nil {
		t.Fatalf("mkdir of an existing directory: %v, want success", err)
	}
	os.WriteFile(dir+"/a/f.txt", []byte("hello"), 0o644)
	files, err := c.List(ctx, dir+"/a")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Name != "b" || !files[0].IsDir || files[1].Name != "f.txt" || files[1].Size != 5 || files[1].IsDir {
		t.Fatalf("list: %+v, want b/ and f.txt (5 bytes), sorted", files)
	}
	if files, err := c.List(ctx, dir+"/a/b/c"); err != nil || len(files) != 0 {
		t.Fatalf("list of an empty dir: %v, %v", files, err)
	}
	if err := c.Remove(ctx, dir+"/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir + "/a"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after remove: %v, want the tree gone", err)
	}
	_, err = c.Stat(ctx, dir+"/a")
	wantCode(t, err, agentproto.CodeNotFound)
}

func TestFilesErrors(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	os.WriteFile(dir+"/file", []byte("x"), 0o644)

	_, err := c.Read(ctx, dir+"/missing")
	wantCode(t, err, agentproto.CodeNotFound)
	_, err = c.Read(ctx, dir)
	wantCode(t, err, agentproto.CodeInvalid)
	_, err = c.Read(ctx, "relative/path")
	wantCode(t, err, agentproto.CodeInvalid)
	_, err = c.Stat(ctx, "relative")
	wantCode(t, err, agentproto.CodeInvalid)
	_, err = c.List(ctx, dir+"/missing")
	wantCode(t, err, agentproto.CodeNotFound)
	_, err = c.List(ctx, dir+"/file")
	wantCode(t, err, agentproto.CodeInvalid)
	wantCode(t, c.Remove(ctx, dir+"/missing"), agentproto.CodeNotFound)
	wantCode(t, c.Remove(ctx, "relative"), agentproto.CodeInvalid)
	wantCode(t, c.Mkdir(ctx, "relative"), agentproto.CodeInvalid)
	if err := c.Mkdir(ctx, dir+"/file/sub"); err == nil {
		t.Error("mkdir under a regular file succeeded")
	}
	wantCode(t, c.Write(ctx, dir, 0o644, strings.NewReader("x")), agentproto.CodeInvalid)
	_, err = c.TarGet(ctx, dir+"/missing")
	wantCode(t, err, agentproto.CodeNotFound)
}

// A refused upload ends with the guest's refusal even when the host has
// far more data to send than the stream window holds: a write that hung
// would end only with the test's context (ctxT), as a context error.
func TestFilesRefusedLargeWriteDoesNotHang(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	os.WriteFile(dir+"/file", []byte("x"), 0o644)
	ctx := ctxT(t)
	err := c.Write(ctx, dir+"/file/child", 0o644, bytes.NewReader(make([]byte, 16<<20)))
	var re *agentproto.RemoteError
	if !errors.As(err, &re) || ctx.Err() != nil {
		t.Fatalf("write below a regular file: %v (context: %v); want the guest's refusal", err, ctx.Err())
	}
	// The session still serves.
	if _, err := c.Stat(ctxT(t), dir+"/file"); err != nil {
		t.Fatalf("stat after the refused write: %v", err)
	}
}

func TestFilesTarRoundTrip(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	src := t.TempDir() + "/src"
	os.MkdirAll(src+"/sub/deeper", 0o755)
	big := make([]byte, 1<<20+3)
	fill(big, 5)
	os.WriteFile(src+"/a.txt", []byte("alpha\n"), 0o640)
	os.WriteFile(src+"/sub/b.bin", big, 0o600)
	os.WriteFile(src+"/sub/x.sh", []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("a.txt", src+"/link")

	rc, err := c.TarGet(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	archive, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("tar get: %v", err)
	}

	dst := t.TempDir() + "/dst"
	if err := c.TarPut(ctx, dst, bytes.NewReader(archive)); err != nil {
		t.Fatalf("tar put: %v", err)
	}
	// The archive's entries are named from the directory's base name.
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"src/a.txt", []byte("alpha\n"), 0o640},
		{"src/sub/b.bin", big, 0o600},
		{"src/sub/x.sh", []byte("#!/bin/sh\n"), 0o755},
	} {
		p := dst + "/" + f.name
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, f.data) {
			t.Errorf("%s: %d bytes, %v; want the %d of the source", f.name, len(b), err, len(f.data))
			continue
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.name, fi.Mode().Perm(), f.mode)
		}
	}
	if fi, err := os.Stat(dst + "/src/sub/deeper"); err != nil || !fi.IsDir() {
		t.Errorf("empty directory not restored: %v", err)
	}
	if l, err := os.Readlink(dst + "/src/link"); err != nil || l != "a.txt" {
		t.Errorf("symlink restored as %q, %v; want a.txt", l, err)
	}
}

func TestFilesTarPutRefusesEscapingEntries(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	base := t.TempDir()
	// Make a tar whose entry climbs out of the target directory.
	var buf bytes.Buffer
	if err := writeTar(&buf, "../escaped.txt", "gotcha"); err != nil {
		t.Fatal(err)
	}
	err := c.TarPut(ctx, base+"/dst", &buf)
	wantCode(t, err, agentproto.CodeInvalid)
	if _, err := os.Stat(base + "/escaped.txt"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the escaping entry was written: %v", err)
	}
	// Garbage instead of a tar archive is an error, not a hang.
	if err := c.TarPut(ctx, base+"/dst", strings.NewReader(strings.Repeat("not a tar ", 1000))); err == nil {
		t.Fatal("tar put of garbage succeeded")
	}
}

func TestConcurrentRequestsShareOneSession(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for i := range 16 {
		wg.Go(func() {
			data := bytes.Repeat([]byte{byte('a' + i)}, 100_000+i)
			p := dir + "/f" + string(rune('a'+i))
			if err := c.Write(ctx, p, 0o644, bytes.NewReader(data)); err != nil {
				errc <- err
				return
			}
			rc, err := c.Read(ctx, p)
			if err != nil {
				errc <- err
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, data) {
				errc <- errors.New("read back differs for " + p)
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// rawSession syncs by hand and returns a yamux client, for requests the
// Client never sends.
func rawSession(t *testing.T) *yamux.Session {
	t.Helper()
	host, guest := socketPair(t)
	serveGuest(t, guest)
	const nonce = "00112233aabbccdd"
	host.Write([]byte(agentproto.SyncMagic + nonce + "\n"))
	want := agentproto.AckMagic + nonce + "\n"
	got := make([]byte, len(want))
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(host, got); err != nil || string(got) != want {
		t.Fatalf("sync answer %q, %v; want %q", got, err, want)
	}
	host.SetReadDeadline(time.Time{})
	s, err := yamux.Client(host, agentproto.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestUnknownOpAndBadRequests(t *testing.T) {
	s := rawSession(t)

	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	agentproto.WriteJSON(st, agentproto.FrameRequest, agentproto.Request{Op: "format_disk"})
	var resp agentproto.Response
	if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Code != agentproto.CodeInvalid {
		t.Fatalf("unknown op answered %+v, want code invalid", resp)
	}
	st.Close()

	// A stream that does not start with a request is dropped, and so is
	// one whose request is not JSON; the session survives both.
	for _, first := range []struct {
		typ     byte
		payload string
	}{
		{agentproto.FrameStdout, "hello"},
		{agentproto.FrameRequest, "{not json"},
	} {
		st, err := s.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		agentproto.WriteFrame(st, first.typ, []byte(first.payload))
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := agentproto.ReadFrame(st, nil); err != io.EOF {
			t.Fatalf("after a bad first frame (%d %q): %v, want the stream closed", first.typ, first.payload, err)
		}
		st.Close()
	}

	st, err = s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	agentproto.WriteJSON(st, agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpHello})
	resp = agentproto.Response{}
	if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &resp); err != nil || resp.Hello == nil {
		t.Fatalf("hello after bad streams: %+v, %v", resp, err)
	}
}

// writeTar writes a tar archive of one regular file.
func writeTar(w io.Writer, name, content string) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, content); err != nil {
		return err
	}
	return tw.Close()
}

// fill fills b with reproducible pseudo-random bytes.
func fill(b []byte, seed byte) {
	rand.NewChaCha8([32]byte{seed}).Read(b)
}

// keepOpen is a guest port: the session's end stops its reader but does
// not close it.
type keepOpen struct{ net.Conn }

func (k keepOpen) Close() error { return k.SetReadDeadline(time.Now()) }

// TestDetachSettlesAndKeepsTheConnection checks that a detach returns only
// once the guest's session is over (the guest says so on the port), and
// that the connection under it stays open, as a park needs.
func TestDetachSettlesAndKeepsTheConnection(t *testing.T) {
	host, guest, c := detachOn(t, sharedAgent())
	// The connection is still open both ways.
	if _, err := guest.Write([]byte("x")); err != nil {
		t.Fatalf("guest write after detach: %v", err)
	}
	_ = host.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(host, b); err != nil || b[0] != 'x' {
		t.Fatalf("host read after detach: %q %v", b, err)
	}
	c.Close()
	if _, err := host.Write([]byte("y")); err == nil {
		t.Fatal("host connection still open after Close")
	}
}

// TestDetachSettlesWhileTheDiskHangs: a guest whose sync() never returns
// (its disk lost a completion) still says it is quiet within the bound,
// so the park goes on, and its connection's serve returns to take the
// next one, as a woken guest must, instead of waiting in sync() for ever.
func TestDetachSettlesWhileTheDiskHangs(t *testing.T) {
	a := agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	a.SetSync(func() { <-stuck }, 50*time.Millisecond)
	detachOn(t, a)
}

// detachOn serves one connection with a, says hello and detaches, and
// checks that the detach returned and then that the connection's serve
// ended (the agent's loop is free to take the next connection); it
// returns both ends and the client.
func detachOn(t *testing.T, a *agent.Agent) (host, guest net.Conn, c *agentproto.Client) {
	t.Helper()
	host, guest = socketPair(t)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		a.ServeConn(context.Background(), keepOpen{guest})
	}()
	c, err := agentproto.NewClient(host)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Hello(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctxT(t)); err != nil {
		t.Fatalf("detach: %v", err)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest session still runs after the detach returned")
	}
	return host, guest, c
}

// Reading a FIFO (or any non-regular file) is refused at once with a
// clear error, not a read that waits for a writer forever.
func TestFilesReadRefusesFIFO(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	if err := syscall.Mkfifo(dir+"/fifo", 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("fifo", dir+"/to-fifo"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir + "/fifo", dir + "/to-fifo", "/dev/null"} {
		_, err := c.Read(ctxT(t), p)
		wantCode(t, err, agentproto.CodeInvalid)
		if !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("read %s: %v, want it to say not a regular file", p, err)
		}
	}
	// A FIFO inside a directory is archived as a FIFO, not read.
	rc, err := c.TarGet(ctxT(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var fifo bool
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("tar of a directory holding a FIFO: %v", err)
		}
		fifo = fifo || hdr.Typeflag == tar.TypeFifo
	}
	if !fifo {
		t.Error("the FIFO is missing from the archive")
	}
}

// An upload is all or nothing: an archive that is garbage, ends early,
// holds an escaping entry after good ones, or clashes with the
// destination leaves the destination as it was, and is the request's
// fault (invalid), not an internal error.
func TestFilesTarPutIsAllOrNothing(t *testing.T) {
	c := connect(t)
	ctx := ctxT(t)
	good := tarOf(t, "keep/", "", "keep/a.txt", "first entry", "keep/b.txt", "second entry")
	escaping := tarOf(t, "new/", "", "new/ok.txt", "written first", "../escaped.txt", "gotcha")
	truncated := good[:4*512+6] // headers and a.txt whole, b.txt cut in its data
	tests := []struct {
		name string
		body []byte
	}{
		{"garbage", []byte(strings.Repeat("not a tar ", 1000))},
		{"short garbage", []byte("not a tar")},
		{"truncated", truncated},
		{"escaping entry after good ones", escaping},
		{"file where a directory is", tarOf(t, "new/x.txt", "x", "sub", "a file over the directory sub")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dst := base + "/dst"
			if err := os.MkdirAll(dst+"/sub", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst+"/old.txt", []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := c.TarPut(ctx, dst, bytes.NewReader(tt.body))
			wantCode(t, err, agentproto.CodeInvalid)
			if got := treeOf(t, base); got != "dst/ dst/old.txt dst/sub/" {
				t.Errorf("after the refused upload: %s, want dst as it was", got)
			}
		})
	}
	// Into a directory that did not exist: a refused upload removes the
	// directories it made.
	base := t.TempDir()
	wantCode(t, c.TarPut(ctx, base+"/a/b", bytes.NewReader(escaping)), agentproto.CodeInvalid)
	if got := treeOf(t, base); got != "" {
		t.Errorf("after a refused upload into a new directory: %s, want nothing", got)
	}
	// A good one merges into what is there.
	if err := c.TarPut(ctx, base+"/a", bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if err := c.TarPut(ctx, base+"/a", bytes.NewReader(tarOf(t, "keep/c.txt", "third"))); err != nil {
		t.Fatal(err)
	}
	if got := treeOf(t, base); got != "a/ a/keep/ a/keep/a.txt a/keep/b.txt a/keep/c.txt" {
		t.Errorf("after two uploads: %s", got)
	}
}

// tarOf makes an archive of name, content pairs; a name ending in "/" is
// a directory.
func tarOf(t *testing.T, pairs ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(pairs); i += 2 {
		hdr := &tar.Header{Name: pairs[i], Mode: 0o644, Size: int64(len(pairs[i+1])), Typeflag: tar.TypeReg}
		if strings.HasSuffix(pairs[i], "/") {
			hdr.Mode, hdr.Size, hdr.Typeflag = 0o755, 0, tar.TypeDir
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, pairs[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// treeOf lists what is under dir, directories with a trailing "/".
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(names, " ")
}
