// Package agent is the guest side of cove: it runs as PID 1 in every
// microVM (see Init), and serves the host's requests — exec, files — over
// the agentproto port (see Serve).
package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agentproto"
)

// Version is the agent's version, reported in hello.
var Version = "dev"

// Agent serves host requests.
type Agent struct {
	Log    *slog.Logger
	reaper *reaper

	mu       sync.Mutex
	running  map[int]*running   // guarded by mu: commands by PID, until the host acknowledged their exit
	kick     func(nonce string) // guarded by mu: ends the current connection (a detach)
	listener *listener          // guarded by mu: the host's listen stream, if any
	hostBack chan struct{}      // guarded by mu: closed when a listen stream or a host's session arrives
	sess     *yamux.Session     // guarded by mu: the current host's session, if any
	egressCA []byte             // guarded by mu: the egress CA set up, if any
	egressLn net.Listener       // guarded by mu: the egress listener, once set up
	urandom  int                // guarded by mu: /dev/urandom for reseeding, once opened (else -1)
	watches  int                // guarded by mu: directory watches open (see watch.go)

	// reqSeq numbers the requests tools send the host: unique in this
	// memory, which a rollback restores with it (agentproto.GuestRequest).
	reqSeq atomic.Int64
	// restoring holds the checkpoint calls waiting for their answer, by
	// request id: a guest restored from the checkpoint hears on it
	// (checkpoint.go). guarded by mu.
	restoring map[int64]chan agentproto.Restored
	// rolledBackTo is the checkpoint this guest's checkpoint call said it
	// was rolled back to, until its next checkpoint (see rollbackGuard).
	// guarded by mu.
	rolledBackTo string

	// egressRoot prefixes the files egress setup writes and egressAddr is
	// where it listens: "" and agentproto.EgressAddr in a guest (tests
	// change them). egressAddr is guarded by mu.
	egressRoot string
	egressAddr string
	dnsAddr    string     // guarded by mu: where the agent answers DNS (see dns.go)
	egressMu   sync.Mutex // serializes egress setups

	// syncFS writes back what is dirty before a park's quiet line
	// (unix.Sync; tests replace it), and syncLimit bounds the wait for it.
	syncFS    func()
	syncLimit time.Duration

	// eventsDir is where a park request looks for its waking event:
	// EventsDir in a guest (tests change it).
	eventsDir string
}

// syncLimit bounds a detach's write-back: a guest whose disk does not
// complete (a lost completion was seen under load) must still say it is
// quiet, and serve the next connection, rather than wait in sync() for
// ever; the write-back goes on behind.
const syncLimit = 10 * time.Second

// New returns an agent. It starts the child reaper: as PID 1 the agent is
// the parent of every orphan in the guest.
func New(log *slog.Logger) *Agent {
	return &Agent{Log: log, reaper: newReaper(), urandom: -1, syncFS: unix.Sync, syncLimit: syncLimit,
		egressAddr: agentproto.EgressAddr, dnsAddr: dnsAddr, eventsDir: EventsDir}
}

