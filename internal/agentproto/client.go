package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Config is the yamux configuration both sides use: no keepalives (a parked
// VM cannot answer them) and a large window for file transfers.
func Config() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.MaxStreamWindowSize = 4 << 20
	cfg.LogOutput = io.Discard
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamOpenTimeout = 0
	return cfg
}

// AnswerTimeout bounds the wait for the guest's first answer to a
// request (the start of a command, the header of a file): a guest that
// does not answer in that time (frozen, or its VMM stopped) fails the call
// with ErrNoAnswer. What follows the answer (a command's run, a transfer)
// is not bounded by it.
const AnswerTimeout = 30 * time.Second

// ErrNoAnswer is returned by a call whose request the guest did not answer
// within the client's answer timeout.
var ErrNoAnswer = errors.New("agentproto: the guest agent did not answer")

// Client is the host side of one connection to a guest agent. It is safe
// for concurrent use; every call opens its own stream.
type Client struct {
	sess *yamux.Session
	conn *hostConn
	// answerTimeout is AnswerTimeout unless a test set it.
	answerTimeout time.Duration
	// features are those of the agent's hello (Connect); none for a
	// client made otherwise.
	features []string
}

// Can reports whether the agent said at Connect that it has feature
// (Hello.Features).
func (c *Client) Can(feature string) bool { return slices.Contains(c.features, feature) }

// NewClient starts a yamux client session over conn (the unix socket of the
// VM's virtio-serial chardev).
func NewClient(conn net.Conn) (*Client, error) {
	hc := &hostConn{Conn: conn}
	s, err := yamux.Client(hc, Config())
	if err != nil {
		return nil, fmt.Errorf("agentproto: start session: %w", err)
	}
	return &Client{sess: s, conn: hc, answerTimeout: AnswerTimeout}, nil
}

// Disconnected returns a client whose connection has already ended: its
// calls fail and Done is closed. It stands for a guest that runs but has
// not answered yet (a wake whose agent is late), so that the session's
// watcher connects to it in the background.
func Disconnected() *Client {
	host, guest := net.Pipe()
	guest.Close()
	c, err := NewClient(host)
	if err != nil {
		panic(err) // yamux.Client fails only on a bad Config
	}
	c.Close()
	return c
}

// SetAnswerTimeout changes the client's answer timeout (see AnswerTimeout).
func (c *Client) SetAnswerTimeout(d time.Duration) { c.answerTimeout = d }

// Detach tells the guest this connection is ending on purpose (before a
// park): the guest ends its side and waits for the next sync, so that the
// next connection, after the wake, syncs at once. Detach returns once the
// guest says it is back waiting (a QuietMagic line): a save from then on
// does not catch the guest in the middle of its teardown, which it would
// otherwise finish after the wake, on the wake path. The yamux session
// ends; the connection under it stays open until Close (a guest saved with
// its host connected sees no hang-up after the wake).
func (c *Client) Detach(ctx context.Context) error {
	n := nonce()
	quiet := c.conn.expect([]byte(QuietMagic + n + "\n"))
	if _, err := c.call(ctx, Request{Op: OpDetach, Nonce: n}); err != nil {
		select {
		case <-quiet:
			// The guest answered and its quiet line followed so soon that
			// it ended this session (not yamux) before the call saw the
			// answer: the detach is done.
			c.sess.Close()
			return nil
		default:
			if ctx.Err() != nil && !errors.Is(err, ErrNoAnswer) {
				err = fmt.Errorf("%w: detach: %v", ErrNoAnswer, err)
			}
			return err
		}
	}
	select {
	case <-quiet:
	case <-ctx.Done():
		return fmt.Errorf("agentproto: detach: the guest did not settle: %w", ctx.Err())
	}
	c.sess.Close()
	return nil
}

