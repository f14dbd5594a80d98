// Package pgtest starts real PostgreSQL servers for tests: initdb in a
// temporary directory, the server on a free loopback port, run as an
// unprivileged user when the tests run as root (initdb and postgres refuse
// root), and one fresh database per test.
//
// A package's tests share one server (Shared), which Main stops at the
// end; a test that stops and starts its server takes one of its own
// (Fresh). No server outlives its test binary: each is killed when the
// binary dies (the parent-death signal), and one left by a binary killed
// before that was set is killed, and its directory removed, by the next
// Start.
package pgtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found: install postgresql-15 (make deps), or set COVE_PG_BIN to their directory")

// dirPrefix names the temporary directories of servers, so that Start can
// find those that dead test binaries left.
const dirPrefix = "cove-pgtest-"

// startTimeout bounds initdb plus the server's start.
const startTimeout = 2 * time.Minute

// Server is a PostgreSQL server of the tests' own. Its methods are safe for
// concurrent use.
type Server struct {
	// User and Password are the superuser's, Port the TCP port on
	// 127.0.0.1.
	User     string
	Password string
	Port     int

	bin  string // directory of initdb and postgres
	dir  string // temporary: data/, sock/, server.log, owner
	cred *syscall.Credential

	mu   sync.Mutex
	proc *exec.Cmd     // guarded by mu; nil while stopped
	done chan struct{} // guarded by mu; closed when proc has exited
	seq  int           // guarded by mu; databases made
}

// Bin returns the directory of the newest PostgreSQL server binaries
// installed: $COVE_PG_BIN, Debian's /usr/lib/postgresql/VERSION/bin, or
// the directory of initdb on PATH.
func Bin() (string, error) {
	ok := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("COVE_PG_BIN"); dir != "" {
		if !ok(dir) {
			return "", fmt.Errorf("pgtest: COVE_PG_BIN=%s has no initdb and postgres", dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(dir string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) }) // newest first
	for _, dir := range dirs {
		if ok(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && ok(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", ErrNotInstalled
}

// runAs is the credential the server runs with: none when the tests are
// not root; when they are, that of $COVE_PG_USER, cove-pg or cove-vm
// (users scripts/deps.sh makes), the first that exists.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	names := []string{"cove-pg", "cove-vm"}
	if n := os.Getenv("COVE_PG_USER"); n != "" {
		names = []string{n}
	}
	for _, n := range names {
		u, err := user.Lookup(n)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, fmt.Errorf("pgtest: running as root, and none of the users %v exists to run PostgreSQL as (initdb refuses root): run scripts/deps.sh, or set COVE_PG_USER", names)
}

// Start makes a database cluster in a new temporary directory and starts
// its server on a free port of 127.0.0.1, returning once it takes
// connections. It fails with ErrNotInstalled where PostgreSQL is missing.
// Close stops it and removes the directory.
func Start(ctx context.Context) (_ *Server, err error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	CleanStale()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	dir, err := os.MkdirTemp(baseDir(), dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{User: "cove", Password: rand.Text(), bin: bin, dir: dir, cred: cred}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// The owner file names this process: a server whose owner is gone is
	// stale (CleanStale).
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sock"), 0o700); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if cred != nil {
		for _, p := range []string{dir, pwfile, filepath.Join(dir, "sock")} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, fmt.Errorf("pgtest: %w", err)
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", filepath.Join(dir, "data"), "-U", s.User, "--pwfile", pwfile,
		"--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := combinedOutputLocked(initdb); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	os.Remove(pwfile)

	// A port found free may be taken before the server binds it: try
	// another then.
	for try := 0; ; try++ {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
		err = s.Restart(ctx)
		if err == nil || try == 2 || !strings.Contains(err.Error(), "could not bind") {
			return s, err
		}
	}
}

// combinedOutputLocked is cmd.CombinedOutput run from a thread of its
// own, locked for as long as cmd runs: cmd's parent-death signal comes
// when the thread that started it ends (see Restart), and a test beside
// this one whose goroutine exits locked to its thread (a session
// manager's clone-files loop) ended the thread that had started initdb,
// killing it mid-way.
func combinedOutputLocked(cmd *exec.Cmd) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		out, err := cmd.CombinedOutput()
		done <- result{out, err}
	}()
	r := <-done
	return r.out, r.err
}

// baseDir is where servers' directories go: the temporary directory, if
// every directory down to it lets others through (the server may run as
// another user), else /tmp.
func baseDir() string {
	dir := os.TempDir()
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

// freePort returns a TCP port of 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts the server again after Stop, on the same port and with
// the same data, returning once it takes connections.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	if s.proc != nil {
		s.mu.Unlock()
		return errors.New("pgtest: start: the server is running")
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("pgtest: start: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(s.Port), "-k", filepath.Join(s.dir, "sock"),
		"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
		// Test data need not survive a crash of the machine.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed when this process dies, however it dies. The parent-death
	// signal comes when the thread that started it ends, not the
	// process: the Go runtime ends the thread of a goroutine that exits
	// locked to it (the session manager's clone-files loop does), and
	// such a goroutine may have run on the thread that started the
	// server. So it is started from a thread of its own, locked for as
	// long as the server runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		close(done)
	}()
	if err := <-started; err != nil {
		s.mu.Unlock()
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.proc, s.done = cmd, done
	s.mu.Unlock()

	if err := s.waitReady(ctx, done); err != nil {
		s.Stop(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

// waitReady returns once the server takes connections, or fails if it
// exits or ctx ends first.
func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, s.URL("postgres"))
		ccancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("pgtest: postgres exited while starting:\n%s", s.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres did not take connections: %w (last: %v)\n%s", ctx.Err(), err, s.LogTail())
		case <-tick.C:
		}
	}
}

// Stop stops the server (a fast shutdown: sessions are ended), keeping
// its data, and returns once it has exited. If it has not exited when ctx
// ends, it is killed.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	s.proc.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-ctx.Done():
		s.proc.Process.Kill()
		<-s.done
	}
	s.proc, s.done = nil, nil
	return nil
}

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.Stop(ctx)
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("pgtest: remove %s: %w", s.dir, err)
	}
	return nil
}

// Pid returns the process id of the running server (its postmaster), or 0.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Process.Pid
}

// Dir returns the server's temporary directory.
func (s *Server) Dir() string { return s.dir }

// URL returns the URL of database db on the server, as its superuser.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.User, s.Password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase makes a new, empty database with a name of its own,
// starting with prefix (letters, digits and _), and returns its name.
func (s *Server) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	s.mu.Lock()
	s.seq++
	name := fmt.Sprintf("%s_%d", prefix, s.seq)
	s.mu.Unlock()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return name, nil
}

// LogTail returns the end of the server's log.
func (s *Server) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// CleanStale kills the servers, and removes the directories, that test
// binaries no longer running left behind (a binary killed before its
// server's parent-death signal was set, or one whose server survived it).
func CleanStale() {
	dirs, _ := filepath.Glob(filepath.Join(baseDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue // being made, or not ours
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || alive(owner) {
			continue
		}
		if pid := postmaster(dir); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	}
}

// alive reports whether a process has the given pid.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// postmaster returns the pid of the postgres server running on the data
// directory in dir, or 0.
func postmaster(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
		return 0 // gone, or the pid is another process's now
	}
	return pid
}
