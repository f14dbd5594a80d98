package nodelink

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
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

// Bounds on what a peer's streams may hold of the side that serves them:
// the other end of a control connection is not trusted to behave.
const (
	// maxStreamsServed bounds the streams of one connection served at
	// once: the next waits in yamux's accept backlog (256), and past
	// that yamux resets it. A peer opening streams by the thousand holds
	// a bounded number of goroutines and buffers.
	maxStreamsServed = 64
	// maxHeaderBytes bounds a request's header (431 past it).
	maxHeaderBytes = 64 << 10
)

// streamHeaderTimeout bounds the wait for a stream's request header (a
// stream that sends none is closed); a variable for tests.
var streamHeaderTimeout = 30 * time.Second

// serveStreams serves h over every stream the peer opens on sess, one
// HTTP/1.1 exchange per stream (no keep-alive: a stream is closed after
// its answer), at most maxStreamsServed at once, until sess closes. base
// is the context of every request.
func serveStreams(sess *yamux.Session, h http.Handler, base context.Context) {
	if h == nil {
		h = http.NotFoundHandler()
	}
	srv := &http.Server{
		Handler:           h,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: streamHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	srv.SetKeepAlivesEnabled(false)
	ln := &limitListener{Listener: sess, slots: make(chan struct{}, maxStreamsServed), done: sess.CloseChan()}
	_ = srv.Serve(ln) // returns when the session closes
	_ = srv.Close()
}

// limitListener accepts a stream only while fewer than cap(slots) it
// accepted are open; done ends a wait for a slot.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  <-chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &slotConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

// slotConn gives its slot back when closed.
type slotConn struct {
	net.Conn
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
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
		DisableKeepAlives:      true,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
		MaxResponseHeaderBytes: maxHeaderBytes, // the peer's answers are bounded as its requests are
	}
}
