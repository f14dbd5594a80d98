package session_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// TestOneSession boots one session and checks, against it, what a single
// guest must do: run its own kernel, exec with exact streams and statuses,
// give a working terminal, move files byte-exact, keep the host's files out
// of reach, and serve concurrent commands. The subtests share the VM: one
// boot costs seconds under TCG.
func TestOneSession(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{Env: map[string]string{"SESSION_VAR": "from-session", "OVERRIDE": "session"}})
	id := s.ID
	ctx := context.Background()

	t.Run("GuestRunsItsOwnKernel", func(t *testing.T) {
		host, err := exec.Command("uname", "-r").Output()
		if err != nil {
			t.Fatal(err)
		}
		guest := strings.TrimSpace(r.sh(t, id, "uname -r"))
		if guest == "" || guest == strings.TrimSpace(string(host)) {
			t.Fatalf("guest uname -r %q, host %q: want a different, non-empty guest kernel", guest, host)
		}
		if s.Accel == "" {
			t.Errorf("session does not say which accelerator it runs under")
		}
	})

	t.Run("ExitCodesPassThrough", func(t *testing.T) {
		for _, code := range []int{0, 3, 255} {
			res := r.run(t, id, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("exit %d", code)}}, nil)
			if res.status.Code != code || res.status.Signal != "" || res.status.TimedOut {
				t.Errorf("exit %d: got %+v", code, res.status)
			}
		}
	})

	t.Run("StdoutAndStderrStaySeparate", func(t *testing.T) {
		res := r.run(t, id, api.ExecRequest{Argv: []string{"sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3"}}, nil)
		if res.stdout != "out1\nout2\n" || res.stderr != "err1\nerr2\n" || res.status.Code != 3 {
			t.Fatalf("got stdout %q stderr %q status %+v", res.stdout, res.stderr, res.status)
		}
	})

	t.Run("StdinIsDelivered", func(t *testing.T) {
		res := r.run(t, id, api.ExecRequest{Argv: []string{"cat"}}, []byte("hello\nworld\n"))
		if res.stdout != "hello\nworld\n" || res.status.Code != 0 {
			t.Fatalf("cat: got %q, %+v", res.stdout, res.status)
		}
		// No stdin at all is EOF at once, not a hang.
		res = r.run(t, id, api.ExecRequest{Argv: []string{"wc", "-c"}}, nil)
		if strings.TrimSpace(res.stdout) != "0" {
			t.Fatalf("wc -c of empty stdin: %q", res.stdout)
		}
	})

	t.Run("OneMiBStdinRoundTrips", func(t *testing.T) {
		in := randBytes(t, 1<<20)
		res := r.run(t, id, api.ExecRequest{Argv: []string{"wc", "-c"}}, in)
		if strings.TrimSpace(res.stdout) != "1048576" {
			t.Fatalf("wc -c of 1 MiB stdin: %q (stderr %q)", res.stdout, res.stderr)
		}
		res = r.run(t, id, api.ExecRequest{Argv: []string{"cat"}}, in)
		if !bytes.Equal([]byte(res.stdout), in) {
			t.Fatalf("cat of 1 MiB stdin: got %d bytes back, equal=false", len(res.stdout))
		}
	})

	t.Run("EnvAndCwdAreHonoured", func(t *testing.T) {
		res := r.run(t, id, api.ExecRequest{
			Argv: []string{"sh", "-c", `printf '%s|%s|%s|' "$SESSION_VAR" "$OVERRIDE" "$REQ"; pwd`},
			Env:  map[string]string{"OVERRIDE": "request", "REQ": "a b=c"},
			Cwd:  "/tmp",
		}, nil)
		if want := "from-session|request|a b=c|/tmp\n"; res.stdout != want {
			t.Fatalf("got %q, want %q (stderr %q)", res.stdout, want, res.stderr)
		}
		_, err := r.mgr.Exec(ctx, id, api.ExecRequest{Argv: []string{"pwd"}, Cwd: "/no/such/dir"})
		wantCode(t, "exec in a missing cwd", err, api.CodeInvalid)
	})

	t.Run("TimeoutKillsCommand", func(t *testing.T) {
		// The timeout kills the command (the run's own deadline is 2
		// minutes), and not before it is up: the kill's answer comes
		// after the instant the timeout ends, counted from before the
		// request left (an order that load cannot break, only delay).
		notBefore := time.Now().Add(time.Second)
		res := r.run(t, id, api.ExecRequest{Argv: []string{"sleep", "100"}, Timeout: "1s"}, nil)
		if !res.status.TimedOut || res.status.Signal != "KILL" {
			t.Fatalf("sleep 100 with a 1s timeout ended %+v, want TimedOut and KILL", res.status)
		}
		if now := time.Now(); now.Before(notBefore) {
			t.Fatalf("sleep 100 with a 1s timeout was killed %s before its timeout was up", notBefore.Sub(now))
		}
		_, err := r.mgr.Exec(ctx, id, api.ExecRequest{Argv: []string{"true"}, Timeout: "soon"})
		wantCode(t, "exec with a bad timeout", err, api.CodeInvalid)
	})

	t.Run("SignalTermEndsCommand", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		p, err := r.mgr.Exec(cctx, id, api.ExecRequest{Argv: []string{"sleep", "100"}})
		if err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, p.Stderr())
		go io.Copy(io.Discard, p.Stdout())
		if err := p.Signal("NOSUCHSIG"); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("Signal(NOSUCHSIG): %v, want invalid_argument", err)
		}
		if err := p.Signal("TERM"); err != nil {
			t.Fatal(err)
		}
		// Ended by the signal, long before sleep's 100 s (which would
		// end it with code 0) and within the exec's minute.
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.Signal != "TERM" || st.Code != 128+15 {
			t.Fatalf("sleep after TERM ended %+v, want signal TERM, code 143", st)
		}
	})

	t.Run("MissingBinaryIsInvalidAndHarmless", func(t *testing.T) {
		_, err := r.mgr.Exec(ctx, id, api.ExecRequest{Argv: []string{"no-such-binary-xyz"}})
		wantCode(t, "exec of a missing binary", err, api.CodeInvalid)
		if !strings.Contains(err.Error(), "not found") {
			t.Fatalf("error %q does not say not found", err)
		}
		_, err = r.mgr.Exec(ctx, id, api.ExecRequest{Argv: []string{"/no/such/path"}})
		wantCode(t, "exec of a missing path", err, api.CodeInvalid)
		if got := r.sh(t, id, "echo still here"); got != "still here\n" {
			t.Fatalf("session after a failed exec: %q", got)
		}
		if g, err := r.mgr.Get(ctx, id); err != nil || g.State != api.StateRunning {
			t.Fatalf("session after a failed exec: %+v, %v", g, err)
		}
	})

	t.Run("PTY", func(t *testing.T) { testPTY(t, r, id) })
	t.Run("Files", func(t *testing.T) { testFiles(t, r, id) })
	t.Run("HostFilesAreInvisible", func(t *testing.T) { testHostInvisible(t, r, id) })

	t.Run("GuestClockFollowsHost", func(t *testing.T) {
		// Guest timers run at the host's pace: a guess at the TSC's
		// rate once made them 1.3x fast. An order, not a speed: the
		// answer to a guest 'sleep 2' comes after the instant 2 s (less
		// the host timer's and the guest tick's slop) from before the
		// request left; load can only make it later.
		notBefore := time.Now().Add(1950 * time.Millisecond)
		r.sh(t, id, "sleep 2")
		if now := time.Now(); now.Before(notBefore) {
			t.Errorf("guest sleep 2 ended %s early on the host's clock", notBefore.Sub(now))
		}
		// The guest's wall clock, set at boot, has not drifted since
		// (the session is some seconds old by now).
		checkGuestClock(t, r, id, "some seconds after boot")
	})

	t.Run("TenConcurrentExecsKeepTheirOutput", func(t *testing.T) {
		const n = 10
		var wg sync.WaitGroup
		res := make([]result, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Output interleaves in time: each command writes in
				// several pieces while the others run.
				script := fmt.Sprintf("for j in 1 2 3; do echo out-%d-$j; echo err-%d-$j >&2; sleep 0.1; done; exit %d", i, i, i)
				res[i], errs[i] = runCmd(r.mgr, id, api.ExecRequest{Argv: []string{"sh", "-c", script}}, nil)
			}()
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("exec %d: %v", i, errs[i])
				continue
			}
			wantOut := fmt.Sprintf("out-%d-1\nout-%d-2\nout-%d-3\n", i, i, i)
			wantErr := strings.ReplaceAll(wantOut, "out", "err")
			if res[i].stdout != wantOut || res[i].stderr != wantErr || res[i].status.Code != i {
				t.Errorf("exec %d: stdout %q stderr %q status %+v", i, res[i].stdout, res[i].stderr, res[i].status)
			}
		}
	})
}