// FindPort returns the device path of the virtio-serial port named name,
// waiting up to limit for it to appear.
func FindPort(name string, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + filepath.Base(filepath.Dir(m)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("agent: no virtio port named %q", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Serve serves the host over the virtio-serial port at path until ctx ends.
// The host may disconnect and reconnect any number of times (it does on
// every park and wake); each connection is a fresh yamux session.
func (a *Agent) Serve(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("agent: open port: %w", err)
	}
	defer f.Close()
	Mark("port opened")
	// Not f.Fd(): that would put the port in blocking mode, and reads
	// must honour deadlines (a detach interrupts the reader).
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("agent: port: %w", err)
	}
	var fd int
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return fmt.Errorf("agent: port: %w", err)
	}

	// The port raises SIGIO when the host side connects or disconnects —
	// and when data arrives, so the agent asks for it only while it waits
	// for a host: a session, and the wait for the sync of a host already
	// connected (how a woken guest finds its host), take no signals.
	// Notify first, so the signal never hits the default action.
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, syscall.SIGIO)
	defer signal.Stop(sigio)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
		return fmt.Errorf("agent: port owner: %w", err)
	}
	async := false
	setAsync := func(on bool) error {
		if on == async {
			return nil
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return fmt.Errorf("agent: port flags: %w", err)
		}
		if on {
			fl |= unix.O_ASYNC
		} else {
			fl &^= unix.O_ASYNC
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl); err != nil {
			return fmt.Errorf("agent: port async: %w", err)
		}
		async = on
		return nil
	}

	port := &portConn{f: f, fd: fd}
	for ctx.Err() == nil {
		if port.buffered() == 0 && !hostConnected(fd) {
			if err := setAsync(true); err != nil {
				return err
			}
			if hostConnected(fd) {
				continue // it connected before the signal was asked for
			}
			select {
			case <-sigio:
			case <-time.After(time.Second): // a missed signal costs a second, never a hang
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if err := setAsync(false); err != nil {
			return err
		}
		if err := agentproto.GuestSync(port, a.sayHello); err != nil {
			continue // the host went away before the sync finished
		}
		port.inSession = true
		a.serveConn(ctx, port)
		port.inSession = false
		port.interrupted.Store(false) // a detach may have set it
	}
	return ctx.Err()
}

// hostConnected reports whether the host side of the port is open: the
// port polls as hung up while it is not.
func hostConnected(fd int) bool {
	ev, err := pollNow(fd)
	return err == nil && ev&unix.POLLHUP == 0
}

// pollNow returns fd's poll events (asked for POLLIN) without waiting: 0
// when none is pending.
func pollNow(fd int) (int16, error) {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	if err != nil || n == 0 {
		return 0, err
	}
	return pfd[0].Revents, nil
}

// portConn lets yamux use the port without closing it: the port stays open
// across host connections.
//
// It also catches a sync the yamux reader would otherwise swallow: a new
// host connection always starts with agentproto.SyncMagic, which is never
// the start of a yamux frame (version byte 0). If the reader of a session
// gets a chunk that starts with it (a park froze the guest before it saw
// the old host go), the chunk is kept for the next GuestSync and the
// session ends.
type portConn struct {
	f         *os.File
	fd        int    // f's descriptor, for poll (f stays non-blocking)
	inSession bool   // a yamux session reads the port (set by Serve only)
	pushback  []byte // read but not yet consumed; guarded by Serve's sequencing
	// interrupted is set by interrupt (a detach stops the reader) until
	// Serve clears it for the next connection.
	interrupted atomic.Bool
}

// pollEvery bounds how long a read or a write of the port waits for the
// kernel's readiness wakeup before it tries the port again: a missed
// wakeup costs at most this long, and an idle guest one wakeup per
// period. (make soak's idle guests with host requests unread, for which
// it was added, turned out to be something else: most likely guest disk
// I/O that never completes; see the README's known issue.)
const pollEvery = 2 * time.Second

var errNewHost = errors.New("agent: a new host connection started")

func (c *portConn) Read(p []byte) (int, error) {
	if len(c.pushback) > 0 {
		if c.inSession {
			return 0, errNewHost
		}
		n := copy(p, c.pushback)
		c.pushback = c.pushback[n:]
		return n, nil
	}
	n, err := c.readPort(p)
	if c.inSession && n == 0 && errors.Is(err, io.EOF) {
		// The port reads as closed while the guest still believes the
		// last host gone: the new host's open notice can trail its first
		// bytes. Give it a moment before ending the session.
		if n, err = c.retryAfterEOF(p); n == 0 && err == nil {
			err = io.EOF
		}
	}
	if c.inSession && n > 0 && startsWithSync(p[:n]) {
		c.pushback = append(c.pushback[:0], p[:n]...)
		return 0, errNewHost
	}
	return n, err
}

// readPort reads the port, trying again every pollEvery until data comes,
// the port fails, or interrupt stops it.
func (c *portConn) readPort(p []byte) (int, error) {
	for {
		if !c.interrupted.Load() {
			_ = c.f.SetReadDeadline(time.Now().Add(pollEvery))
			if c.interrupted.Load() { // interrupt ran meanwhile: keep its deadline
				_ = c.f.SetReadDeadline(time.Now())
			}
		}
		n, err := c.f.Read(p)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && !c.interrupted.Load() {
			continue
		}
		return n, err
	}
}

// retryAfterEOF reads again if data or a connected host shows up within
// 200 ms; else it reports EOF.
func (c *portConn) retryAfterEOF(p []byte) (int, error) {
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		_, _ = unix.Poll(pfd, 20)
		if pfd[0].Revents&unix.POLLIN != 0 || pfd[0].Revents&unix.POLLHUP == 0 {
			return c.f.Read(p)
		}
	}
	return 0, io.EOF
}

