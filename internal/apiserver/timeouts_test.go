package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/trigger"
)

// storeSecrets gives a Receiver the hook secrets a real store keeps, as
// cove server does.
type storeSecrets struct{ st *sqlite.Store }

func (s storeSecrets) Secret(ctx context.Context, hook string) ([]byte, bool, error) {
	b, err := s.st.GetHookSecret(ctx, hook)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	return b, err == nil, err
}

// newServedEnv starts the server as cove server does, with the
// http.Server HTTPServer builds (its timeouts) and a real webhook Receiver
// whose secrets are in a real store ("github" is set).
func newServedEnv(t *testing.T, to Timeouts, edit ...func(*Config)) *testEnv {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "cove.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.PutHookSecret(t.Context(), trigger.GitHubHook, []byte("flood-secret")); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, fake: newFakeSessions(), images: &fakeImages{}, logs: &logSink{}}
	cfg := Config{
		Sessions:    e.fake,
		Images:      e.images,
		Token:       testToken,
		Log:         slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Hooks:       &trigger.Receiver{Secrets: storeSecrets{st}},
		HookSecrets: st,
		Timeouts:    to,
	}
	e.admin = withIdentities(&cfg, st)
	for _, f := range edit {
		f(&cfg)
	}
	e.server = New(cfg)
	e.srv = httptest.NewUnstartedServer(nil)
	e.srv.Config = e.server.HTTPServer()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

// dialFrom opens a connection to the server from a local address (any of
// 127.0.0.0/8 is this host): each address is another sender.
func (e *testEnv) dialFrom(from string) net.Conn {
	e.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// hookHeader is a GitHub delivery's request header for a body of n bytes,
// signed with a wrong secret: what anyone can send.
func hookHeader(n int64) string {
	return "POST /v1/hooks/github HTTP/1.1\r\nHost: cove\r\nContent-Type: application/json\r\n" +
		trigger.HeaderGitHubEvent + ": push\r\n" + trigger.HeaderGitHubDelivery + ": d-1\r\n" +
		trigger.HeaderSignature + ": " + trigger.Sign([]byte("not the secret"), nil) + "\r\n" +
		"Content-Length: " + strconv.FormatInt(n, 10) + "\r\n\r\n"
}

// waitClosed reads from conn until the server closes it, and fails if it
// is still open after limit. It returns what was read.
func waitClosed(t *testing.T, conn net.Conn, limit time.Duration) []byte {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(limit))
	got, err := io.ReadAll(conn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server still holds the connection after %v; it answered %q", limit, got)
	}
	return got
}

// Slow senders of webhook bodies are cut off: 20 connections that trickle
// a body a byte a second are each answered 408 and closed once the body
// falls behind the minimum rate (issue 13, finding 4). The bound, 30 s,
// is generous against the 1 s grace; before the fix they stayed open.
func TestSlowHookSendersAreCutOff(t *testing.T) {
	e := newServedEnv(t, Timeouts{HookGrace: time.Second, HookRate: 1 << 10})
	const senders = 20
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	conns := make([]net.Conn, senders)
	for i := range conns {
		conn := e.dialFrom(fmt.Sprintf("127.0.0.%d", i%4+1))
		conns[i] = conn
		if _, err := io.WriteString(conn, hookHeader(1000)); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { // the slow sender: a byte a second
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				if _, err := conn.Write([]byte{'{'}); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		})
	}
	for i, conn := range conns {
		if got := waitClosed(t, conn, 30*time.Second); !bytes.HasPrefix(got, []byte("HTTP/1.1 408 ")) {
			t.Errorf("sender %d: answer %q, want 408", i, got)
		}
	}
}

// A kept-alive connection left idle is closed (issue 13, finding 4): the
// bound, 30 s, is generous against the test's 1 s Idle; before the fix the
// connection was still served after 75 s.
func TestIdleConnectionIsClosed(t *testing.T) {
	e := newServedEnv(t, Timeouts{Idle: time.Second})
	conn := e.dialFrom("127.0.0.1")
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: cove\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("healthz: %d, close=%v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the idle connection is still open after 30 s")
	}
}

// A client without the token gets the deadlines: one that sends a request
// body slower than Read allows is cut off, though the route needs the
// token and the body would never be read.
func TestSlowUnauthenticatedRequestIsCutOff(t *testing.T) {
	e := newServedEnv(t, Timeouts{Read: time.Second, Write: time.Second})
	conn := e.dialFrom("127.0.0.1")
	body := `{"argv":["true"]}`
	if _, err := io.WriteString(conn, "POST /v1/sessions/s1/exec HTTP/1.1\r\nHost: cove\r\nContent-Type: application/json\r\n"+
		"Content-Length: "+strconv.Itoa(len(body)+1000)+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	got := waitClosed(t, conn, 30*time.Second)
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 401 ")) {
		t.Errorf("answer %q, want 401", got)
	}
}

