package agentproto

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// connectHeaderWait bounds how long a guest may take to send the request
// that starts a stream it opened: a stream that says nothing is closed.
const connectHeaderWait = 10 * time.Second

// SetupEgress tells the guest how to reach the host's egress proxy: it
// trusts setup.CACert, listens on EgressAddr and sets the proxy
// environment of its commands. A guest that has it already changes nothing.
func (c *Client) SetupEgress(ctx context.Context, setup EgressSetup) error {
	if _, err := c.call(ctx, Request{Op: OpEgressSetup, Egress: &setup}); err != nil {
		return fmt.Errorf("agentproto: egress setup: %w", err)
	}
	return nil
}

// ServeConnects accepts the streams the guest opens for its programs'
// egress connections (see the package doc) and calls handle with each, on a
// goroutine of its own, until the connection to the guest ends. handle owns
// the stream and must close it. A stream that does not start with an
// OpConnect request within connectHeaderWait is closed unanswered: the
// guest is not trusted to open only what the protocol says.
func (c *Client) ServeConnects(ctx context.Context, handle func(net.Conn)) error {
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
			if err == nil && req.Op != OpConnect {
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