func (c *portConn) buffered() int { return len(c.pushback) }

func startsWithSync(b []byte) bool {
	m := agentproto.SyncMagic
	if len(b) < len(m) {
		return string(b) == m[:len(b)] && len(b) >= 4
	}
	return string(b[:len(m)]) == m
}

// Write writes all of p, trying the port again every pollEvery while it
// has no room (see pollEvery).
func (c *portConn) Write(p []byte) (int, error) {
	written := 0
	for {
		_ = c.f.SetWriteDeadline(time.Now().Add(pollEvery))
		n, err := c.f.Write(p[written:])
		written += n
		if errors.Is(err, os.ErrDeadlineExceeded) && written < len(p) {
			continue
		}
		return written, err
	}
}

func (c *portConn) Close() error { return nil }

// interrupt makes a pending read return at once (the port is pollable, so
// reads honour deadlines): it is how a detach stops the yamux reader.
func (c *portConn) interrupt() {
	c.interrupted.Store(true)
	_ = c.f.SetReadDeadline(time.Now())
}

// serveConn serves one yamux session on conn until it ends. When a detach
// with a nonce ended it, it then says so on conn (QuietMagic): the host
// saves the guest only once its session is torn down, so none of that
// work is left for the wake path.
func (a *Agent) serveConn(ctx context.Context, conn io.ReadWriteCloser) {
	sess, err := yamux.Server(conn, agentproto.Config())
	if err != nil {
		a.Log.Error("yamux", "err", err)
		return
	}
	var quiet string // set by the watcher on a detach
	// A detach request signals this connection only: the signal is acted
	// on here, before serveConn returns, so it can never reach a later
	// connection (a park may freeze the guest between any two steps).
	detach := make(chan string, 1)
	a.mu.Lock()
	a.sess = sess
	a.kick = func(nonce string) {
		select {
		case detach <- nonce:
		default:
		}
	}
	a.mu.Unlock()
	a.listenerChanged()
	var watcher sync.WaitGroup
	watcher.Add(1)
	go func() {
		defer watcher.Done()
		select {
		case <-ctx.Done():
		case quiet = <-detach:
			// Stop the yamux reader now, before the VM may be frozen: it
			// must not be the one to read the next host's sync.
			if i, ok := conn.(interface{ interrupt() }); ok {
				i.interrupt()
			}
		case <-sess.CloseChan():
		}
		sess.Close()
	}()
	defer func() {
		sess.Close()
		watcher.Wait()
		a.mu.Lock()
		a.kick = nil
		if a.sess == sess {
			a.sess = nil
		}
		a.mu.Unlock()
		if quiet != "" {
			// Write back what is dirty (data, and the journal's
			// metadata: an atime, say) before the host saves the guest:
			// the kernel would do it within seconds, and a woken guest
			// would then do it in its first seconds, where under
			// emulation the journal, block and virtio paths are all
			// translated afresh (≈2.5k blocks, ≈30 ms, on the wake it
			// hit). The park pays for it instead, while nobody waits on
			// the guest.
			a.writeBack()
			_, _ = conn.Write([]byte(agentproto.QuietMagic + quiet + "\n"))
		}
	}()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go a.handle(st)
	}
}

// writeBack syncs the file systems, waiting a.syncLimit at most: the sync
// is left to finish on its own thread if the disk does not answer.
func (a *Agent) writeBack() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.syncFS()
	}()
	select {
	case <-done:
	case <-time.After(a.syncLimit):
		a.Log.Warn("sync did not return; the disk is not completing writes", "waited", a.syncLimit)
	}
}