// Listen opens the stream on which the guest sends its requests (see
// GuestRequest). handle is called for each, on Listen's goroutine: a
// non-nil error is sent back as a GuestReply's Error, else a non-nil
// reply is sent (with the request's ID); a nil reply and error send
// nothing (a park that froze the guest). A frame the guest should not
// send there (another type, a payload that is not a request) is refused
// with a GuestReply whose ID is 0, and handle does not see it. Listen
// returns when the connection ends, or when the guest breaks the stream's
// framing (a frame longer than MaxFrame): nothing after it can be read.
func (c *Client) Listen(ctx context.Context, handle func(GuestRequest) (*GuestReply, error)) error {
	st, release, _, err := c.answered(ctx, Request{Op: OpListen})
	if err != nil {
		return err
	}
	defer release()
	for {
		typ, p, err := ReadFrame(st, nil)
		if err != nil {
			return ctxErr(ctx, fmt.Errorf("agentproto: listen: %w", err))
		}
		var (
			req   GuestRequest
			reply *GuestReply
		)
		switch {
		case typ != FrameRequest:
			reply = &GuestReply{Error: fmt.Sprintf("listen: a frame of type %d where a request was due: refused", typ)}
		case json.Unmarshal(p, &req) != nil:
			req = GuestRequest{} // what a failed decode left is no one's ID
			reply = &GuestReply{Error: "listen: a request that is not a JSON object of a guest request: refused"}
		default:
			reply, err = handle(req)
			if err != nil {
				reply = &GuestReply{Error: err.Error()}
			}
		}
		if reply == nil {
			continue
		}
		reply.ID = req.ID
		if werr := WriteJSON(st, FrameResponse, *reply); werr != nil {
			return werr
		}
	}
}

// Restored tells the guest what it was restored from (OpRestored). Send
// it before Listen: see the package doc.
func (c *Client) Restored(ctx context.Context, r Restored) error {
	_, err := c.call(ctx, Request{Op: OpRestored, Restored: &r})
	return err
}

// Close closes the session and the connection under it.
func (c *Client) Close() error {
	err := c.sess.Close()
	if cerr := c.conn.Conn.Close(); err == nil && c.conn.kept() {
		err = cerr
	}
	return err
}

// hostConn is the connection under a Client's yamux session. Once a detach
// is under way (expect) it watches what the guest sends for the marker
// that ends it, and the session's end no longer closes the connection.
type hostConn struct {
	net.Conn

	mu     sync.Mutex
	marker []byte        // guarded by mu: what to look for, once expected
	tail   []byte        // guarded by mu: the end of the last read, in case the marker spans reads
	found  chan struct{} // guarded by mu: closed when the marker arrived
	closed bool          // guarded by mu: the session let go of the connection
}

// expect starts watching for marker; the channel is closed when it comes.
// From then on the session's Close leaves the connection open.
func (h *hostConn) expect(marker []byte) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.marker, h.tail, h.found = marker, nil, make(chan struct{})
	return h.found
}

func (h *hostConn) kept() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.marker != nil
}

func (h *hostConn) Read(p []byte) (int, error) {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	n, err := h.Conn.Read(p)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, net.ErrClosed
	}
	if h.marker != nil && n > 0 {
		buf := append(h.tail, p[:n]...)
		if bytes.Contains(buf, h.marker) {
			select {
			case <-h.found:
			default:
				close(h.found)
			}
		}
		if k := len(h.marker) - 1; len(buf) > k {
			buf = buf[len(buf)-k:]
		}
		h.tail = append([]byte(nil), buf...)
	}
	return n, err
}

// Close ends the connection, unless a detach keeps it: then it only stops
// the session's reader.
func (h *hostConn) Close() error {
	h.mu.Lock()
	keep := h.marker != nil
	h.closed = true
	h.mu.Unlock()
	if keep {
		return h.Conn.SetReadDeadline(time.Now())
	}
	return h.Conn.Close()
}

