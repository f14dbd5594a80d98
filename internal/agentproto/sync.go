package agentproto

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
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
const (
	SyncMagic = "COVE-SYNC:"
	AckMagic  = "COVE-ACK:"
	// maxSkip bounds how much stale data either side skips.
	maxSkip = 64 << 20
)

func nonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// GuestSync reads from the port until a sync line, answers it, and
// returns. It returns io.EOF when the host goes away first.
func GuestSync(rw io.ReadWriter) error {
	var pending []byte
	buf := make([]byte, 4096)
	skipped := 0
	for {
		n, err := rw.Read(buf)
		pending = append(pending, buf[:n]...)
		for {
			i := bytes.Index(pending, []byte(SyncMagic))
			if i < 0 {
				// Keep a tail that may be the start of the magic.
				if keep := len(SyncMagic); len(pending) > keep {
					skipped += len(pending) - keep
					pending = pending[len(pending)-keep:]
				}
				break
			}
			line := pending[i+len(SyncMagic):]
			j := bytes.IndexByte(line, '\n')
			if j < 0 {
				pending = pending[i:]
				break
			}
			nonce := line[:j]
			pending = line[j+1:]
			if len(nonce) != 16 {
				continue
			}
			if len(pending) > 0 && bytes.Contains(pending, []byte(SyncMagic)) {
				continue // a newer sync is already here: answer that one
			}
			_, werr := rw.Write([]byte(AckMagic + string(nonce) + "\n"))
			return werr
		}
		if skipped > maxSkip {
			skipped = 0
		}
		if err != nil {
			return err
		}
	}
}

// hostSync sends a sync line on conn and waits up to wait for its answer.
// It returns a conn that yields whatever followed the answer.
func hostSync(ctx context.Context, conn net.Conn, wait time.Duration) (net.Conn, error) {
	n := nonce()
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := conn.Write([]byte(SyncMagic + n + "\n")); err != nil {
		return nil, fmt.Errorf("agentproto: sync: %w", err)
	}
	want := []byte(AckMagic + n + "\n")
	var pending []byte
	buf := make([]byte, 4096)
	skipped := 0
	for {
		k, err := conn.Read(buf)
		pending = append(pending, buf[:k]...)
		if i := bytes.Index(pending, want); i >= 0 {
			rest := append([]byte(nil), pending[i+len(want):]...)
			return &prefixConn{Conn: conn, r: io.MultiReader(bytes.NewReader(rest), conn)}, nil
		}
		if len(pending) > len(want) {
			skipped += len(pending) - len(want)
			pending = pending[len(pending)-len(want):]
		}
		if skipped > maxSkip {
			return nil, errors.New("agentproto: sync: too much stale data from the guest")
		}
		if err != nil {
			return nil, fmt.Errorf("agentproto: sync: %w", err)
		}
	}
}

type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Connect dials the guest agent (dial is called again for every attempt),
// syncs the stream, starts the yamux session and says hello. It retries
// until ctx ends; the wait for each sync answer grows from 1 s to 4 s,
// since a booting guest answers only once its agent runs, and a guest just
// restored runs slowly at first under emulation.
func Connect(ctx context.Context, dial func(context.Context) (net.Conn, error)) (*Client, Hello, error) {
	wait := time.Second
	var lastErr error
	for {
		if ctx.Err() != nil {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return nil, Hello{}, fmt.Errorf("agentproto: connect: %w (last error: %v)", ctx.Err(), lastErr)
		}
		conn, err := dial(ctx)
		if err != nil {
			return nil, Hello{}, err
		}
		synced, err := hostSync(ctx, conn, wait)
		if err != nil {
			conn.Close()
			lastErr = err
			wait = min(wait*2, 4*time.Second)
			continue
		}
		c, err := NewClient(synced)
		if err != nil {
			conn.Close()
			return nil, Hello{}, err
		}
		h, err := c.Hello(ctx)
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
		return c, h, nil
	}
}
