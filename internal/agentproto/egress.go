package agentproto

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// connectHeaderWait bounds how long a guest may take to send the request
// that starts a stream it opened: a stream that says nothing is closed.
const connectHeaderWait = 10 * time.Second

// MaxResolveName bounds the name a resolve report carries (a DNS name
// has 253 characters at most).
const MaxResolveName = 253

// resolveReports bounds how many resolve reports a guest may make a
// second (and at once): they are logged on the host, and the guest is not
// trusted to be sparing.
const resolveReports = 5

// SetupEgress tells the guest how to reach the host's egress proxy: it
// trusts setup.CACert, listens on EgressAddr, answers its own DNS queries
// (refusing them: the proxy resolves) and sets the proxy environment of
// its commands. A guest that has it already changes nothing.
func (c *Client) SetupEgress(ctx context.Context, setup EgressSetup) error {
	if _, err := c.call(ctx, Request{Op: OpEgressSetup, Egress: &setup}); err != nil {
		return fmt.Errorf("agentproto: egress setup: %w", err)
	}
	return nil
}

// ServeConnects accepts the streams the guest opens (see the package doc)
// until the connection to the guest ends: each egress connection goes to
// handle, on a goroutine of its own (handle owns the stream and must close
// it), and each name the guest refused to resolve to resolved (at most
// resolveReports a second; more are dropped). A stream that does not start
// with an OpConnect or OpResolve request within connectHeaderWait is
// closed unanswered: the guest is not trusted to open only what the
// protocol says.
func (c *Client) ServeConnects(ctx context.Context, handle func(net.Conn), resolved func(name string)) error {
	reports := &perSecond{max: resolveReports}
	for {
		st, err := c.sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("agentproto: accept: %w", err)
		}
		go func() {
			_ = st.SetReadDeadline(time.Now().Add(connectHeaderWait))
			var req Request
			err := ReadJSON(st, FrameRequest, &req)
			switch {
			case err != nil:
			case req.Op == OpResolve:
				st.Close()
				if validName(req.Name) && resolved != nil && reports.Allow() {
					resolved(req.Name)
				}
				return
			case req.Op != OpConnect:
				err = errors.New("not a connect request")
			}
			if err != nil {
				st.Close()
				return
			}
			_ = st.SetReadDeadline(time.Time{})
			handle(st)
		}()
	}
}

// validName reports whether a resolve report's name is one a host may log
// as it is: printable ASCII, no spaces, at most MaxResolveName.
func validName(name string) bool {
	if name == "" || len(name) > MaxResolveName {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] > '~' {
			return false
		}
	}
	return true
}

// perSecond allows max events in each second (this package keeps to the
// standard library: the guest links it).
type perSecond struct {
	max int

	mu    sync.Mutex
	start time.Time // guarded by mu: the current second's start
	n     int       // guarded by mu: events allowed in it
}

func (p *perSecond) Allow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.start) >= time.Second {
		p.start, p.n = now, 0
	}
	if p.n >= p.max {
		return false
	}
	p.n++
	return true
}
