package agentproto_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
)

// socketPair returns two connected unix stream sockets. Unlike net.Pipe
// they buffer, as the virtio-serial port and its chardev socket do, so
// either side can write stale bytes that nobody reads yet.
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

// Bytes of a yamux frame as an earlier session leaves them in the port: a
// window update with FIN on stream 3, then a go-away.
var staleYamux = []byte{
	0, 1, 0, 4, 0, 0, 0, 3, 0, 0, 0, 0,
	0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
}

const (
	nonceA = "0123456789abcdef"
	nonceB = "fedcba9876543210"
)

// mustWithin bounds the waits for what must happen (an answer, a return):
// generous, since it only decides when a broken protocol fails the test.
const mustWithin = 30 * time.Second

// readLine reads one line from c.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(mustWithin))
	defer c.SetReadDeadline(time.Time{})
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("read line (so far %q): %v", b, err)
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b)
		}
	}
}

// guestSync runs GuestSync on c in the background.
func guestSync(rw io.ReadWriter) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- agentproto.GuestSync(rw, nil) }()
	return errc
}

func wait(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(mustWithin):
		t.Fatal("GuestSync did not return")
		return nil
	}
}

func TestGuestSyncSkipsStaleBytes(t *testing.T) {
	host, guest := socketPair(t)
	errc := guestSync(guest)
	// What an earlier host left, a malformed sync line, then the real one.
	host.Write(staleYamux)
	host.Write([]byte("COVE-SYNC:short\n"))
	host.Write([]byte("noise " + agentproto.AckMagic + nonceB + "\n"))
	host.Write([]byte(agentproto.SyncMagic + nonceA + "\n"))
	if err := wait(t, errc); err != nil {
		t.Fatalf("GuestSync: %v", err)
	}
	if got, want := readLine(t, host), agentproto.AckMagic+nonceA+"\n"; got != want {
		t.Fatalf("guest answered %q, want %q", got, want)
	}
}

func TestGuestSyncAnswersOnlyTheNewestSync(t *testing.T) {
	host, guest := socketPair(t)
	// Two host attempts queued up while the agent was not yet reading:
	// only the later host is still listening.
	host.Write([]byte(agentproto.SyncMagic + nonceA + "\n" + agentproto.SyncMagic + nonceB + "\n"))
	if err := wait(t, guestSync(guest)); err != nil {
		t.Fatalf("GuestSync: %v", err)
	}
	// GuestSync has returned: all it answered is in the socket. Closing
	// the guest's end lets the host read that to its end.
	guest.Close()
	host.SetReadDeadline(time.Now().Add(mustWithin))
	all, err := io.ReadAll(host)
	if err != nil {
		t.Fatalf("read the guest's answers: %v", err)
	}
	if want := agentproto.AckMagic + nonceB + "\n"; string(all) != want {
		t.Fatalf("guest answered %q, want only %q (the newer sync)", all, want)
	}
}

// oneByteRW hands out reads one byte at a time, so the magic and the nonce
// arrive split across reads.
type oneByteRW struct {
	r io.Reader
	w io.Writer
}

func (o oneByteRW) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func (o oneByteRW) Write(p []byte) (int, error) { return o.w.Write(p) }

func TestGuestSyncSplitReads(t *testing.T) {
	in := strings.NewReader("xxCOVE-SYNCCOVE-" + agentproto.SyncMagic + nonceA + "\n")
	var out strings.Builder
	if err := agentproto.GuestSync(oneByteRW{in, &out}, nil); err != nil {
		t.Fatalf("GuestSync: %v", err)
	}
	if want := agentproto.AckMagic + nonceA + "\n"; out.String() != want {
		t.Fatalf("guest answered %q, want %q", out.String(), want)
	}
}

func TestGuestSyncHostGoesAway(t *testing.T) {
	host, guest := socketPair(t)
	errc := guestSync(guest)
	host.Write([]byte("stale bytes, and a sync line cut short: " + agentproto.SyncMagic + "0123"))
	host.Close()
	if err := wait(t, errc); !errors.Is(err, io.EOF) {
		t.Fatalf("GuestSync: %v, want io.EOF", err)
	}
}

// fakeGuest is a guest agent reduced to the sync and hello. It serves the
// port like the real agent: sync, then a yamux session until it ends, then
// sync again.
type fakeGuest struct {
	syncs  atomic.Int32
	hellos atomic.Int32 // said on a stream
	// sayHello, if set, answers hellos on the sync line.
	sayHello func(agentproto.Request) agentproto.Hello
	// steps, if set, receives the clock steps hellos on streams ask for.
	steps chan int64
}

