package trigger

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
)

// pendingNow returns what the receiver's pending deliveries hold.
func (e *hookEnv) pendingNow() (memory, spool int64, senders int) {
	p := &e.rcv.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.memory, p.spool, len(p.senders)
}

// waitPending waits until the receiver's pending deliveries hold at
// least memory and spool bytes from n senders, polling the receiver's own
// counts (the condition the test depends on).
func (e *hookEnv) waitPending(memory, spool int64, n int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, s, got := e.pendingNow()
		if m >= memory && s >= spool && got == n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("pending after 30 s: %d bytes of memory, %d of spool, %d senders; want %d, %d, %d", m, s, got, memory, spool, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantNothingPending checks that every claim was given back.
func (e *hookEnv) wantNothingPending() {
	e.t.Helper()
	if m, s, n := e.pendingNow(); m != 0 || s != 0 || n != 0 {
		e.t.Errorf("after the deliveries: %d bytes of memory, %d of spool, %d senders still pending", m, s, n)
	}
}

// heldDelivery is a GitHub delivery whose sender, at local address from,
// has sent the header and the first sent bytes of a body of length bytes,
// and waits: a real slow client, pending in the receiver.
type heldDelivery struct {
	conn net.Conn
	rest []byte
}

func (e *hookEnv) hold(from string, body []byte, sent int, chunked bool) *heldDelivery {
	e.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	var h strings.Builder
	fmt.Fprintf(&h, "POST /v1/hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
	fmt.Fprintf(&h, "%s: push\r\n%s: held-%s-%d\r\n", HeaderGitHubEvent, HeaderGitHubDelivery, from, len(body))
	fmt.Fprintf(&h, "%s: %s\r\n", HeaderSignature, githubSign(testGitHubSecret, string(body)))
	if chunked {
		// One chunk announced whole, sent in part.
		fmt.Fprintf(&h, "Transfer-Encoding: chunked\r\n\r\n%x\r\n", len(body))
	} else {
		fmt.Fprintf(&h, "Content-Length: %d\r\n\r\n", len(body))
	}
	if _, err := io.WriteString(conn, h.String()); err != nil {
		e.t.Fatal(err)
	}
	if _, err := conn.Write(body[:sent]); err != nil {
		e.t.Fatal(err)
	}
	rest := body[sent:]
	if chunked {
		rest = append(append([]byte{}, rest...), "\r\n0\r\n\r\n"...)
	}
	return &heldDelivery{conn: conn, rest: rest}
}

// finish sends the rest of the body and returns the answer's status. The
// answer may come before the body is all sent: the write goes on beside
// the read, and its error (the server closed the connection) is no fault.
func (h *heldDelivery) finish(t *testing.T) int {
	t.Helper()
	go h.conn.Write(h.rest)
	return readStatus(t, h.conn)
}

func readStatus(t *testing.T, conn net.Conn) int {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// pushBody is a push payload padded to n bytes.
func pushBody(t testing.TB, n int) []byte {
	t.Helper()
	head := fmt.Sprintf(`{"ref":"refs/heads/main","after":%q,"repository":{"full_name":%q},"sender":{"login":"mira-k"},"pad":"`, fixtureHead, fixtureRepo)
	if n < len(head)+2 {
		t.Fatalf("pushBody: %d bytes is too short", n)
	}
	return append(append([]byte(head), bytes.Repeat([]byte("x"), n-len(head)-2)...), `"}`...)
}

// GitHub's largest payload (25 MiB) is taken: the body waits in the spool
// directory, unlinked, until its signature checks out, reaches the sink
// whole, and leaves nothing behind.
func TestReceiverLargeBodySpooled(t *testing.T) {
	e := newHookEnv(t)
	e.rcv.MaxBody = 0 // GitHub's 25 MiB
	spool := t.TempDir()
	e.rcv.SpoolDir = spool
	body := pushBody(t, DefaultMaxBody)

	for i, chunked := range []bool{false, true} {
		id := fmt.Sprintf("big-%d", i+1) // the store would take a second big-1 as a duplicate
		want, err := GitHubEvent("push", id, body)
		if err != nil {
			t.Fatal(err)
		}
		want.Received = testNow
		e.sink.reset()
		d := githubDelivery("push", id, body)
		if chunked {
			d.body = io.MultiReader(bytes.NewReader(body)) // hides the length
		}
		e.wantAccepted(e.send(d), id, want)
		if got := e.sink.got(); len(got) == 1 && got[0].Fields["branch"] != "main" {
			t.Errorf("chunked=%v: event fields %v", chunked, got[0].Fields)
		}
		e.wantNothingPending()
	}
	if ents, _ := os.ReadDir(spool); len(ents) != 0 {
		t.Errorf("spool dir holds %d entries after the deliveries", len(ents))
	}
}

// One sender (one remote address) has at most MaxSenderPending deliveries
// pending: the next is 429 with Retry-After, while another address is
// served; once its deliveries end the sender is served again.
func TestReceiverSenderLimit(t *testing.T) {
	e := newHookEnv(t)
	e.rcv.MaxSenderPending = 2
	body := pushBody(t, 4<<10)
	held := []*heldDelivery{e.hold("127.0.0.1", body, 100, false), e.hold("127.0.0.1", body, 100, true)}
	waitSenderPending(e, "127.0.0.1", 2)

	third := e.hold("127.0.0.1", body, 0, false)
	resp, err := http.ReadResponse(bufio.NewReader(third.conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	var eb api.ErrorResponse
	json.NewDecoder(resp.Body).Decode(&eb)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || eb.Error.Code != codeTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third delivery from one sender: %d %+v Retry-After %q; want 429 too_many_requests with Retry-After",
			resp.StatusCode, eb, resp.Header.Get("Retry-After"))
	}

	other := e.hold("127.0.0.2", body, 0, false)
	if got := other.finish(t); got != http.StatusAccepted {
		t.Errorf("a delivery from another sender answered %d, want 202", got)
	}
	for i, h := range held {
		if got := h.finish(t); got != http.StatusOK && got != http.StatusAccepted {
			t.Errorf("held delivery %d answered %d, want 202 or 200 (duplicate)", i, got)
		}
	}
	if got := e.hold("127.0.0.1", body, 0, false).finish(t); got != http.StatusOK {
		t.Errorf("the sender once its deliveries ended: %d, want 200 (a duplicate)", got)
	}
	e.wantNothingPending()
}

func waitSenderPending(e *hookEnv, sender string, n int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := &e.rcv.pending
		p.mu.Lock()
		got := 0
		if s := p.senders[sender]; s != nil {
			got = s.n
		}
		p.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sender %s has %d deliveries pending after 30 s, want %d", sender, got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// All senders together hold at most MaxPendingMemory and MaxPendingSpool:
// past them a delivery is 503 with Retry-After, before its body is read.
func TestReceiverPendingLimits(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		e := newHookEnv(t)
		e.rcv.MaxBody = 1 << 20
		e.rcv.MaxPendingMemory = 2 * bodyHead
		e.rcv.SpoolDir = t.TempDir()
		body := pushBody(t, 200<<10)
		a := e.hold("127.0.0.1", body, 100, false)
		b := e.hold("127.0.0.2", body, 100, false)
		e.waitPending(2*bodyHead, 0, 2)
		if m, _, _ := e.pendingNow(); m != 2*bodyHead {
			t.Errorf("two pending bodies hold %d bytes of memory, want %d", m, 2*bodyHead)
		}
		if got := e.hold("127.0.0.3", body, 0, false).finish(t); got != http.StatusServiceUnavailable {
			t.Errorf("a third body past the memory limit: %d, want 503", got)
		}
		for _, h := range []*heldDelivery{a, b} {
			if got := h.finish(t); got != http.StatusAccepted && got != http.StatusOK {
				t.Errorf("held delivery answered %d, want 202 or 200", got)
			}
		}
		e.wantNothingPending()
	})
	t.Run("spool", func(t *testing.T) {
		e := newHookEnv(t)
		e.rcv.MaxBody = 4 << 20
		e.rcv.MaxPendingSpool = 3 << 20
		e.rcv.SpoolDir = t.TempDir()
		body := pushBody(t, 2<<20)
		a := e.hold("127.0.0.1", body, bodyHead+100, false) // past its head it claims its 2 MiB at once
		e.waitPending(bodyHead, 2<<20, 1)
		if got := e.hold("127.0.0.2", body, 0, false).finish(t); got != http.StatusServiceUnavailable {
			t.Errorf("a body past the spool limit: %d, want 503", got)
		}
		// A body of unknown length claims as it grows, and is refused
		// when it outgrows what is left.
		if got := e.hold("127.0.0.3", body, 0, true).finish(t); got != http.StatusServiceUnavailable {
			t.Errorf("a chunked body past the spool limit: %d, want 503", got)
		}
		if got := a.finish(t); got != http.StatusAccepted {
			t.Errorf("held delivery answered %d, want 202", got)
		}
		e.wantNothingPending()
	})
}