// testPTY checks the terminal: size, name, resize, and Ctrl-C reaching the
// foreground job of an interactive shell.
func testPTY(t *testing.T, r *rig, id string) {
	ctx := context.Background()
	t.Run("SizeAndName", func(t *testing.T) {
		res := r.run(t, id, api.ExecRequest{Argv: []string{"sh", "-c", "stty size; tty"}, TTY: true, Rows: 33, Cols: 101}, nil)
		lines := strings.Split(strings.ReplaceAll(res.stdout, "\r\n", "\n"), "\n")
		if len(lines) < 2 || lines[0] != "33 101" || !strings.HasPrefix(lines[1], "/dev/pts/") {
			t.Fatalf("stty size; tty: %q", res.stdout)
		}
		if res.stderr != "" {
			t.Fatalf("TTY command wrote %q on stderr: want all output on stdout", res.stderr)
		}
	})

	t.Run("ResizeAndInterrupt", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		p, err := r.mgr.Exec(cctx, id, api.ExecRequest{Argv: []string{"sh"}, TTY: true, Rows: 24, Cols: 80})
		if err != nil {
			t.Fatal(err)
		}
		term := &screen{}
		go io.Copy(io.Discard, p.Stderr())
		go io.Copy(term, p.Stdout())
		in := p.Stdin()
		// Commands print computed text, never their own echo, so that
		// the expectations cannot match the terminal echoing the input.
		say := func(line string) {
			t.Helper()
			if _, err := io.WriteString(in, line); err != nil {
				t.Fatal(err)
			}
		}
		expect := func(what string) {
			t.Helper()
			if !waitFor(20*time.Second, func() bool { return term.contains(what) }) {
				t.Fatalf("terminal never showed %q; it shows %q", what, term.String())
			}
		}
		say("echo size$((1+1)):$(stty size)\n")
		expect("size2:24 80")
		if err := p.Resize(40, 120); err != nil {
			t.Fatal(err)
		}
		say("echo size$((1+2)):$(stty size)\n")
		expect("size3:40 120")
		if err := p.Resize(0, 10); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("Resize(0, 10): %v, want invalid_argument", err)
		}

		say("sleep 100\n")
		// Wait until sleep is the terminal's foreground job.
		if !waitFor(20*time.Second, func() bool {
			return strings.TrimSpace(r.sh(t, id, "pidof sleep || true")) != ""
		}) {
			t.Fatal("sleep never started in the interactive shell")
		}
		// The shell runs the next line only once Ctrl-C ended sleep
		// (100 s; expect waits 20).
		say("\x03")
		say("echo alive$((6*7))\n")
		expect("alive42")
		if got := strings.TrimSpace(r.sh(t, id, "pidof sleep || true")); got != "" {
			t.Fatalf("sleep still runs after Ctrl-C: pid %s", got)
		}
		say("exit\n")
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.Code != 0 || st.Signal != "" {
			t.Fatalf("shell ended %+v after exit, want 0", st)
		}
	})
}

