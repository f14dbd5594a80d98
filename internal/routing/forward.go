package routing

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// How soon a routed call finds its server gone: a connect is given up
// after DialTimeout, and a connection (a kept-alive one that a call
// reuses included) whose peer stops acknowledging (a partition, a host
// gone without a word) fails after DeadPeer: what was sent is not
// acknowledged by then, or the keepalive probes, every DialTimeout while
// a call waits on a quiet command, go unanswered. Either is a 503 in
// seconds, not in TCP's minutes.
const (
	DialTimeout = 5 * time.Second
	DeadPeer    = 15 * time.Second
)

// NewTransport is http.DefaultTransport's settings with a dialer bounded
// as above: the transport of routed calls.
func NewTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{
		Timeout: DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: DialTimeout, Interval: DialTimeout,
			Count: int(DeadPeer / DialTimeout)},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(DeadPeer.Milliseconds()))
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	t.DialContext = d.DialContext
	// Many clients' calls go to the same few servers at once: keep their
	// connections for reuse (the default keeps 2 per server, and a burst
	// of routed calls would dial, and leave in TIME_WAIT, one each).
	t.MaxIdleConnsPerHost = IdlePerServer
	return t
}

// IdlePerServer is how many idle connections to each other server a
// routing transport keeps.
const IdlePerServer = 256

// Forward carries r, unchanged but for Header (set to by: the forwarding
// server's node, "-" for none) and HeaderTo (t's node), to t's server
// over rt, and copies its
// answer to w as it comes (streams flushed at once, upgrades carried).
// It returns nil once the answer is written, else why t's server could
// not be reached (nothing written then: the caller answers); a client
// gone away is context.Canceled.
func Forward(w http.ResponseWriter, r *http.Request, t Target, by string, rt http.RoundTripper, log *slog.Logger) error {
	if by == "" {
		by = "-"
	}
	var failed error
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(t.URL)
			pr.Out.Header.Set(Header, by)
			pr.Out.Header.Set(HeaderTo, t.NodeID)
		},
		Transport:     rt,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandler: func(_ http.ResponseWriter, _ *http.Request, err error) {
			failed = err
		},
	}
	// Full duplex: the request body is the forward's to read until the
	// transport is done with it. Without it, net/http's server, once the
	// answer's header goes out (at once here: FlushInterval -1), reads
	// what is left of the request body and closes it; the transport,
	// which writes a body it cannot size in memory straight to the
	// socket, reads it once more to see its end after the bytes went out,
	// and a read that finds it closed fails the request's write, on which
	// the transport closes the connection under the answer it is reading:
	// the client had a 200 and its Content-Length and gets no body ("use
	// of closed network connection" on the forwarding server). A writer
	// that cannot (the buffered answer of a create placed elsewhere)
	// sends nothing before the forward returns, so nothing is discarded.
	_ = http.NewResponseController(w).EnableFullDuplex()
	p.ServeHTTP(w, r)
	if failed != nil && errors.Is(failed, context.Canceled) && r.Context().Err() != nil {
		return context.Canceled
	}
	return failed
}