func (g *fakeGuest) run(port net.Conn) {
	for {
		if err := agentproto.GuestSync(port, g.sayHello); err != nil {
			return
		}
		g.syncs.Add(1)
		sess, err := yamux.Server(keepOpen{port}, agentproto.Config())
		if err != nil {
			return
		}
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				break
			}
			go func() {
				defer st.Close()
				var req agentproto.Request
				if agentproto.ReadJSON(st, agentproto.FrameRequest, &req) != nil {
					return
				}
				g.hellos.Add(1)
				if req.ClockStepNanos != 0 && g.steps != nil {
					g.steps <- req.ClockStepNanos
				}
				agentproto.WriteJSON(st, agentproto.FrameResponse, agentproto.Response{
					Hello: &agentproto.Hello{Kernel: "fake", Version: "test"},
				})
			}()
		}
		sess.Close()
	}
}

// keepOpen keeps the port open when a session closes, as the agent's
// portConn does.
type keepOpen struct{ net.Conn }

func (keepOpen) Close() error { return nil }

// hostPort is the host's connection to a port that outlives it: closing
// it ends pending reads (as closing a chardev socket connection does) but
// leaves the bytes in flight where they are, for the next connection.
type hostPort struct{ net.Conn }

func (h hostPort) Close() error { return h.SetDeadline(time.Now()) }

func TestConnectSkipsStaleBytesBothWays(t *testing.T) {
	host, guest := socketPair(t)
	// The guest's side of the port still holds an old session's bytes and
	// the answer to an earlier host's sync.
	guest.Write(staleYamux)
	guest.Write([]byte(agentproto.AckMagic + nonceB + "\n"))
	guest.Write([]byte("COVE-AC")) // an answer cut short
	var g fakeGuest
	dials := 0
	dial := func(ctx context.Context) (net.Conn, error) {
		dials++
		if dials == 1 {
			// Bytes a former host wrote that the agent never read.
			host.Write(staleYamux)
			go g.run(guest)
		}
		return hostPort{host}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, h, err := agentproto.Connect(ctx, dial)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	if h.Kernel != "fake" || h.Version != "test" {
		t.Fatalf("hello %+v, want the fake guest's", h)
	}
	if dials != 1 {
		t.Errorf("Connect dialed %d times; stale bytes alone must not cost a retry", dials)
	}
	// The session works past the hello.
	if _, err := c.Hello(ctx); err != nil {
		t.Fatalf("second hello: %v", err)
	}
}

// countingPort calls onWrite with the number of each write the host makes.
type countingPort struct {
	net.Conn
	mu      sync.Mutex
	writes  int
	onWrite func(n int)
}

func (p *countingPort) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.writes++
	n := p.writes
	p.mu.Unlock()
	p.onWrite(n)
	return p.Conn.Write(b)
}

func (p *countingPort) Close() error { return p.SetDeadline(time.Now()) }

// dialedPort is one connection to a VMM's socket whose host end is port
// (shared by every dial, as the socket is): its Close ends this
// connection alone, whose reads and writes fail from then on, without a
// reader of it left on the socket.
type dialedPort struct {
	*countingPort
	closed atomic.Bool
	active atomic.Int32 // reads under way
}

func (p *dialedPort) Read(b []byte) (int, error) {
	p.active.Add(1) // before the check: see redial
	defer p.active.Add(-1)
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	return p.countingPort.Read(b)
}

func (p *dialedPort) Write(b []byte) (int, error) {
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	return p.countingPort.Write(b)
}

func (p *dialedPort) Close() error {
	p.closed.Store(true)
	return p.countingPort.SetDeadline(time.Now()) // wakes its readers
}

// redial returns a new connection on port once last (nil for the first
// dial) is closed and none of its reads is left on the socket (which
// could take bytes meant for the new one): the socket's deadline, expired
// by last's Close, is then cleared, as a new connection has none.
func redial(port *countingPort, last *dialedPort) (*dialedPort, error) {
	if last != nil {
		if !last.closed.Load() {
			return nil, errors.New("dialed again while the last connection is open")
		}
		for last.active.Load() > 0 {
			time.Sleep(time.Millisecond)
		}
		if err := port.SetDeadline(time.Time{}); err != nil {
			return nil, err
		}
	}
	return &dialedPort{countingPort: port}, nil
}

