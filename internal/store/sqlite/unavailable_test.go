package sqlite

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/testenv"
)

// lockHelperEnv, set to a database path, makes the test binary a helper
// process that holds that database's write lock: it takes the lock, says
// "locked" on stdout, and rolls back once its stdin is closed.
const lockHelperEnv = "COVE_SQLITE_TEST_HOLD_LOCK"

func TestMain(m *testing.M) {
	if path := os.Getenv(lockHelperEnv); path != "" {
		if err := holdLock(path); err != nil {
			fmt.Fprintln(os.Stderr, "hold lock:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func holdLock(path string) error {
	ctx := context.Background()
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		return err
	}
	fmt.Println("locked")
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "ROLLBACK")
	return err
}

// lockFromAnotherProcess starts a process that holds the write lock of the
// database at path, and returns once it holds it. release ends the process
// and returns once it has exited, and with it its lock.
func lockFromAnotherProcess(t *testing.T, path string) (release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("lock holder: %v; stderr: %s", err, stderr.String())
			}
		})
	}
	t.Cleanup(release)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		release()
		t.Fatalf("lock holder said %q (%v), not \"locked\"; stderr: %s", line, err, stderr.String())
	}
	return release
}

// seeded is a store with one session subscribed to events and one template
// at version 1, and those records as the store gives them back.
type seeded struct {
	st   *Store
	path string
	sess store.Session
	tmpl store.Template
	sub  store.Subscription
}

func seed(t *testing.T) *seeded {
	t.Helper()
	return seedIn(t, t.TempDir())
}

// seedIn is seed with the database in dir.
func seedIn(t *testing.T, dir string) *seeded {
	t.Helper()
	ctx := t.Context()
	path := filepath.Join(dir, "cove.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	at := time.Unix(1700000000, 0).UTC()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.CreateSession(ctx, &store.Session{ID: "s1", State: "parked", Image: "tiny", MemoryMiB: 512, CPUs: 1, CreatedAt: at, UpdatedAt: at}))
	must(st.PutSubscription(ctx, store.Subscription{SessionID: "s1", Until: []string{"github.push"}, CreatedAt: at}))
	must(st.CreateTemplate(ctx, &store.Template{Name: "t1", State: "ready", Image: "tiny", MemoryMiB: 512, CPUs: 1, Version: 1, CreatedAt: at, UpdatedAt: at}))
	must(st.PutTemplateVersion(ctx, store.TemplateVersion{Template: "t1", Version: 1, State: store.VersionReady, CreatedAt: at, UpdatedAt: at}))
	s := &seeded{st: st, path: path}
	var err1, err2, err3 error
	s.sess, err1 = st.GetSession(ctx, "s1")
	s.tmpl, err2 = st.GetTemplate(ctx, "t1")
	s.sub, err3 = st.GetSubscription(ctx, "s1")
	must(errors.Join(err1, err2, err3))
	return s
}

// writeAll makes one write of each kind: a single statement that changes
// a row, one that inserts, a transaction of two statements, and events
// recorded by three callers at once (group commit). It returns their
// errors, named.
func (s *seeded) writeAll(ctx context.Context) map[string]error {
	at := time.Unix(1700000100, 0).UTC()
	errs := map[string]error{}
	up := s.sess
	up.State, up.UpdatedAt = "running", at
	errs["UpdateSession"] = s.st.UpdateSession(ctx, &up)
	errs["CreateSession"] = s.st.CreateSession(ctx, &store.Session{ID: "s2", State: "creating", Image: "tiny", CreatedAt: at, UpdatedAt: at})
	t := s.tmpl
	t.Version, t.UpdatedAt = 2, at
	errs["SwapTemplateVersion"] = s.st.SwapTemplateVersion(ctx, &t, store.TemplateVersion{Template: "t1", Version: 2, State: store.VersionReady, Base: 1, CreatedAt: at, UpdatedAt: at})

	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			ev := store.Event{Source: "github", ID: fmt.Sprintf("d%d", i), Name: "push", Received: at}
			_, _, dup, err := s.st.RecordEvent(ctx, ev, []string{"s1"})
			if err == nil && dup {
				err = errors.New("recorded as a duplicate")
			}
			mu.Lock()
			errs[fmt.Sprintf("RecordEvent %d", i)] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return errs
}

// wantUnchanged fails t unless the store holds what seed wrote and
// nothing more.
func (s *seeded) wantUnchanged(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	if got, err := s.st.GetSession(ctx, "s1"); err != nil || !reflect.DeepEqual(got, s.sess) {
		t.Errorf("session s1 = %+v, %v; want it unchanged: %+v", got, err, s.sess)
	}
	if _, err := s.st.GetSession(ctx, "s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session s2: err = %v, want it never created", err)
	}
	if got, err := s.st.GetTemplate(ctx, "t1"); err != nil || !reflect.DeepEqual(got, s.tmpl) {
		t.Errorf("template t1 = %+v, %v; want it unchanged: %+v", got, err, s.tmpl)
	}
	if vs, err := s.st.ListTemplateVersions(ctx, "t1"); err != nil || len(vs) != 1 {
		t.Errorf("template t1 has %d versions (%v), want 1: the swap's version was written without the template", len(vs), err)
	}
	if got, err := s.st.GetSubscription(ctx, "s1"); err != nil || !reflect.DeepEqual(got, s.sub) {
		t.Errorf("subscription of s1 = %+v, %v; want it unclaimed", got, err)
	}
	if ds, err := s.st.ListDeliveries(ctx, ""); err != nil || len(ds) != 0 {
		t.Errorf("deliveries = %+v, %v; want none", ds, err)
	}
	if _, err := s.st.GetEvent(ctx, 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("event 1: err = %v, want none recorded", err)
	}
}

