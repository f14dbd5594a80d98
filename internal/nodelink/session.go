package nodelink

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// ErrNotConnected is the error of a call to a node (or, on a node, to the
// server) while no control connection is up.
var ErrNotConnected = errors.New("nodelink: not connected")

// yamuxConfig is the session's configuration on both sides: keepalives
// find a dead peer within about KeepAliveInterval plus a write timeout.
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = 15 * time.Second
	c.LogOutput = io.Discard // errors come back from the calls
	return c
}

// overWebSocket makes a net.Conn of c's binary messages, for yamux. It
// lives until closed: the context only ends the WebSocket's reads.
func overWebSocket(c *websocket.Conn) net.Conn {
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary)
}

// serveStreams serves h over every stream the peer opens on sess, one
// HTTP/1.1 exchange per stream, until sess closes. base is the context of
// every request.
func serveStreams(sess *yamux.Session, h http.Handler, base context.Context) {
	if h == nil {
		h = http.NotFoundHandler()
	}
	srv := &http.Server{
		Handler:           h,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 30 * time.Second,
	}
	_ = srv.Serve(sess) // returns when the session closes
	_ = srv.Close()
}

// streamTransport is an http.RoundTripper that opens a new stream of the
// session that sess returns for each request. Keep-alives are off: a
// stream carries one exchange, and opening one costs one frame.
func streamTransport(sess func(ctx context.Context, host string) (*yamux.Session, error)) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			s, err := sess(ctx, host)
			if err != nil {
				return nil, err
			}
			return s.Open()
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
}
