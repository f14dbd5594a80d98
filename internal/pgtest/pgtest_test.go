package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cove-dev/cove/internal/pgtest"
)

// childEnv, set, makes the test binary a child that starts a server,
// prints its postmaster's pid and waits to be killed.
const childEnv = "COVE_PGTEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		s, err := pgtest.Start(context.Background())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(s.Pid(), s.Dir())
		select {} // until killed
	}
	os.Exit(pgtest.Main(m))
}

// query runs a one-value query on url.
func query(ctx context.Context, url, sql string) (string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var v string
	err = conn.QueryRow(ctx, sql).Scan(&v)
	return v, err
}

// The server is a real PostgreSQL, not run as root, on loopback; each
// database is fresh and apart from the others.
func TestServerAndDatabases(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases share the URL %s", a)
	}
	v, err := query(t.Context(), a, "SELECT version()")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "PostgreSQL ") {
		t.Errorf("version() = %q", v)
	}
	t.Log(v)
	conn, err := pgx.Connect(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if _, err := conn.Exec(t.Context(), "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := query(t.Context(), b, "SELECT count(*)::text FROM only_in_a"); err == nil {
		t.Error("a table made in one database is seen in another")
	}
	pid := pgtest.Shared(t).Pid()
	st, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
		t.Errorf("postgres runs as root")
	}
}

// A stopped server refuses connections; restarted, it has its data.
func TestStopRestart(t *testing.T) {
	s := pgtest.Fresh(t)
	url := s.URL("postgres")
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := query(t.Context(), url, "SELECT 1::text"); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := s.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if v, err := query(t.Context(), url, "SELECT x::text FROM kept"); err != nil || v != "42" {
		t.Fatalf("after restart: %q, %v; want 42", v, err)
	}
}

// waitGone waits, up to a minute, for the process pid to be gone.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := syscall.Kill(pid, 0)
		if errors.Is(err, syscall.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there a minute on", pid)
		}
		<-tick.C
	}
}

// A test binary killed outright takes its server with it, and the next
// Start removes what it left.
func TestKilledBinaryLeavesNoServer(t *testing.T) {
	pgtest.Shared(t) // skips where PostgreSQL is missing
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		pid int
		dir string
	)
	if _, err := fmt.Fscan(out, &pid, &dir); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, pid)

	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the dead child's directory: %v", err)
	}
	pgtest.CleanStale()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CleanStale left %s: %v", dir, err)
	}
}

// A server whose test binary is gone, yet still running (its owner died
// before the parent-death signal could act), is killed by CleanStale.
func TestCleanStaleKillsOrphans(t *testing.T) {
	s := pgtest.Fresh(t)
	pid := s.Pid()
	// An owner that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Dir()+"/owner", []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	pgtest.CleanStale()
	waitGone(t, pid)
	if _, err := os.Stat(s.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CleanStale left %s: %v", s.Dir(), err)
	}
}
