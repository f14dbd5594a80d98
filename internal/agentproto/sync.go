package agentproto

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// A virtio-serial port outlives host connections: bytes the guest wrote
// after the last host went away (a yamux FIN, say) are queued and reach the
// next host, and bytes that host writes can reach a guest session that has
// not yet seen the disconnect. So each connection starts with a sync: the
// host sends SyncMagic and a fresh nonce on a line; the guest, skipping
// anything else, answers AckMagic and the same nonce; the host skips
// anything before that answer. Only then does yamux start, on a clean
// stream. If no answer comes in time, the host drops the connection (which
// the guest sees) and tries again with a new nonce.
//
// The sync line may carry the hello request, after the nonce and a space
// (one line of JSON); the guest then says hello (sets its clock, reseeds)
// before it answers, and its answer carries the Hello the same way. That
// spares the first stream of every connection, on the wake path where each
// new piece of guest code costs (see DESIGN.md). A guest that does not know
// this form skips the line as malformed, so Connect alternates between the
// two forms when a sync goes unanswered.
//
// QuietMagic starts the line a guest writes after a detach that carried a
// nonce: its session is over and it waits for the next sync, so a save
// from then on catches it idle (see Client.Detach).
const (
	SyncMagic  = "COVE-SYNC:"
	AckMagic   = "COVE-ACK:"
	QuietMagic = "COVE-QUIET:"
	// maxSkip bounds how much stale data either side skips.
	maxSkip = 64 << 20
	// maxHelloLine bounds the JSON a sync line or its answer carries.
	maxHelloLine = 4 << 10
	nonceLen     = 16
)

func nonce() string {
	b := make([]byte, nonceLen/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// GuestSync reads from the port until a sync line, answers it, and
// returns. A sync line that carries a hello request is answered with
// hello's answer to it; with hello nil, with a plain answer (the host then
// says hello on the session). It returns io.EOF when the host goes away
// first.
func GuestSync(rw io.ReadWriter, hello func(Request) Hello) error {
	var pending []byte
	buf := make([]byte, 4096)
	for {
		n, err := rw.Read(buf)
		pending = append(pending, buf[:n]...)
		for {
			i := bytes.Index(pending, []byte(SyncMagic))
			if i < 0 {
				// Keep a tail that may be the start of the magic. The
				// guest skips stale data for as long as it comes: only
				// the host gives up (maxSkip).
				if keep := len(SyncMagic); len(pending) > keep {
					pending = pending[len(pending)-keep:]
				}
				break
			}
			line := pending[i+len(SyncMagic):]
			j := bytes.IndexByte(line, '\n')
			if j < 0 {
				if len(line) > nonceLen+1+maxHelloLine {
					pending = line // too long for a sync line: skip it
					continue
				}
				pending = pending[i:]
				break
			}
			body := line[:j]
			pending = line[j+1:]
			nonce, req, ok := parseSync(body)
			if !ok {
				continue
			}
			if len(pending) > 0 && bytes.Contains(pending, []byte(SyncMagic)) {
				continue // a newer sync is already here: answer that one
			}
			ack := AckMagic + nonce
			if req != nil && hello != nil {
				b, _ := json.Marshal(hello(*req))
				ack += " " + string(b)
			}
			_, werr := rw.Write([]byte(ack + "\n"))
			return werr
		}
		if err != nil {
			return err
		}
	}
}

// parseSync splits a sync line (after the magic) into its nonce and the
// hello request it carries, if any.
func parseSync(body []byte) (nonce string, req *Request, ok bool) {
	if len(body) < nonceLen || (len(body) > nonceLen && body[nonceLen] != ' ') {
		return "", nil, false
	}
	nonce = string(body[:nonceLen])
	if len(body) == nonceLen {
		return nonce, nil, true
	}
	var r Request
	if err := json.Unmarshal(body[nonceLen+1:], &r); err != nil || r.Op != OpHello {
		return "", nil, false
	}
	return nonce, &r, true
}

// helloRequest is what the host sends with every hello: its clock and
// fresh entropy.
func helloRequest() Request {
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	return Request{Op: OpHello, TimeUnixNano: time.Now().UnixNano(), Seed: seed}
}

// syncer is the host's side of the sync on one connection. A sync that
// goes unanswered in time is sent again on the same connection once, with
// a new nonce: the answer to any of them proves the guest reads this
// connection. (Dialling anew at every miss would queue connections at the
// VMM's socket faster than a slow guest works through them: it would
// answer each one after the host left it.)
type syncer struct {
	conn    net.Conn
	nonces  map[string]bool // sent on conn
	latest  string          // the last one sent
	pending []byte          // read, not yet matched
	skipped int
	// unanswered counts the syncs that went unanswered in time.
	unanswered int
}

// sync sends a sync line (carrying req, if not nil) and waits up to wait
// for an answer to it or to an earlier one on the connection. It returns a
// conn that yields whatever followed the answer, and the Hello the answer
// carried if it answered this sync (an older one's Hello is stale).
func (s *syncer) sync(ctx context.Context, wait time.Duration, req *Request) (net.Conn, *Hello, error) {
	conn := s.conn
	n := nonce()
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	line := SyncMagic + n
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return nil, nil, fmt.Errorf("agentproto: sync: %w", err)
		}
		line += " " + string(b)
	}
	if _, err := conn.Write([]byte(line + "\n")); err != nil {
		return nil, nil, fmt.Errorf("agentproto: sync: %w", err)
	}
	if s.nonces == nil {
		s.nonces = map[string]bool{}
	}
	s.nonces[n], s.latest = true, n
	ack := []byte(AckMagic)
	keep := len(ack) + nonceLen
	buf := make([]byte, 4096)
	for {
		k, err := conn.Read(buf)
		s.pending = append(s.pending, buf[:k]...)
		for {
			i := bytes.Index(s.pending, ack)
			if i < 0 {
				if len(s.pending) > keep {
					s.skipped += len(s.pending) - keep
					s.pending = s.pending[len(s.pending)-keep:]
				}
				break
			}
			body := s.pending[i+len(ack):]
			if len(body) < nonceLen {
				s.pending = s.pending[i:]
				break
			}
			got := string(body[:nonceLen])
			body = body[nonceLen:]
			if !s.nonces[got] {
				s.pending = body // not an answer to this connection's syncs
				continue
			}
			j := bytes.IndexByte(body, '\n')
			if j < 0 {
				if len(body) > 1+maxHelloLine {
					return nil, nil, errors.New("agentproto: sync: answer too long")
				}
				s.pending = s.pending[i:]
				break
			}
			rest := append([]byte(nil), body[j+1:]...)
			body = body[:j]
			var h *Hello
			switch {
			case len(body) == 0:
			case body[0] == ' ':
				h = new(Hello)
				if err := json.Unmarshal(body[1:], h); err != nil {
					return nil, nil, fmt.Errorf("agentproto: sync: bad hello in the answer: %w", err)
				}
			default:
				s.pending = body // not our answer after all
				continue
			}
			if got != s.latest {
				h = nil // it carries an older clock: say hello again
			}
			return &prefixConn{Conn: conn, r: io.MultiReader(bytes.NewReader(rest), conn)}, h, nil
		}
		if s.skipped > maxSkip {
			return nil, nil, errors.New("agentproto: sync: too much stale data from the guest")
		}
		if err != nil {
			return nil, nil, fmt.Errorf("agentproto: sync: %w", err)
		}
	}
}