// A client with the token sets its own pace (the long-lived routes are
// handled on purpose): a request body sent slower than Read, a session
// create that takes longer than Write, and an exec stream that runs past
// both are all answered in full.
func TestAuthenticatedRequestsOutlastTimeouts(t *testing.T) {
	const limit = 500 * time.Millisecond
	e := newServedEnv(t, Timeouts{Read: limit, Write: limit, Idle: limit})

	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { return ExitStatus{} })
	t.Run("slow body", func(t *testing.T) {
		conn := e.dialFrom("127.0.0.1")
		body := `{"argv":["echo","slow"]}`
		if _, err := io.WriteString(conn, "POST /v1/sessions/s1/exec HTTP/1.1\r\nHost: cove\r\nContent-Type: application/json\r\n"+
			"Authorization: Bearer "+e.userToken()+"\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// The body takes three times Read to arrive.
		tick := time.NewTicker(3 * limit / time.Duration(len(body)))
		defer tick.Stop()
		for i := range len(body) {
			if _, err := conn.Write([]byte{body[i]}); err != nil {
				t.Fatalf("the server cut the authenticated upload off after %d bytes: %v", i, err)
			}
			<-tick.C
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		defer resp.Body.Close()
		decode[api.ExecResult](t, resp, 200)
	})

	t.Run("slow create", func(t *testing.T) {
		e := e.with(t)
		e.fake.setCreate(func() error {
			<-time.After(3 * limit) // a boot that takes a while
			return nil
		})
		decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 201)
	})

	t.Run("long exec stream", func(t *testing.T) {
		e := e.with(t)
		e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus {
			io.WriteString(p.stdoutW, "first\n")
			<-time.After(3 * limit) // a command that takes a while
			io.WriteString(p.stdoutW, "last\n")
			return ExitStatus{}
		})
		resp := e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"long"}}, "Accept", "application/x-ndjson")
		var stdout, last string
		dec := json.NewDecoder(resp.Body)
		for {
			var ev api.ExecEvent
			if err := dec.Decode(&ev); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Errorf("stream cut off: %v", err)
				}
				break
			}
			stdout += string(ev.Data)
			last = ev.Type
		}
		if stdout != "first\nlast\n" || last != "exit" {
			t.Errorf("stream: stdout %q, last event %q; want it whole, to its exit event", stdout, last)
		}
	})
}

// readProcStatus returns a field of /proc/self/status in bytes.
func readProcStatus(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/self/status: %s: %w", field, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}

// procStatus is readProcStatus for the test's goroutine: without /proc
// (a sandbox that hides it) the test is skipped, or fails under CI.
func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	if _, err := os.Stat("/proc/self/status"); err != nil {
		testenv.Skipf(t, "no /proc/self/status (%v): the test reads the process's memory there", err)
	}
	v, err := readProcStatus(field)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A flood of large unsigned webhook bodies does not take the server's
// memory (issue 13, finding 3): 20 senders post 24 MiB each with a wrong
// signature at once, as in the issue, and each is answered 401 once its
// body is in. The bodies total 480 MiB; the server process (this test
// binary) may grow by at most 64 MiB at its peak: what holding even three
// of the bodies would pass, and many times what the receiver holds in
// memory per pending delivery (a 64 KiB head) and what net/http holds per
// connection. Before the fix the process grew by more than the bodies'
// size, and stayed there.
func TestWebhookFloodMemoryBounded(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir()) // the receiver's spool, os.TempDir
	e := newServedEnv(t, Timeouts{})
	const senders, size = 20, 24 << 20
	const bound = 64 << 20

	runtime.GC()
	debug.FreeOSMemory()
	base := procStatus(t, "VmRSS")
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Logf("cannot reset the peak (%v): sampling VmRSS only", err)
	}
	var sampled atomic.Int64
	done := make(chan struct{})
	sampler := make(chan struct{})
	go func() { // measures, does not synchronise
		defer close(sampler)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			// Not procStatus: this goroutine may not end the test. The
			// main goroutine read VmRSS before it started.
			if v, err := readProcStatus("VmRSS"); err == nil && v > sampled.Load() {
				sampled.Store(v)
			}
			select {
			case <-tick.C:
			case <-done:
				return
			}
		}
	}()

	chunk := make([]byte, 64<<10)
	statuses := make([]int, senders)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range senders {
		conn := e.dialFrom(fmt.Sprintf("127.0.0.%d", i+1))
		wg.Go(func() {
			go func() { // the sender: header and the whole body
				if _, err := io.WriteString(conn, hookHeader(size)); err != nil {
					return
				}
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := conn.Write(chunk); err != nil {
						return
					}
				}
			}()
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Errorf("sender %d: %v", i, err)
				return
			}
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(done)
	<-sampler
	peak := max(procStatus(t, "VmHWM"), sampled.Load())
	after := procStatus(t, "VmRSS")
	t.Logf("%d × %d MiB unsigned bodies in %v: RSS %.1f MiB before, peak %.1f MiB (+%.1f MiB), %.1f MiB after",
		senders, size>>20, took.Round(time.Millisecond), mib(base), mib(peak), mib(peak-base), mib(after))
	for i, s := range statuses {
		if s != http.StatusUnauthorized {
			t.Errorf("sender %d answered %d, want 401", i, s)
		}
	}
	if peak-base > bound {
		t.Errorf("the flood took the process from %.1f MiB to a peak of %.1f MiB: +%.1f MiB, over the bound of %d MiB",
			mib(base), mib(peak), mib(peak-base), bound>>20)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