// screen collects terminal output.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *screen) contains(sub string) bool { return strings.Contains(s.String(), sub) }

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func testFiles(t *testing.T, r *rig, id string) {
	ctx := context.Background()
	t.Run("FiftyMBByteExact", func(t *testing.T) {
		data := randBytes(t, 50<<20)
		start := time.Now()
		if err := r.mgr.WriteFile(ctx, id, "/root/big.bin", 0o640, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		t.Logf("write 50 MB: %s", time.Since(start).Round(time.Millisecond))
		// The guest's own view of the bytes, not only the round trip.
		guestSum := strings.Fields(r.sh(t, id, "sha256sum /root/big.bin"))[0]
		if guestSum != sha(data) {
			t.Fatalf("guest sha256 %s, host %s", guestSum, sha(data))
		}
		start = time.Now()
		rc, err := r.mgr.Open(ctx, id, "/root/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		back, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("read 50 MB: %s", time.Since(start).Round(time.Millisecond))
		if len(back) != len(data) || sha(back) != sha(data) {
			t.Fatalf("read back %d bytes (sha %s), wrote %d (sha %s)", len(back), sha(back), len(data), sha(data))
		}
		fi, err := r.mgr.Stat(ctx, id, "/root/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size != int64(len(data)) || fi.Mode != 0o640 || fi.IsDir || fi.Name != "big.bin" {
			t.Fatalf("stat: %+v", fi)
		}
		if err := r.mgr.Remove(ctx, id, "/root/big.bin"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ModeBitsKept", func(t *testing.T) {
		// Special bits too (mode=4755 once answered 204 and dropped the
		// setuid bit): the agent writes as root, and what a guest's files
		// may be is the guest's business.
		for _, mode := range []uint32{0o751, 0o600, 0o444, 0o4755, 0o2750, 0o1777, 0o6711} {
			p := fmt.Sprintf("/root/mode-%o", mode)
			if err := r.mgr.WriteFile(ctx, id, p, mode, strings.NewReader("x")); err != nil {
				t.Fatal(err)
			}
			fi, err := r.mgr.Stat(ctx, id, p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode != mode {
				t.Errorf("%s: mode %o, want %o", p, fi.Mode, mode)
			}
			if got := strings.TrimSpace(r.sh(t, id, "stat -c %a "+p)); got != fmt.Sprintf("%o", mode) {
				t.Errorf("%s: guest stat says %s, want %o", p, got, mode)
			}
		}
	})

	t.Run("StatListMkdirRemove", func(t *testing.T) {
		if err := r.mgr.Mkdir(ctx, id, "/root/d/e/f"); err != nil {
			t.Fatal(err)
		}
		if err := r.mgr.WriteFile(ctx, id, "/root/d/one.txt", 0o644, strings.NewReader("one")); err != nil {
			t.Fatal(err)
		}
		r.sh(t, id, "ln -s one.txt /root/d/link")
		fis, err := r.mgr.ListDir(ctx, id, "/root/d")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]api.FileInfo{}
		for _, fi := range fis {
			got[fi.Name] = fi
		}
		if len(got) != 3 || !got["e"].IsDir || got["one.txt"].Size != 3 || got["one.txt"].IsDir || !got["link"].Symlink {
			t.Fatalf("list /root/d: %+v", fis)
		}
		fi, err := r.mgr.Stat(ctx, id, "/root/d/e")
		if err != nil || !fi.IsDir {
			t.Fatalf("stat of a dir: %+v, %v", fi, err)
		}
		if fi, err := r.mgr.Stat(ctx, id, "/root/d/link"); err != nil || !fi.Symlink {
			t.Fatalf("stat of a symlink (not followed): %+v, %v", fi, err)
		}
		if err := r.mgr.Remove(ctx, id, "/root/d"); err != nil {
			t.Fatal(err)
		}
		_, err = r.mgr.Stat(ctx, id, "/root/d")
		wantCode(t, "stat of a removed dir", err, api.CodeNotFound)
		wantCode(t, "remove of a missing path", r.mgr.Remove(ctx, id, "/root/d"), api.CodeNotFound)
		_, err = r.mgr.ListDir(ctx, id, "/root/none")
		wantCode(t, "list of a missing dir", err, api.CodeNotFound)
	})

	t.Run("TarRoundTrip", func(t *testing.T) {
		tree := []tarEntry{
			{name: "tree/", mode: 0o750, dir: true},
			{name: "tree/a.txt", mode: 0o644, data: "alpha\n"},
			{name: "tree/sub/", mode: 0o755, dir: true},
			{name: "tree/sub/run.sh", mode: 0o755, data: "#!/bin/sh\necho hi\n"},
			{name: "tree/sub/deep/", mode: 0o700, dir: true},
			{name: "tree/sub/deep/bin", mode: 0o600, data: string(randBytes(t, 300<<10))},
			{name: "tree/sub/empty", mode: 0o640, data: ""},
			{name: "tree/link", link: "sub/run.sh"},
		}
		if err := r.mgr.PutTar(ctx, id, "/root/put", bytes.NewReader(makeTar(t, tree))); err != nil {
			t.Fatal(err)
		}
		if got := r.sh(t, id, "/root/put/tree/link"); got != "hi\n" {
			t.Fatalf("running the extracted script through its symlink: %q", got)
		}
		rc, err := r.mgr.GetTar(ctx, id, "/root/put/tree")
		if err != nil {
			t.Fatal(err)
		}
		back := readTar(t, rc)
		rc.Close()
		byName := func(a, b tarEntry) int { return strings.Compare(a.name, b.name) }
		slices.SortFunc(back, byName)
		slices.SortFunc(tree, byName)
		if !slices.Equal(back, tree) {
			t.Fatalf("tar round trip:\n got  %v\n want %v", back, tree)
		}
		// An archive that escapes its directory is refused.
		evil := makeTar(t, []tarEntry{{name: "../escape", mode: 0o644, data: "x"}})
		wantCode(t, "put of an escaping tar", r.mgr.PutTar(ctx, id, "/root/put", bytes.NewReader(evil)), api.CodeInvalid)
		if _, err := r.mgr.Stat(ctx, id, "/root/escape"); !api.IsCode(err, api.CodeNotFound) {
			t.Fatalf("the escaping entry landed: stat says %v", err)
		}
		_, err = r.mgr.GetTar(ctx, id, "/root/none")
		wantCode(t, "tar of a missing path", err, api.CodeNotFound)
	})

	t.Run("Errors", func(t *testing.T) {
		_, err := r.mgr.Open(ctx, id, "/root/no-such-file")
		wantCode(t, "read of a missing path", err, api.CodeNotFound)
		_, err = r.mgr.Open(ctx, id, "/root")
		wantCode(t, "read of a directory", err, api.CodeInvalid)
		_, err = r.mgr.Open(ctx, id, "root/x")
		wantCode(t, "read of a relative path", err, api.CodeInvalid)
		wantCode(t, "write to a relative path", r.mgr.WriteFile(ctx, id, "x", 0o644, strings.NewReader("x")), api.CodeInvalid)
		wantCode(t, "write over a directory", r.mgr.WriteFile(ctx, id, "/root", 0o644, strings.NewReader("x")), api.CodeInvalid)
		_, err = r.mgr.Stat(ctx, id, "../etc")
		wantCode(t, "stat of a relative path", err, api.CodeInvalid)
		wantCode(t, "mkdir of a relative path", r.mgr.Mkdir(ctx, id, "a/b"), api.CodeInvalid)
		wantCode(t, "remove of /", r.mgr.Remove(ctx, id, "/"), api.CodeInvalid)
		if got := r.sh(t, id, "ls / | wc -l"); strings.TrimSpace(got) == "0" {
			t.Fatal("the guest's / is empty")
		}
	})
}

// tarEntry is one archive member as the tests compare them.
type tarEntry struct {
	name string
	mode int64
	dir  bool
	data string
	link string
}

func (e tarEntry) String() string {
	return fmt.Sprintf("{%s %o dir=%v %d bytes sha %.8s link=%q}", e.name, e.mode, e.dir, len(e.data), sha([]byte(e.data)), e.link)
}

func makeTar(t testing.TB, es []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: time.Now()}
		switch {
		case e.dir:
			h.Typeflag = tar.TypeDir
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readTar reads an archive in order; symlink modes are not compared
// (Linux has none).
func readTar(t testing.TB, r io.Reader) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		e := tarEntry{name: h.Name, mode: h.Mode & 0o7777}
		switch h.Typeflag {
		case tar.TypeDir:
			e.dir = true
		case tar.TypeSymlink:
			e.link, e.mode = h.Linkname, 0
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			e.data = string(b)
		default:
			t.Fatalf("tar entry %s of type %c", h.Name, h.Typeflag)
		}
		out = append(out, e)
	}
}

// testHostInvisible plants random markers on the host and checks that the
// guest can find neither their paths nor their content anywhere, while it
// does find the same kind of marker planted in the guest (so the search
// works).
func testHostInvisible(t *testing.T, r *rig, id string) {
	ctx := context.Background()
	secret := "cove-host-secret-" + hex.EncodeToString(randBytes(t, 12))
	var hostPaths []string
	for _, dir := range []string{os.TempDir(), "/root", r.dir} {
		p := filepath.Join(dir, "cove-marker-"+hex.EncodeToString(randBytes(t, 6)))
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
		hostPaths = append(hostPaths, p)
	}
	for _, p := range hostPaths {
		if _, err := r.mgr.Stat(ctx, id, p); !api.IsCode(err, api.CodeNotFound) {
			t.Errorf("guest stat of host file %s: %v, want not_found", p, err)
		}
	}
	// A control: the same search must find a marker that is in the guest.
	control := "cove-guest-control-" + hex.EncodeToString(randBytes(t, 12))
	if err := r.mgr.WriteFile(ctx, id, "/var/tmp/control", 0o644, strings.NewReader(control+"\n")); err != nil {
		t.Fatal(err)
	}
	// The patterns come in on stdin so that no process's argv holds them;
	// /proc, /sys and /dev are not searched (endless files, and the raw
	// guest disk).
	script := `read a; read b
for d in /* /dev/shm; do
  case $d in /proc|/sys|/dev) continue;; esac
  grep -rlsF -e "$a" -e "$b" "$d"
done
true`
	res := r.run(t, id, api.ExecRequest{Argv: []string{"sh", "-c", script}, Timeout: "90s"}, []byte(secret+"\n"+control+"\n"))
	if res.status.Code != 0 || res.status.TimedOut {
		t.Fatalf("search: %+v, stderr %q", res.status, res.stderr)
	}
	if got := strings.Fields(res.stdout); !slices.Equal(got, []string{"/var/tmp/control"}) {
		t.Fatalf("guest files holding the host secret or the control: %q, want only /var/tmp/control", got)
	}
	if err := r.mgr.Remove(ctx, id, "/var/tmp/control"); err != nil {
		t.Fatal(err)
	}

	// Only the guest's own file systems: its disk, and kernel ones.
	mounts := r.sh(t, id, "cat /proc/mounts")
	allowed := map[string]bool{"rootfs": true, "ext4": true, "proc": true, "sysfs": true, "devtmpfs": true, "devpts": true, "tmpfs": true}
	sawRoot := false
	for _, line := range strings.Split(strings.TrimSpace(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("odd mount line %q", line)
		}
		src, dst, fstype := f[0], f[1], f[2]
		if !allowed[fstype] {
			t.Errorf("guest mounts %s on %s (type %s): a file system that is not its own", src, dst, fstype)
		}
		if fstype == "ext4" && src != "/dev/vda" {
			t.Errorf("guest mounts ext4 from %s on %s, want only its own disk /dev/vda", src, dst)
		}
		sawRoot = sawRoot || (dst == "/" && src == "/dev/vda")
	}
	if !sawRoot {
		t.Errorf("guest root is not its own disk /dev/vda:\n%s", mounts)
	}
	for _, bad := range []string{"9p", "virtiofs", "nfs", "fuse"} {
		if strings.Contains(mounts, " "+bad) {
			t.Errorf("guest mounts show %s:\n%s", bad, mounts)
		}
	}
}