// Done is closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// open opens a stream and sends req. The stream is closed when ctx ends.
func (c *Client) open(ctx context.Context, req Request) (*yamux.Stream, func(), error) {
	st, err := c.sess.OpenStream()
	if err != nil {
		return nil, nil, fmt.Errorf("agentproto: open stream: %w", err)
	}
	// A half-closed stream does not end a pending read: the deadline does.
	stop := context.AfterFunc(ctx, func() { _ = st.SetReadDeadline(time.Now()); st.Close() })
	release := func() { stop(); st.Close() }
	if err := WriteJSON(st, FrameRequest, req); err != nil {
		release()
		return nil, nil, ctxErr(ctx, fmt.Errorf("agentproto: send %s: %w", req.Op, err))
	}
	return st, release, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// call sends a request and reads one response.
func (c *Client) call(ctx context.Context, req Request) (Response, error) {
	_, release, resp, err := c.answered(ctx, req)
	if err == nil {
		release()
	}
	return resp, err
}

// answered sends a request and reads the response every operation starts
// with. On success the stream stays open for what follows; on error it is
// released (and a refusal by the guest comes back with its response).
func (c *Client) answered(ctx context.Context, req Request) (*yamux.Stream, func(), Response, error) {
	st, release, err := c.open(ctx, req)
	if err != nil {
		return nil, nil, Response{}, err
	}
	var resp Response
	if c.answerTimeout > 0 {
		_ = st.SetReadDeadline(time.Now().Add(c.answerTimeout))
	}
	if err := ReadJSON(st, FrameResponse, &resp); err != nil {
		release()
		if ctx.Err() == nil && (errors.Is(err, yamux.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded)) {
			return nil, nil, Response{}, fmt.Errorf("%w within %s (%s)", ErrNoAnswer, c.answerTimeout, req.Op)
		}
		return nil, nil, Response{}, ctxErr(ctx, fmt.Errorf("agentproto: %s: %w", req.Op, err))
	}
	_ = st.SetReadDeadline(time.Time{})
	if err := resp.Err(); err != nil {
		release()
		return nil, nil, resp, err
	}
	return st, release, resp, nil
}

// Hello asks the guest who it is, sets its clock to the host's and reseeds
// its RNG. The host says hello on every (re)connection: after a boot, a
// wake, or a clone's restore.
func (c *Client) Hello(ctx context.Context) (Hello, error) {
	resp, err := c.call(ctx, helloRequest())
	if err != nil {
		return Hello{}, err
	}
	if resp.Hello == nil {
		return Hello{}, errors.New("agentproto: hello: empty answer")
	}
	return *resp.Hello, nil
}

// A guest's clock that reads more than minClockLag behind the host's when
// its hello's answer arrives is stepped; a lag over maxClockLag is not the
// hello's latency (the host stalled on the way) and is left alone.
const (
	minClockLag = 5 * time.Millisecond
	maxClockLag = time.Second
)

// fixClock steps the guest's clock by how far it lagged at hello. The
// hello's time is the host's when the request was sent, and a guest just
// restored under emulation applies it tens of milliseconds later (its
// code is translated afresh), so its clock starts that far behind. The
// answer carries the guest's clock once set: the difference to the host's
// on arrival is the lag, plus the answer's own transit, a fraction of a
// millisecond to a few. A step, unlike a second setting, does not depend
// on how long the guest takes to apply it. A failure only leaves the lag.
func (c *Client) fixClock(ctx context.Context, h Hello) {
	if h.WallUnixNano == 0 { // an agent from before WallUnixNano
		return
	}
	lag := time.Since(time.Unix(0, h.WallUnixNano))
	if lag < minClockLag || lag > maxClockLag {
		return
	}
	_, _ = c.call(ctx, Request{Op: OpHello, ClockStepNanos: lag.Nanoseconds()})
}

// Stat describes path without following a final symlink.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	resp, err := c.call(ctx, Request{Op: OpStat, Path: path})
	if err != nil {
		return FileInfo{}, err
	}
	if resp.Info == nil {
		return FileInfo{}, errors.New("agentproto: stat: empty answer")
	}
	return *resp.Info, nil
}

// List lists a directory.
func (c *Client) List(ctx context.Context, path string) ([]FileInfo, error) {
	resp, err := c.call(ctx, Request{Op: OpList, Path: path})
	return resp.Files, err
}

// Mkdir creates a directory and its parents.
func (c *Client) Mkdir(ctx context.Context, path string) error {
	_, err := c.call(ctx, Request{Op: OpMkdir, Path: path})
	return err
}

// Remove removes a path recursively.
func (c *Client) Remove(ctx context.Context, path string) error {
	_, err := c.call(ctx, Request{Op: OpRemove, Path: path})
	return err
}

// download starts a read-style operation and returns its data stream.
func (c *Client) download(ctx context.Context, req Request) (io.ReadCloser, error) {
	st, release, _, err := c.answered(ctx, req)
	if err != nil {
		return nil, err
	}
	return &dataStream{DataReader: DataReader{R: st}, release: release}, nil
}

type dataStream struct {
	DataReader
	release func()
}

func (d *dataStream) Close() error { d.release(); return nil }