// TestConnectResyncsWhenFirstSyncIsUnanswered: a guest still booting at
// the first sync starts reading only after the host gave up on it; the
// host sends a new sync on the same connection (a new one would queue
// behind the first at the VMM's socket) and connects with its answer.
// On a loaded host that second sync may go unanswered in time too, and
// Connect then dials again: each dial is a new connection to the socket
// (dialedPort: no deadline, and no reader, left from the closed one),
// and Connect still connects.
func TestConnectResyncsWhenFirstSyncIsUnanswered(t *testing.T) {
	host, guest := socketPair(t)
	var g fakeGuest
	var mu sync.Mutex
	dials, onFirst := 0, 0 // onFirst: syncs sent on the first connection
	port := &countingPort{Conn: host, onWrite: func(n int) {
		if n == 2 {
			// The agent starts only now: it finds the first sync line
			// queued too.
			go g.run(guest)
		}
	}}
	var last *dialedPort
	dial := func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		dials++
		if dials == 2 {
			port.mu.Lock()
			onFirst = port.writes
			port.mu.Unlock()
		}
		c, err := redial(port, last)
		if err != nil {
			return nil, err
		}
		last = c
		return c, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	c, h, err := agentproto.Connect(ctx, dial)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	if h.Kernel != "fake" {
		t.Fatalf("hello %+v, want the fake guest's", h)
	}
	mu.Lock()
	defer mu.Unlock()
	port.mu.Lock()
	writes := port.writes
	port.mu.Unlock()
	if dials == 1 {
		onFirst = writes
	}
	if onFirst < 2 {
		t.Fatalf("%d syncs sent on the first connection (%d dials): want a second sync on it after the unanswered first", onFirst, dials)
	}
	t.Logf("connected after %d syncs sent (%d on the first connection, %d dials), %d guest syncs, %s", writes, onFirst, dials, g.syncs.Load(), time.Since(start).Round(time.Millisecond))
}

// startConnect runs Connect over conn in the background; its error comes
// on the channel.
func startConnect(ctx context.Context, conn net.Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, _, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) { return hostPort{conn}, nil })
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	return errc
}

// connectErr returns Connect's error, failing if it has not returned
// within mustWithin.
func connectErr(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(mustWithin):
		t.Fatalf("Connect did not return within %s of its context's end", mustWithin)
		return nil
	}
}

// A host that gets no answer sends sync lines again, each with a fresh
// nonce, until its context ends: the guest reads three, all sync lines,
// then the host is cancelled.
func TestConnectSyncLinesCarryFreshNonces(t *testing.T) {
	host, guest := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := startConnect(ctx, host)
	guest.SetReadDeadline(time.Now().Add(mustWithin))
	sc := bufio.NewScanner(guest)
	seen := map[string]bool{}
	for len(seen) < 3 && sc.Scan() {
		line := sc.Text()
		body, ok := strings.CutPrefix(line, agentproto.SyncMagic)
		nonce, hello, _ := strings.Cut(body, " ")
		if !ok || len(nonce) != 16 || (hello != "" && !strings.HasPrefix(hello, `{"op":"hello"`)) {
			t.Fatalf("host wrote %q, want sync lines only", line)
		}
		if seen[nonce] {
			t.Fatalf("host reused nonce %s", nonce)
		}
		seen[nonce] = true
	}
	if len(seen) < 3 {
		t.Fatalf("host sent %d sync lines to a silent guest (%v), want it to retry", len(seen), sc.Err())
	}
	cancel()
	if err := connectErr(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect to a silent guest: %v, want context.Canceled", err)
	}
}

func TestConnectReturnsDialError(t *testing.T) {
	boom := errors.New("no such vm")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Connect: %v, want the dial error", err)
	}
}

// A Connect waiting for a silent guest ends when its context is
// cancelled: cancelled once its first sync line is out, it returns
// context.Canceled rather than waiting on.
func TestConnectHonoursCanceledContext(t *testing.T) {
	host, guest := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := startConnect(ctx, host)
	if line := readLine(t, guest); !strings.HasPrefix(line, agentproto.SyncMagic) {
		t.Fatalf("host wrote %q, want a sync line", line)
	}
	cancel()
	if err := connectErr(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect: %v, want context.Canceled", err)
	}
}

func TestGuestSyncSaysHelloOnTheSyncLine(t *testing.T) {
	host, guest := socketPair(t)
	var got agentproto.Request
	errc := make(chan error, 1)
	go func() {
		errc <- agentproto.GuestSync(guest, func(req agentproto.Request) agentproto.Hello {
			got = req
			return agentproto.Hello{Kernel: "k", Version: "v", UptimeMillis: 7}
		})
	}()
	host.Write(staleYamux)
	host.Write([]byte(agentproto.SyncMagic + nonceA + ` {"op":"hello","time_unix_nano":42,"seed":"AQID"}` + "\n"))
	if err := wait(t, errc); err != nil {
		t.Fatalf("GuestSync: %v", err)
	}
	if want := agentproto.AckMagic + nonceA + ` {"kernel":"k","version":"v","uptime_ms":7}` + "\n"; readLine(t, host) != want {
		t.Fatalf("guest did not answer %q", want)
	}
	if got.TimeUnixNano != 42 || string(got.Seed) != "\x01\x02\x03" {
		t.Fatalf("hello got %+v, want the host's clock and seed", got)
	}
}

