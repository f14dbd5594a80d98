package nodelink

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A hostile node (one that holds a credential: joined, then turned)
// attacks the server over its control connection: random bytes after the
// WebSocket upgrade, a text message, streams that never send a header or
// stop half way, a huge header, thousands of streams at once, answers to
// requests never made, yamux frames for streams never opened. The server
// stays up, keeps serving another node and joins, serves at most
// maxStreamsServed of the node's streams at once, and gives back what the
// node held once it is gone.
func TestHostileNode(t *testing.T) {
	old := streamHeaderTimeout
	streamHeaderTimeout = 300 * time.Millisecond
	t.Cleanup(func() { streamHeaderTimeout = old })

	// A node-facing handler that holds each call until released, and
	// counts how many it holds at once.
	var (
		inflight, most atomic.Int64
		hold           = make(chan struct{})
		holdOnce       sync.Once
	)
	release := func() { holdOnce.Do(func() { close(hold) }) }
	t.Cleanup(release)
	f := &fixture{t: t, st: openStore(t), logs: &syncBuffer{}}
	f.hub = NewHub(HubConfig{Store: f.st, JoinToken: testJoinToken, Log: slog.New(slog.NewTextHandler(f.logs, nil)),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hold" {
				n := inflight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				<-hold
				inflight.Add(-1)
			}
			io.WriteString(w, "served")
		})})
	f.srv = httptest.NewServer(f.hub)
	t.Cleanup(func() { f.hub.Close(); f.srv.Close() })

	good := joinHTTP(t, f, "good", testJoinToken)
	goodSess := dialLink(t, f, good.Credential, answer("good"))
	eventually(t, "the good node connects", func() bool { return f.hub.Connected(good.NodeID) })
	bad := joinHTTP(t, f, "bad", testJoinToken)
	ctx := context.Background()
	base := runtime.NumGoroutine()

	stillServes := func(after string) {
		t.Helper()
		if got := get(t, f.hub.Client(good.NodeID), "http://node/"); got != "good" {
			t.Fatalf("after %s: the server's call to the good node: %q", after, got)
		}
		st, err := goodSess.Open()
		if err != nil {
			t.Fatalf("after %s: the good node opens a stream: %v", after, err)
		}
		defer st.Close()
		if resp := roundTrip(t, st, "GET /x HTTP/1.1\r\nHost: s\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("after %s: the good node's call: %s", after, resp.Status)
		}
		joinHTTP(t, f, "another", testJoinToken)
	}
	wsURL := "ws" + strings.TrimPrefix(f.srv.URL, "http") + ConnectPath
	dialWS := func() *websocket.Conn {
		t.Helper()
		c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + string(bad.Credential)}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		eventually(t, "the bad node connects", func() bool { return f.hub.Connected(bad.NodeID) })
		return c
	}
	dropped := func(c *websocket.Conn, what string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for {
			if _, _, err := c.Read(rctx); err != nil {
				if rctx.Err() != nil {
					t.Fatalf("%s: the server keeps the WebSocket open", what)
				}
				break
			}
		}
		eventually(t, what+": the connection dropped", func() bool { return !f.hub.Connected(bad.NodeID) })
	}

	t.Run("random bytes after the upgrade", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		garbage := make([]byte, 64<<10)
		for i := range garbage {
			garbage[i] = byte(r.Uint32())
		}
		garbage[0] = 0x7f // not yamux's version 0
		c := dialWS()
		if err := c.Write(ctx, websocket.MessageBinary, garbage); err != nil {
			t.Fatal(err)
		}
		dropped(c, "random bytes")
		stillServes("random bytes")
		c = dialWS()
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"op":"hello"}`)); err != nil {
			t.Fatal(err)
		}
		dropped(c, "a text message")
		stillServes("a text message")
	})

	t.Run("a connect that is no WebSocket, or drops at once", func(t *testing.T) {
		req, err := http.NewRequest("GET", f.srv.URL+ConnectPath, strings.NewReader("garbage"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+string(bad.Credential))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("a connect without an upgrade: %s, want a 4xx", resp.Status)
		}
		if f.hub.Connected(bad.NodeID) {
			t.Fatal("a connect without an upgrade connected the node")
		}
		c := dialWS()
		c.CloseNow()
		eventually(t, "a dropped connection is forgotten", func() bool { return !f.hub.Connected(bad.NodeID) })
		stillServes("a connect that is no WebSocket, or drops at once")
	})

	t.Run("yamux frames for streams never opened", func(t *testing.T) {
		c := dialWS()
		frame := func(typ byte, flags uint16, id, length uint32, body string) []byte {
			h := make([]byte, 12)
			h[0], h[1] = 0, typ
			binary.BigEndian.PutUint16(h[2:], flags)
			binary.BigEndian.PutUint32(h[4:], id)
			binary.BigEndian.PutUint32(h[8:], length)
			return append(h, body...)
		}
		// Data and a window update on server-side ids (even) the server
		// never opened: an answer to a request never made.
		for _, b := range [][]byte{
			frame(0, 0, 2, 5, "hello"),
			frame(1, 0, 4, 1<<20, ""),
			frame(0, 0, 6, 1<<30, ""), // claims a GiB it never sends
		} {
			if err := c.Write(ctx, websocket.MessageBinary, b); err != nil {
				break // the server may drop it at any one of them
			}
		}
		stillServes("frames for streams never opened")
		c.CloseNow()
		eventually(t, "the bad node's connection ends", func() bool { return !f.hub.Connected(bad.NodeID) })
	})

	t.Run("streams that never send a header, or stop half way", func(t *testing.T) {
		sess := dialLink(t, f, bad.Credential, answer("bad"))
		for _, sent := range []string{"", "GET /hold HTTP/1.1\r\nHost: s\r\n"} {
			st, err := sess.Open()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(st, sent); err != nil {
				t.Fatal(err)
			}
			st.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = io.ReadAll(st)
			if err != nil && strings.Contains(err.Error(), "timeout") {
				t.Fatalf("a stream that sent %q: the server keeps it open", sent)
			}
		}
		stillServes("slow streams")
		sess.Close()
	})

	t.Run("a huge header", func(t *testing.T) {
		sess := dialLink(t, f, bad.Credential, answer("bad"))
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		resp := roundTrip(t, st, "GET / HTTP/1.1\r\nHost: s\r\nX-Big: "+strings.Repeat("a", 2*maxHeaderBytes)+"\r\n\r\n")
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("a huge header: %s, want 431", resp.Status)
		}
		stillServes("a huge header")
		sess.Close()
	})

	t.Run("an answer with a huge header, or a huge body", func(t *testing.T) {
		sess := dialLink(t, f, bad.Credential, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == InfoPath {
				w.Header().Set("X-Big", strings.Repeat("a", 2*maxHeaderBytes))
			}
			w.Write([]byte(`{"id":"` + strings.Repeat("b", 2*MaxJoinBytes) + `"}`))
		}))
		eventually(t, "the bad node connects", func() bool { return f.hub.Connected(bad.NodeID) })
		if _, err := f.hub.Info(ctx, bad.NodeID); err == nil || !strings.Contains(err.Error(), "header") {
			t.Fatalf("info answered with a huge header: %v, want refused", err)
		}
		resp, err := f.hub.Client(bad.NodeID).Get("http://node/other")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // the caller bounds what it reads; closing frees the stream
		stillServes("a huge answer")
		sess.Close()
	})

	t.Run("an answer sent as a request", func(t *testing.T) {
		sess := dialLink(t, f, bad.Credential, answer("bad"))
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		resp := roundTrip(t, st, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("an answer sent as a request: %s, want 400", resp.Status)
		}
		stillServes("an answer sent as a request")
		sess.Close()
	})

	t.Run("streams by the thousand", func(t *testing.T) {
		// yamux's own client opens no more than its backlog (256) of
		// streams the server has not accepted yet: a raw SYN flood is
		// what passes that.
		c := dialWS()
		for id := uint32(1); id < 2*3000; id += 2 {
			h := make([]byte, 12)
			h[1] = 1                             // window update
			binary.BigEndian.PutUint16(h[2:], 1) // SYN
			binary.BigEndian.PutUint32(h[4:], id)
			if err := c.Write(ctx, websocket.MessageBinary, h); err != nil {
				break
			}
		}
		stillServes("a SYN flood")
		c.CloseNow()
		eventually(t, "the bad node's connection ends", func() bool { return !f.hub.Connected(bad.NodeID) })
	})

	t.Run("more calls at once than are served", func(t *testing.T) {
		sess := dialLink(t, f, bad.Credential, answer("bad"))
		for range maxStreamsServed + 150 {
			st, err := sess.Open()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(st, "GET /hold HTTP/1.1\r\nHost: s\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "the server holds the most calls it serves at once", func() bool { return inflight.Load() == maxStreamsServed })
		stillServes("thousands of streams")
		if n := most.Load(); n > maxStreamsServed {
			t.Fatalf("%d of one node's streams served at once, want at most %d", n, maxStreamsServed)
		}
		release()
		sess.Close()
		eventually(t, "the bad node's connection ends", func() bool { return !f.hub.Connected(bad.NodeID) })
	})

	// What the bad node held is given back.
	eventually(t, "the goroutines of the bad node's streams end", func() bool { return runtime.NumGoroutine() <= base+8 })
	stillServes("everything")
}

// roundTrip writes raw to st and reads the answer.
func roundTrip(t *testing.T, st net.Conn, raw string) *http.Response {
	t.Helper()
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(st, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(st), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