// Read streams a regular file.
func (c *Client) Read(ctx context.Context, path string) (io.ReadCloser, error) {
	return c.download(ctx, Request{Op: OpRead, Path: path})
}

// TarGet streams a tar archive of path.
func (c *Client) TarGet(ctx context.Context, path string) (io.ReadCloser, error) {
	return c.download(ctx, Request{Op: OpTarGet, Path: path})
}

// upload sends r as data frames after req and reads the response.
func (c *Client) upload(ctx context.Context, req Request, r io.Reader) error {
	st, release, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer release()
	// The guest answers early on failure; read its answer concurrently so a
	// refused upload does not block on a full window.
	respc := make(chan error, 1)
	go func() {
		var resp Response
		if err := ReadJSON(st, FrameResponse, &resp); err != nil {
			respc <- ctxErr(ctx, fmt.Errorf("agentproto: %s: %w", req.Op, err))
			return
		}
		respc <- resp.Err()
	}()
	buf := make([]byte, ChunkSize)
	if _, err := io.CopyBuffer(DataWriter{W: st, Typ: FrameData}, r, buf); err != nil {
		return ctxErr(ctx, fmt.Errorf("agentproto: %s: send data: %w", req.Op, err))
	}
	if err := WriteFrame(st, FrameEOF, nil); err != nil {
		return ctxErr(ctx, fmt.Errorf("agentproto: %s: %w", req.Op, err))
	}
	return <-respc
}

// Write creates or replaces a regular file with r's content.
func (c *Client) Write(ctx context.Context, path string, mode uint32, r io.Reader) error {
	return c.upload(ctx, Request{Op: OpWrite, Path: path, Mode: mode}, r)
}

// TarPut extracts the tar archive r into directory dir.
func (c *Client) TarPut(ctx context.Context, dir string, r io.Reader) error {
	return c.upload(ctx, Request{Op: OpTarPut, Path: dir}, r)
}

// Watch watches directory path in the guest (and its subdirectories if
// recursive); entries asks for each event's FileInfo. The watch lasts
// until Close, ctx's end, or the connection's: a park ends it.
func (c *Client) Watch(ctx context.Context, path string, recursive, entries bool) (*Watch, error) {
	st, release, _, err := c.answered(ctx, Request{Op: OpWatch, Path: path, Recursive: recursive, Entries: entries})
	if err != nil {
		return nil, err
	}
	return &Watch{st: st, release: release}, nil
}

// Watch is a directory watch in the guest.
type Watch struct {
	st      *yamux.Stream
	release func()
	buf     []byte
}

// Next waits for the next events. It returns io.EOF once the guest ended
// the watch (the directory went away), and the stream's error once the
// watch or its connection was closed.
func (w *Watch) Next() ([]WatchEvent, error) {
	for {
		typ, p, err := ReadFrame(w.st, w.buf)
		if err != nil {
			return nil, fmt.Errorf("agentproto: watch: %w", err)
		}
		if cap(p) > cap(w.buf) {
			w.buf = p[:0]
		}
		switch typ {
		case FrameEvents:
			var evs []WatchEvent
			if err := json.Unmarshal(p, &evs); err != nil {
				return nil, fmt.Errorf("agentproto: watch: bad events frame: %w", err)
			}
			if len(evs) > 0 {
				return evs, nil
			}
		case FrameEOF:
			return nil, io.EOF
		default:
			return nil, fmt.Errorf("agentproto: watch: unexpected frame type %d", typ)
		}
	}
}

// Close ends the watch.
func (w *Watch) Close() { w.release() }

// Exec starts a command. The returned Process streams its output until it
// exits; ctx's end closes the stream (the guest then kills nothing: call
// Signal first if the command must die).
func (c *Client) Exec(ctx context.Context, x Exec) (*Process, error) {
	return c.start(ctx, Request{Op: OpExec, Exec: &x})
}

// Attach re-attaches to a command started by Exec whose stream ended
// before its exit was acknowledged; the output no stream took comes first.
// A caller that counts the output it received uses AttachAt, which cannot
// lose or repeat any.
func (c *Client) Attach(ctx context.Context, pid int) (*Process, error) {
	return c.start(ctx, Request{Op: OpAttach, PID: pid})
}