func TestGuestSyncSkipsMalformedHello(t *testing.T) {
	host, guest := socketPair(t)
	errc := make(chan error, 1)
	called := false
	go func() {
		errc <- agentproto.GuestSync(guest, func(agentproto.Request) agentproto.Hello { called = true; return agentproto.Hello{} })
	}()
	host.Write([]byte(agentproto.SyncMagic + nonceB + " {not json\n"))
	host.Write([]byte(agentproto.SyncMagic + nonceB + ` {"op":"exec"}` + "\n"))
	host.Write([]byte(agentproto.SyncMagic + nonceA + "\n"))
	if err := wait(t, errc); err != nil {
		t.Fatalf("GuestSync: %v", err)
	}
	if got, want := readLine(t, host), agentproto.AckMagic+nonceA+"\n"; got != want {
		t.Fatalf("guest answered %q, want %q", got, want)
	}
	if called {
		t.Fatal("hello called for a plain sync line")
	}
}

func TestConnectSaysHelloOnTheSyncLine(t *testing.T) {
	host, guest := socketPair(t)
	g := fakeGuest{sayHello: func(agentproto.Request) agentproto.Hello {
		return agentproto.Hello{Kernel: "inline", Version: "test"}
	}}
	go g.run(guest)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, h, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) { return hostPort{host}, nil })
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	if h.Kernel != "inline" {
		t.Fatalf("hello %+v, want the one from the sync answer", h)
	}
	if n := g.hellos.Load(); n != 0 {
		t.Fatalf("%d hellos on a stream, want none", n)
	}
	// The session works after it.
	if h, err := c.Hello(ctx); err != nil || h.Kernel != "fake" {
		t.Fatalf("hello on a stream: %+v, %v", h, err)
	}
}

// oldGuest answers only the plain sync line, as agents from before the
// hello on the sync line do, then serves hellos on streams.
func oldGuest(port net.Conn) {
	r := bufio.NewReader(port)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		nonce, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), agentproto.SyncMagic)
		if !ok || len(nonce) != 16 {
			continue
		}
		port.Write([]byte(agentproto.AckMagic + nonce + "\n"))
		sess, err := yamux.Server(keepOpen{port}, agentproto.Config())
		if err != nil {
			return
		}
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		var req agentproto.Request
		if agentproto.ReadJSON(st, agentproto.FrameRequest, &req) == nil {
			agentproto.WriteJSON(st, agentproto.FrameResponse, agentproto.Response{Hello: &agentproto.Hello{Kernel: "old"}})
		}
		return
	}
}

func TestConnectFallsBackToThePlainSync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dials := 0
	c, h, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) {
		dials++
		host, guest := socketPair(t)
		go oldGuest(guest)
		return host, nil
	})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	if h.Kernel != "old" || dials != 1 {
		t.Fatalf("hello %+v after %d dials, want the old guest's, on the first connection", h, dials)
	}
}

// TestConnectStepsALaggingClock: a guest whose clock, set at hello, reads
// behind the host's when its answer arrives (a woken guest applies the
// hello's time late) is stepped forward by that lag; one ahead of the
// host is never stepped back, and one so far behind that the host must
// have stalled is left alone.
//
// What the host measures is the guest's lag plus the answer's transit,
// which this test does not control: so the cases are far from the
// cut-offs (a lag under 5 ms is left alone, as transit; one over 1 s is a
// stall). A guest "in step", 0 behind, would be stepped or not depending
// on the transit, so it is not a case here.
func TestConnectStepsALaggingClock(t *testing.T) {
	for _, tc := range []struct {
		name   string
		behind time.Duration
		step   bool
	}{
		{"lagging", 40 * time.Millisecond, true},
		{"ahead", -time.Hour, false},
		{"host stalled", time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, guest := socketPair(t)
			g := fakeGuest{steps: make(chan int64, 4), sayHello: func(agentproto.Request) agentproto.Hello {
				return agentproto.Hello{Kernel: "inline", WallUnixNano: time.Now().Add(-tc.behind).UnixNano()}
			}}
			go g.run(guest)
			ctx, cancel := context.WithTimeout(context.Background(), mustWithin)
			defer cancel()
			c, _, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) { return hostPort{host}, nil })
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			defer c.Close()
			// Connect returns once a step is answered: a step sent is in
			// the channel by now, and none is if none was sent (the
			// "lagging" case shows this check sees one).
			select {
			case s := <-g.steps:
				if d := time.Duration(s); !tc.step || d < tc.behind || d > tc.behind+time.Second {
					t.Fatalf("guest %s behind stepped by %s", tc.behind, d)
				}
			default:
				if tc.step {
					t.Fatalf("guest %s behind not stepped", tc.behind)
				}
			}
		})
	}
}
