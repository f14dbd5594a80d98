package routing_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/routing"
)

// lateEOFBody is a forwarded request's body whose read past its data (the
// transport's look for the body's end once the bytes went out) waits
// until the client has the answer's header: the order that, about one
// exec in 2,000 between processes, a busy scheduler gives the
// transport's write goroutine. It makes that order certain; the body it
// reads is the server's own.
type lateEOFBody struct {
	io.ReadCloser
	gotHeader <-chan struct{}
	readLate  chan<- error
	once      sync.Once
	left      int64 // data not read yet
	eof       bool
}

func (b *lateEOFBody) Read(p []byte) (int, error) {
	if b.left > 0 && !b.eof {
		n, err := b.ReadCloser.Read(p)
		b.left -= int64(n)
		b.eof = err != nil
		return n, err
	}
	<-b.gotHeader
	n, err := b.ReadCloser.Read(p)
	b.once.Do(func() { b.readLate <- err })
	return n, err
}

// A forwarded call whose answer's header reaches the client before the
// transport has seen its request body's end gets its whole answer: the
// forwarding server neither closes the request body under the transport
// nor, in turn, the transport its connection under the answer (the lost
// two-hop exec of README's "Routing between servers").
func TestFakeForwardAnswerBeforeRequestBodyEOF(t *testing.T) {
	const answer = `{"exit_code":0,"stdout":"routed\n"}`
	readLate := make(chan error, 1)
	gotHeader := make(chan struct{})
	// The holder's server: reads the request, sends the header, and the
	// body only once the forwarding server read its request body's end.
	holder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			t.Errorf("holder: read the request: %v", err)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		<-readLate
		_, _ = io.WriteString(w, answer)
	}))
	defer holder.Close()
	u, err := url.Parse(holder.URL)
	if err != nil {
		t.Fatal(err)
	}
	rt := routing.NewTransport()
	defer rt.CloseIdleConnections()
	forwarded := make(chan error, 1)
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = &lateEOFBody{ReadCloser: r.Body, gotHeader: gotHeader, readLate: readLate, left: r.ContentLength}
		forwarded <- routing.Forward(w, r, routing.Target{NodeID: "node-h", NodeName: "h", URL: u}, "-", rt, slog.New(slog.DiscardHandler))
	}))
	defer fwd.Close()

	resp, err := http.Post(fwd.URL+"/v1/sessions/s-1/exec", "application/json", strings.NewReader(`{"argv":["echo","routed"]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	close(gotHeader)
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != answer || resp.StatusCode != http.StatusOK {
		t.Fatalf("answer: %d %q, %v; want 200 %q", resp.StatusCode, body, err, answer)
	}
	if err := <-forwarded; err != nil {
		t.Fatalf("Forward: %v", err)
	}
}