// AttachAt re-attaches to a command started by Exec whose stream ended
// before its exit was acknowledged. at is how much of its stdout and
// stderr the caller received, over all its streams: the guest replays the
// output from there, then the exit if the command ended meanwhile. If the
// guest no longer kept all of it, the new Process's Lost says how much
// the replay skips.
func (c *Client) AttachAt(ctx context.Context, pid int, at Offsets) (*Process, error) {
	return c.start(ctx, Request{Op: OpAttach, PID: pid, Offsets: &at})
}

func (c *Client) start(ctx context.Context, req Request) (*Process, error) {
	st, release, resp, err := c.answered(ctx, req)
	if err != nil {
		return nil, err
	}
	p := &Process{PID: resp.PID, st: st, release: release, done: make(chan struct{})}
	if resp.Lost != nil {
		p.Lost = *resp.Lost
	}
	p.stdoutR, p.stdoutW = io.Pipe()
	p.stderrR, p.stderrW = io.Pipe()
	go p.readLoop()
	return p, nil
}

// Process is a command running in the guest.
type Process struct {
	PID int
	// Lost (AttachAt) is the output after the caller's offsets that the
	// guest no longer kept: the stream resumes that much further on.
	Lost Offsets

	st      *yamux.Stream
	release func()

	wmu sync.Mutex // serializes frames to the guest

	stdoutR, stderrR *io.PipeReader
	stdoutW, stderrW *io.PipeWriter

	done chan struct{}
	exit Exit  // set before done closes
	err  error // set before done closes
}

func (p *Process) readLoop() {
	defer close(p.done)
	buf := make([]byte, 0, 64<<10)
	for {
		typ, payload, err := ReadFrame(p.st, buf)
		if err != nil {
			p.err = fmt.Errorf("agentproto: exec stream: %w", err)
			p.stdoutW.CloseWithError(p.err)
			p.stderrW.CloseWithError(p.err)
			return
		}
		switch typ {
		case FrameStdout:
			_, _ = p.stdoutW.Write(payload)
		case FrameStderr:
			_, _ = p.stderrW.Write(payload)
		case FrameExit:
			if err := json.Unmarshal(payload, &p.exit); err != nil {
				p.err = fmt.Errorf("agentproto: exec: bad exit frame: %w", err)
			} else {
				p.ack()
			}
			p.stdoutW.Close()
			p.stderrW.Close()
			return
		}
	}
}

// ackTimeout bounds the write of an exit's acknowledgement: one that
// cannot be sent leaves the guest to forget the command by its bound
// (KeptExits).
const ackTimeout = 5 * time.Second

// ack tells the guest the exit arrived: it forgets the command. Sent
// before the stream is released, so it precedes the stream's close.
func (p *Process) ack() {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.st.SetWriteDeadline(time.Now().Add(ackTimeout))
	_ = WriteFrame(p.st, FrameExitAck, nil)
}

// Stdout and Stderr are the command's output. The caller must read both
// (or close them): the guest's output is not dropped.
func (p *Process) Stdout() io.ReadCloser { return p.stdoutR }

// Stderr: see Stdout.
func (p *Process) Stderr() io.ReadCloser { return p.stderrR }

func (p *Process) send(typ byte, payload []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return WriteFrame(p.st, typ, payload)
}

// Write sends stdin.
func (p *Process) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		c := min(len(b), ChunkSize)
		if err := p.send(FrameStdin, b[:c]); err != nil {
			return n, err
		}
		n += c
		b = b[c:]
	}
	return n, nil
}

// CloseStdin sends EOF on stdin.
func (p *Process) CloseStdin() error { return p.send(FrameStdinEOF, nil) }

// Resize sets the PTY's size.
func (p *Process) Resize(rows, cols int) error {
	b, _ := json.Marshal(Size{Rows: rows, Cols: cols})
	return p.send(FrameResize, b)
}

// Signal sends a signal (by number) to the command's process group.
func (p *Process) Signal(sig int) error {
	if sig <= 0 || sig > 64 {
		return fmt.Errorf("agentproto: bad signal %d", sig)
	}
	return p.send(FrameSignal, []byte{byte(sig)})
}

// Wait waits for the command to exit and returns how it ended.
func (p *Process) Wait() (Exit, error) {
	<-p.done
	p.release()
	return p.exit, p.err
}

// Close releases the stream without waiting.
func (p *Process) Close() { p.release() }