// wantWritesAgain fails t unless every write of writeAll now succeeds on the
// same Store, with the effects each should have.
func (s *seeded) wantWritesAgain(t *testing.T) {
	t.Helper()
	for name, err := range s.writeAll(t.Context()) {
		if err != nil {
			t.Errorf("%s once the cause is gone: %v", name, err)
		}
	}
	ctx := t.Context()
	if got, err := s.st.GetSession(ctx, "s1"); err != nil || got.State != "running" {
		t.Errorf("session s1 = %+v, %v; want it updated", got, err)
	}
	if got, err := s.st.GetTemplate(ctx, "t1"); err != nil || got.Version != 2 {
		t.Errorf("template t1 = %+v, %v; want version 2", got, err)
	}
	if ds, err := s.st.ListDeliveries(ctx, store.DeliveryPending); err != nil || len(ds) != 1 {
		t.Errorf("pending deliveries = %+v, %v; want one, to s1", ds, err)
	}
}

// wantUnavailable fails t unless every error wraps store.ErrUnavailable
// and says why in words.
func wantUnavailable(t *testing.T, errs map[string]error, why string) {
	t.Helper()
	for name, err := range errs {
		switch {
		case err == nil:
			t.Errorf("%s succeeded, want it to fail", name)
		case !errors.Is(err, store.ErrUnavailable):
			t.Errorf("%s: %v; want an error wrapping store.ErrUnavailable", name, err)
		case !strings.Contains(err.Error(), "state store unavailable: "+why):
			t.Errorf("%s: %q does not say %q", name, err, why)
		}
	}
}

// While another process holds the database's write lock past the busy
// timeout, every kind of write fails with store.ErrUnavailable, saying the
// database is locked by another process, and writes nothing; reads still
// answer (WAL). Once the lock is released the same Store writes again,
// without being reopened.
func TestUnavailableWhileLockedByAnotherProcess(t *testing.T) {
	s := seed(t)
	// The server waits busyTimeoutMillis for a lock; this test need not.
	if _, err := s.st.db.ExecContext(t.Context(), "PRAGMA busy_timeout = 100"); err != nil {
		t.Fatal(err)
	}
	release := lockFromAnotherProcess(t, s.path)

	errs := s.writeAll(t.Context())
	t.Logf("locked: %v", errs["SwapTemplateVersion"])
	wantUnavailable(t, errs, "the database is locked by another process")
	if got, err := s.st.GetSession(t.Context(), "s1"); err != nil || !reflect.DeepEqual(got, s.sess) {
		t.Errorf("reading while locked: %+v, %v; want the session as it was", got, err)
	}

	release()
	s.wantUnchanged(t)
	s.wantWritesAgain(t)
}

// chattr runs chattr with args.
func chattr(args ...string) error {
	out, err := exec.Command("chattr", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chattr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// When the database's files become read-only under a running server (made
// immutable: chmod does not stop root, and a file system cannot be
// remounted read-only while SQLite has files open on it for writing), every
// kind of write fails with store.ErrUnavailable, saying the file cannot be
// written, and writes nothing; reads still answer. Once the files are
// writable again the same Store writes again, without being reopened.
func TestUnavailableWhileReadOnly(t *testing.T) {
	if _, err := exec.LookPath("chattr"); err != nil {
		testenv.Skipf(t, "making files immutable needs chattr (e2fsprogs), which is not installed")
	}
	s := seed(t)
	// SQLite writes the WAL and, at checkpoints, the database file.
	files := []string{s.path, s.path + "-wal"}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { exec.Command("chattr", append([]string{"-i"}, files...)...).Run() })
	if err := chattr(append([]string{"+i"}, files...)...); err != nil {
		// Not root (CAP_LINUX_IMMUTABLE), or a file system without the
		// flag under TMPDIR: 'make test' runs as root, on ext4.
		testenv.Skipf(t, "making files immutable needs CAP_LINUX_IMMUTABLE and a file system that has the flag: %v", err)
	}

	errs := s.writeAll(t.Context())
	t.Logf("read-only: %v", errs["SwapTemplateVersion"])
	wantUnavailable(t, errs, "the database file cannot be written")
	if got, err := s.st.GetSession(t.Context(), "s1"); err != nil || !reflect.DeepEqual(got, s.sess) {
		t.Errorf("reading while read-only: %+v, %v; want the session as it was", got, err)
	}

	if err := chattr(append([]string{"-i"}, files...)...); err != nil {
		t.Fatal(err) // it could set the flag, so it can clear it
	}
	s.wantUnchanged(t)
	s.wantWritesAgain(t)
}

// When the disk that holds the database fills up under a running server
// (a 4 MiB tmpfs, filled by another file to the last block), every kind
// of write fails with store.ErrUnavailable, saying the disk is full, and
// writes nothing; reads still answer. Once there is room again the same
// Store writes again, without being reopened.
func TestUnavailableOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "mounting a size-limited tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	s := seedIn(t, dir)
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for chunk := make([]byte, 4096); ; {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	errs := s.writeAll(t.Context())
	t.Logf("full: %v", errs["SwapTemplateVersion"])
	wantUnavailable(t, errs, "the disk holding the database is full")
	if got, err := s.st.GetSession(t.Context(), "s1"); err != nil || !reflect.DeepEqual(got, s.sess) {
		t.Errorf("reading on a full disk: %+v, %v; want the session as it was", got, err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.wantUnchanged(t)
	s.wantWritesAgain(t)
}