func (a *Agent) handle(st *yamux.Stream) {
	defer st.Close()
	defer func() {
		if r := recover(); r != nil {
			a.Log.Error("handler panic", "panic", r)
		}
	}()
	var req agentproto.Request
	if err := agentproto.ReadJSON(st, agentproto.FrameRequest, &req); err != nil {
		a.Log.Warn("bad request", "err", err)
		return
	}
	switch req.Op {
	case agentproto.OpHello:
		a.hello(st, req)
	case agentproto.OpExec:
		a.exec(st, req)
	case agentproto.OpAttach:
		a.attachOp(st, req)
	case agentproto.OpListen:
		a.listen(st)
	case agentproto.OpRestored:
		a.restored(st, req)
	case agentproto.OpEgressSetup:
		if err := a.setupEgress(req.Egress); err != nil {
			respondErr(st, agentproto.CodeInternal, err)
			return
		}
		respond(st, agentproto.Response{})
	case agentproto.OpDetach:
		// The answer is on the port once Write returns; then end this
		// connection (see serveConn).
		respond(st, agentproto.Response{})
		a.mu.Lock()
		kick := a.kick
		a.mu.Unlock()
		if kick != nil {
			kick(req.Nonce)
		}
	case agentproto.OpRead:
		readFile(st, req)
	case agentproto.OpWrite:
		writeFile(st, req)
	case agentproto.OpStat:
		stat(st, req)
	case agentproto.OpList:
		list(st, req)
	case agentproto.OpMkdir:
		mkdir(st, req)
	case agentproto.OpRemove:
		remove(st, req)
	case agentproto.OpTarGet:
		tarGet(st, req)
	case agentproto.OpTarPut:
		tarPut(st, req)
	case agentproto.OpWatch:
		a.watch(st, req)
	default:
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("unknown op %q", req.Op))
	}
}

func (a *Agent) hello(w io.Writer, req agentproto.Request) {
	h := a.sayHello(req)
	_ = agentproto.WriteJSON(w, agentproto.FrameResponse, agentproto.Response{Hello: &h})
}

// sayHello adopts the host's clock and entropy (as PID 1) and describes
// the guest. The host says hello on every connection, on the sync line or
// on a stream of its own.
func (a *Agent) sayHello(req agentproto.Request) agentproto.Hello {
	if os.Getpid() == 1 {
		if req.TimeUnixNano > 0 {
			tv := unix.NsecToTimeval(req.TimeUnixNano)
			if err := unix.Settimeofday(&tv); err != nil {
				a.Log.Warn("set clock", "err", err)
			}
		}
		if req.ClockStepNanos != 0 {
			tv := unix.NsecToTimeval(time.Now().UnixNano() + req.ClockStepNanos)
			if err := unix.Settimeofday(&tv); err != nil {
				a.Log.Warn("step clock", "err", err)
			}
		}
		if len(req.Seed) > 0 {
			if err := a.reseed(req.Seed); err != nil {
				a.Log.Warn("reseed", "err", err)
			}
		}
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return agentproto.Hello{
		Kernel:       unix.ByteSliceToString(uts.Release[:]),
		Version:      Version,
		UptimeMillis: ts.Nano() / 1e6,
		WallUnixNano: time.Now().UnixNano(),
		Features:     []string{agentproto.FeatureExecUser},
	}
}

func respond(w io.Writer, r agentproto.Response) {
	_ = agentproto.WriteJSON(w, agentproto.FrameResponse, r)
}

func respondErr(w io.Writer, code string, err error) {
	respond(w, agentproto.Response{Code: code, Error: err.Error()})
}

// codeOf classifies a file system error.
func codeOf(err error) string {
	var ae *archiveError
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return agentproto.CodeNoSpace
	case errors.As(err, &ae):
		return agentproto.CodeInvalid
	case errors.Is(err, os.ErrNotExist):
		return agentproto.CodeNotFound
	case errors.Is(err, os.ErrExist):
		return agentproto.CodeExists
	case errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTDIR), errors.Is(err, os.ErrInvalid),
		errors.Is(err, unix.E2BIG): // execve: argv and environment past the kernel's limit
		return agentproto.CodeInvalid
	default:
		return agentproto.CodeInternal
	}
}

// reseed mixes seed into the kernel's entropy pool, credits it, and forces
// the CRNG to reseed now: a restored clone must not produce the same random
// numbers as its siblings. /dev/urandom stays open: a wake opens nothing.
func (a *Agent) reseed(seed []byte) error {
	a.mu.Lock()
	if a.urandom < 0 {
		fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			a.mu.Unlock()
			return err
		}
		a.urandom = fd
	}
	fd := a.urandom
	a.mu.Unlock()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}
