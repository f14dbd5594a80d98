package trigger

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/time/rate"

	"github.com/cove-dev/cove/api"
)

// Defaults of the Receiver's bounds on pending deliveries, those whose
// signature is not checked yet.
const (
	// DefaultMaxPendingMemory holds 256 pending bodies of 64 KiB or more,
	// and more smaller ones.
	DefaultMaxPendingMemory = 16 << 20
	// DefaultMaxPendingSpool holds 40 pending bodies of GitHub's largest.
	DefaultMaxPendingSpool = 1 << 30
	// DefaultMaxSenderPending is well above what one sender has in flight
	// when it delivers at full speed (cove's benchmark sends from 32
	// goroutines on one address).
	DefaultMaxSenderPending = 64
	// DefaultMaxPendingRate is the byte rate pending bodies are read at,
	// all senders together: GitHub's largest payload (25 MB) in under two
	// seconds from one sender, which gets half of it; a typical delivery
	// (a few KiB) never waits.
	DefaultMaxPendingRate = 32 << 20
)

// bodyHead is the most of a pending body held in memory; a larger body
// goes to a spool file, with the head buffer as the copy buffer.
const bodyHead = 64 << 10

// spoolStep is how much spool a body of unknown length claims at a time.
const spoolStep = 1 << 20

// Codes of answers that api has no code for.
const (
	codeTooManyRequests = "too_many_requests"
	codeRequestTimeout  = "request_timeout"
)

// pendingLoad is what pending deliveries hold, all together and per sender.
type pendingLoad struct {
	rateOnce sync.Once
	rate     *rate.Limiter // the read rate of all pending bodies; see pace

	mu      sync.Mutex
	memory  int64                  // guarded by mu; bytes of body heads
	spool   int64                  // guarded by mu; bytes claimed in SpoolDir
	senders map[string]*senderLoad // guarded by mu; by sender; absent when none pending
}

type senderLoad struct {
	n     int           // pending deliveries
	bytes int64         // their body bytes claimed, memory and spool
	rate  *rate.Limiter // its share of the read rate (half of all)
}

// claim is what one pending delivery holds of the Receiver's limits; it
// gives all of it back on release.
type claim struct {
	r      *Receiver
	sender string
	rate   *rate.Limiter // the sender's share of the read rate
	memory int64
	spool  int64
	done   bool
}