// prefixConn is a connection whose first bytes were read already: they
// are read again first.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Connect dials the guest agent, syncs the stream, starts the yamux
// session and says hello. It retries until ctx ends, on the same
// connection while it lasts (dial is called again only when it fails; see
// syncer); the wait for each sync answer grows from 1 s to 4 s,
// since a booting guest answers only once its agent runs, and a guest just
// restored runs slowly at first under emulation. The hello rides on the
// sync line; every other attempt uses the plain sync line that agents
// without that form answer (see SyncMagic).
func Connect(ctx context.Context, dial func(context.Context) (net.Conn, error)) (*Client, Hello, error) {
	wait := time.Second
	var lastErr error
	var sy *syncer // the connection being synced
	defer func() {
		if sy != nil {
			sy.conn.Close()
		}
	}()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return nil, Hello{}, fmt.Errorf("agentproto: connect: %w (last error: %v)", ctx.Err(), lastErr)
		}
		if sy == nil {
			conn, err := dial(ctx)
			if err != nil {
				return nil, Hello{}, err
			}
			sy = &syncer{conn: conn}
		}
		var req *Request
		if attempt%2 == 0 {
			r := helloRequest()
			req = &r
		}
		synced, h, err := sy.sync(ctx, wait, req)
		if err != nil {
			lastErr = err
			wait = min(wait*2, 4*time.Second)
			sy.unanswered++
			// The connection itself failed (the VMM let it go, or too much
			// garbage came), or it went unanswered twice: a new one. The
			// guest may have missed the VMM's notice that a host is
			// connected (virtio-serial drops it when the guest has no
			// control buffer free at that instant); only a new
			// connection sends it again.
			if !errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil || sy.unanswered >= 2 {
				sy.conn.Close()
				sy = nil
			}
			continue
		}
		conn := sy.conn
		sy = nil
		c, err := NewClient(synced)
		if err != nil {
			conn.Close()
			return nil, Hello{}, err
		}
		if h != nil {
			c.fixClock(ctx, *h)
			c.features = h.Features
			return c, *h, nil
		}
		hello, err := c.Hello(ctx)
		if err != nil {
			c.Close()
			lastErr = err
			// Let the guest see this connection end before the next.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		c.fixClock(ctx, hello)
		c.features = hello.Features
		return c, hello, nil
	}
}
