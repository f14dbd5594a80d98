package audit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Helper processes: the test binary run again with one of these set.
const (
	crashChildEnv = "COVE_AUDIT_CRASH_CHILD" // the log directory to append to
	crashRoundEnv = "COVE_AUDIT_CRASH_ROUND"
	lockChildEnv  = "COVE_AUDIT_LOCK_CHILD" // the lock file to hold
)

// crashChild is the appender that TestCrashRestart kills (TestMain runs it
// in the test binary started with crashChildEnv set to the log's dir): 4
// goroutines append until killed and print "INDEX NAME" for each Append
// that returned.
func crashChild(dir string) {
	l, err := Open(context.Background(), dir, Options{Origin: testOrigin})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	for g := range 4 {
		go func() {
			for k := 0; ; k++ {
				name := fmt.Sprintf("r%s-g%d-%d", os.Getenv(crashRoundEnv), g, k)
				idx, err := l.Append(context.Background(), testEntry(name))
				if err != nil {
					fmt.Println("error", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Printf("%d %s\n", idx, name)
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestCrashRestart kills an appending process with SIGKILL at random
// moments; after each, the reopened log holds every entry whose Append had
// returned, at the index it returned, with no gap; appending goes on at
// the end; and the log verifies, consistent with the rounds before.
func TestCrashRestart(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "audit")
	state := filepath.Join(tmp, "verified.json")
	reported := map[uint64]string{}
	for round := range 6 {
		killAfter := rand.IntN(400)
		lines, stderr := runAndKill(t, dir, round, killAfter)
		for _, ln := range lines {
			if strings.HasPrefix(ln, "error") {
				t.Fatalf("round %d: child: %s\n%s", round, ln, stderr)
			}
			idxS, name, ok := strings.Cut(ln, " ")
			idx, err := strconv.ParseUint(idxS, 10, 64)
			if !ok || err != nil {
				continue // the test framework's own lines
			}
			if prev, dup := reported[idx]; dup {
				t.Fatalf("round %d: index %d reported for %s and, before, %s", round, idx, name, prev)
			}
			reported[idx] = name
		}

		l, err := Open(ctx, dir, Options{Origin: testOrigin})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		size, err := l.Size(ctx)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := l.Entries(ctx, 0, int(size))
		if err != nil || uint64(len(recs)) != size {
			t.Fatalf("round %d: read %d of %d entries: %v", round, len(recs), size, err)
		}
		for idx, name := range reported {
			if idx >= size {
				t.Fatalf("round %d (killed after %d lines): index %d (%s) was reported, the log has %d entries", round, killAfter, idx, name, size)
			}
			if got := recs[idx].Entry.Target.Path; got != name {
				t.Fatalf("round %d: index %d holds %q, the child was told %q", round, idx, got, name)
			}
		}
		next, err := l.Append(ctx, testEntry(fmt.Sprintf("parent-%d", round)))
		if err != nil || next != size {
			t.Fatalf("round %d: append after restart got index %d, %v; want %d", round, next, err, size)
		}
		reported[next] = fmt.Sprintf("parent-%d", round)
		closeTest(t, l)
		vkey, err := VerifierKeyFromFile(DefaultKeyPath(dir))
		if err != nil {
			t.Fatal(err)
		}
		if rep, err := Verify(ctx, dir, vkey, state); err != nil || rep.Size != size+1 {
			t.Fatalf("round %d: Verify: size %d, %v", round, rep.Size, err)
		}
		t.Logf("round %d: killed after %d lines; log at %d entries, %d reported", round, killAfter, size+1, len(reported))
	}
}

// runAndKill runs crashChild on dir, SIGKILLs it once it has reported
// killAfter appends, and returns every line it wrote (those after the kill
// signal included: their appends had returned too).
func runAndKill(t *testing.T, dir string, round, killAfter int) ([]string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s=%d", crashRoundEnv, round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if !killed && len(lines) >= killAfter {
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	if !killed {
		t.Fatalf("round %d: child ended by itself after %d lines:\n%s", round, len(lines), stderr.String())
	}
	cmd.Wait()
	return lines, stderr.String()
}

// lockChild holds tessera's tree-state lock file p until killed, as a
// stuck writer or a hung disk would (TestMain runs it in the test binary
// started with lockChildEnv set to p).
func lockChild(p string) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLKW, &lk); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("locked")
	select {}
}

// TestAppendTimesOut: an append that cannot be sequenced (another process
// holds the log's lock) fails with ErrUnavailable once its time is up,
// rather than hang; the log goes on once the lock is let go.
func TestAppendTimesOut(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "audit")
	l := openTest(t, dir, Options{AppendTimeout: 500 * time.Millisecond})
	if _, err := l.Append(ctx, testEntry("before")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), lockChildEnv+"="+filepath.Join(dir, ".state", "treeState.lock"))
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "locked" {
		t.Fatalf("lock holder: %q", sc.Text())
	}
	// The first appends are journaled; once the tree has taken nothing
	// for the append timeout, they are refused.
	acked, err := appendUntil(t, l, true, "stuck")
	if !strings.Contains(err.Error(), "has taken no entry") {
		t.Fatalf("Append while the log is locked: %v, want ErrUnavailable saying the tree takes nothing", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	after, _ := appendUntil(t, l, false, "after")
	if after[0] != uint64(1+len(acked)) {
		t.Fatalf("Append once the lock is let go: index %d, want %d", after[0], 1+len(acked))
	}
	checkNoGap(t, l, uint64(2+len(acked)))
}