// senderOf names a request's sender: its remote IP address, or the /64 of
// an IPv6 one (a host is handed a /64 at least).
func senderOf(req *http.Request) string {
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return req.RemoteAddr
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// admit counts a new pending delivery against its sender's limit.
func (r *Receiver) admit(req *http.Request) (*claim, *hookRejection) {
	sender := senderOf(req)
	limit := r.MaxSenderPending
	if limit <= 0 {
		limit = DefaultMaxSenderPending
	}
	p := &r.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.senders[sender]
	if s == nil {
		if p.senders == nil {
			p.senders = map[string]*senderLoad{}
		}
		s = &senderLoad{rate: rate.NewLimiter(rate.Limit(r.maxRate()/2), bodyHead)}
		p.senders[sender] = s
	}
	if s.n >= limit {
		return nil, &hookRejection{status: http.StatusTooManyRequests, code: codeTooManyRequests,
			msg:    "too many deliveries from this address in progress; retry later",
			detail: fmt.Sprintf("sender %s has %d deliveries pending, the limit", sender, s.n)}
	}
	s.n++
	return &claim{r: r, sender: sender, rate: s.rate}, nil
}

func (r *Receiver) maxRate() int64 {
	if r.MaxPendingRate > 0 {
		return r.MaxPendingRate
	}
	return DefaultMaxPendingRate
}

// pace waits until n more body bytes may be read: within the sender's
// share, then within the rate of all senders. Hashing and spooling what
// anyone may send costs CPU the host's sessions need; paced, a flood of
// unsigned bodies costs a bounded share of a core (the bench: a neighbour
// session's exec round trip 9x slower under 20 senders at full speed,
// unpaced). n is at most bodyHead, the limiters' burst.
func (c *claim) pace(ctx context.Context, n int) error {
	p := &c.r.pending
	p.rateOnce.Do(func() { p.rate = rate.NewLimiter(rate.Limit(c.r.maxRate()), bodyHead) })
	if err := c.rate.WaitN(ctx, n); err != nil {
		return err
	}
	return p.rate.WaitN(ctx, n)
}

// take adds memory and spool bytes to the claim, within every limit.
func (c *claim) take(memory, spool int64) *hookRejection {
	r := c.r
	maxMem, maxSpool := r.MaxPendingMemory, r.MaxPendingSpool
	if maxMem <= 0 {
		maxMem = DefaultMaxPendingMemory
	}
	if maxSpool <= 0 {
		maxSpool = DefaultMaxPendingSpool
	}
	p := &r.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.senders[c.sender]
	switch {
	case s.bytes+memory+spool > 2*r.maxBody():
		return &hookRejection{status: http.StatusTooManyRequests, code: codeTooManyRequests,
			msg:    "too many bytes from this address in progress; retry later",
			detail: fmt.Sprintf("sender %s has %d body bytes pending; %d more would pass the limit of %d", c.sender, s.bytes, memory+spool, 2*r.maxBody())}
	case p.memory+memory > maxMem:
		return hookBusy(fmt.Sprintf("pending bodies hold %d bytes of memory; %d more would pass the limit of %d", p.memory, memory, maxMem))
	case p.spool+spool > maxSpool:
		return hookBusy(fmt.Sprintf("pending bodies hold %d bytes of spool; %d more would pass the limit of %d", p.spool, spool, maxSpool))
	}
	p.memory += memory
	p.spool += spool
	s.bytes += memory + spool
	c.memory += memory
	c.spool += spool
	return nil
}

// hookBusy is the 503 of a receiver whose pending limits are reached.
func hookBusy(detail string) *hookRejection {
	return &hookRejection{status: http.StatusServiceUnavailable, code: api.CodeUnavailable,
		msg: "too many deliveries in progress; retry later", detail: detail}
}

// release gives back everything the claim holds; it may be called again.
func (c *claim) release() {
	if c.done {
		return
	}
	c.done = true
	p := &c.r.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	p.memory -= c.memory
	p.spool -= c.spool
	s := p.senders[c.sender]
	s.n--
	s.bytes -= c.memory + c.spool
	if s.n == 0 {
		delete(p.senders, c.sender)
	}
}

func (r *Receiver) maxBody() int64 {
	if r.MaxBody > 0 {
		return r.MaxBody
	}
	return DefaultMaxBody
}

// pendingBody is a body whose signature is not checked yet: in memory if
// it fits in bodyHead, else all of it in an unlinked spool file.
type pendingBody struct {
	mem  []byte
	file *os.File
	size int64
}

// bytes returns the whole body.
func (b *pendingBody) bytes() ([]byte, error) {
	if b.file == nil {
		return b.mem, nil
	}
	raw := make([]byte, b.size)
	if _, err := b.file.ReadAt(raw, 0); err != nil {
		return nil, err
	}
	return raw, nil
}

// close removes the spool file, if any; it may be called again.
func (b *pendingBody) close() {
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
}

// readBody reads the body, at most MaxBody bytes, into hashes and a
// pendingBody, claiming its memory and spool through c as it goes.
func (r *Receiver) readBody(w http.ResponseWriter, req *http.Request, c *claim, hashes []hash.Hash) (*pendingBody, *hookRejection) {
	limit := r.maxBody()
	if req.ContentLength > limit {
		return nil, hookTooLarge(limit)
	}
	src := http.MaxBytesReader(w, req.Body, limit)
	declared := req.ContentLength // -1: unknown
	head := int64(bodyHead)
	if declared >= 0 && declared < head {
		head = declared
	}
	if rej := c.take(head, 0); rej != nil {
		return nil, rej
	}
	buf := make([]byte, head)
	n, err := io.ReadFull(src, buf)
	if perr := c.pace(req.Context(), n); perr != nil {
		return nil, hookReadError(cause(err, perr), limit)
	}
	hashAll(hashes, buf[:n])
	switch {
	case int64(n) == declared || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) && declared < 0:
		// All of it, unless a longer body than declared follows: the
		// server reads no more than Content-Length.
		return &pendingBody{mem: buf[:n], size: int64(n)}, nil
	case err != nil:
		return nil, hookReadError(err, limit)
	}

	// Larger than the head: spool it all.
	b := &pendingBody{size: int64(n)}
	want := min(spoolStep, limit) // a body claims no more than it may hold
	if declared > 0 {
		want = declared
	}
	if rej := c.take(0, want); rej != nil {
		return nil, rej
	}
	if b.file, err = r.spoolFile(); err != nil {
		return nil, hookUnavailable("spool body: " + err.Error())
	}
	if _, err := b.file.Write(buf[:n]); err != nil {
		b.close()
		return nil, hookUnavailable("spool body: " + err.Error())
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if perr := c.pace(req.Context(), n); perr != nil {
				b.close()
				return nil, hookReadError(cause(err, perr), limit)
			}
			if need := b.size + int64(n) - c.spool; need > 0 {
				if rej := c.take(0, min(max(need, spoolStep), limit-c.spool)); rej != nil {
					b.close()
					return nil, rej
				}
			}
			hashAll(hashes, buf[:n])
			if _, werr := b.file.Write(buf[:n]); werr != nil {
				b.close()
				return nil, hookUnavailable("spool body: " + werr.Error())
			}
			b.size += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			b.close()
			return nil, hookReadError(err, limit)
		}
	}
}

// cause is the error to answer for a read that returned readErr and
// whose pacing then failed with paceErr: the read's own failure (a body
// cut off by its deadline cancels the request's context too, and is a 408,
// not the context's end), else the pacing's.
func cause(readErr, paceErr error) error {
	if readErr != nil && !errors.Is(readErr, io.EOF) && !errors.Is(readErr, io.ErrUnexpectedEOF) {
		return readErr
	}
	return paceErr
}

// spoolFile makes an unlinked file in SpoolDir: nothing is left behind,
// whatever becomes of the server.
func (r *Receiver) spoolFile() (*os.File, error) {
	dir := r.SpoolDir
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "cove-hook-*")
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			f, err = os.CreateTemp(dir, "cove-hook-*")
		}
	}
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func hashAll(hashes []hash.Hash, p []byte) {
	for _, h := range hashes {
		h.Write(p)
	}
}

func hookTooLarge(limit int64) *hookRejection {
	return hookReject(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body is larger than the limit of %d bytes", limit)
}

// hookReadError answers a body that could not be read.
func hookReadError(err error, limit int64) *hookRejection {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return hookTooLarge(limit)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &hookRejection{status: http.StatusRequestTimeout, code: codeRequestTimeout,
			msg: "the body did not arrive in time", detail: "read body: " + err.Error()}
	}
	return hookReject(http.StatusBadRequest, api.CodeInvalid, "read body: %v", err)
}
