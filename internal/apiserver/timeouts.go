package apiserver

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// Timeouts is how long the server waits on a client. A request that
// carries the bearer token is trusted with its own pace: once the gate has
// checked the token it lifts the read and write deadlines, so that exec
// streams, the exec WebSocket, file transfers of gigabytes, image and
// template builds, park and wake run as long as they need. Everything else
// (health, metrics, webhooks, refused requests) has the deadlines below.
// Zero fields take the defaults.
type Timeouts struct {
	// ReadHeader bounds reading a request's header; default 10 s.
	ReadHeader time.Duration
	// Read bounds reading a whole request, header and body, until the
	// token is checked; default 30 s. A webhook's body has its own pace
	// (HookGrace, HookRate).
	Read time.Duration
	// Write bounds writing an answer to a request without the token, from
	// the end of its header (for a webhook, from the end of its body);
	// default 30 s.
	Write time.Duration
	// Idle bounds the wait for the next request on a kept-alive
	// connection; default 60 s.
	Idle time.Duration
	// HookGrace and HookRate pace a webhook's body: once HookGrace has
	// passed since the handler began to read it, the body must keep up an
	// average of HookRate bytes per second (a read waits at most until
	// HookGrace + n/HookRate after the start, n the bytes read before
	// it), or the read fails and the sender gets 408. Defaults 10 s and
	// 128 KiB/s: GitHub's largest payload, 25 MiB, may take 210 s, a
	// trickle of bytes 10 s.
	HookGrace time.Duration
	HookRate  int64 // bytes per second
}

// withDefaults fills in the zero fields.
func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.ReadHeader, 10*time.Second)
	def(&t.Read, 30*time.Second)
	def(&t.Write, 30*time.Second)
	def(&t.Idle, 60*time.Second)
	def(&t.HookGrace, 10*time.Second)
	if t.HookRate <= 0 {
		t.HookRate = 128 << 10
	}
	return t
}

// HTTPServer returns the http.Server that serves s with Config.Timeouts;
// its caller sets Addr or passes a listener to Serve.
func (s *Server) HTTPServer() *http.Server {
	t := s.timeouts
	return &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
	}
}

// pacedBody moves the connection's read deadline as a webhook body
// arrives (Timeouts.HookGrace, HookRate), and once it is all in gives the
// handler Timeouts.Write to answer.
type pacedBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	start time.Time
	t     Timeouts
	n     int64 // bytes read so far
	done  bool
}

func paceHookBody(w http.ResponseWriter, r *http.Request, t Timeouts) {
	r.Body = &pacedBody{ReadCloser: r.Body, rc: http.NewResponseController(w), start: time.Now(), t: t}
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	due := b.start.Add(b.t.HookGrace + time.Duration(float64(b.n)/float64(b.t.HookRate)*float64(time.Second)))
	_ = b.rc.SetReadDeadline(due)
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if errors.Is(err, io.EOF) {
		// The body is in: what is left is the server's work. No read
		// deadline (the server reads on to notice a client that goes
		// away), and the answer has Timeouts.Write from now.
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
		_ = b.rc.SetWriteDeadline(time.Now().Add(b.t.Write))
	}
	return n, err
}
