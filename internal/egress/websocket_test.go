package egress

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestWebSocketThroughTheTunnel: an Upgrade inside an intercepted tunnel
// reaches the upstream (with the credential) and carries frames both ways;
// Cut ends it like any other connection.
func TestWebSocketThroughTheTunnel(t *testing.T) {
	e := newEnv(t, nil)
	var seen headerSeen
	e.tlsUpstream("ws.example.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.mu.Lock()
		seen.vals = append(seen.vals, r.Header.Get("Authorization"))
		seen.mu.Unlock()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}), true)
	cred := Credential{Name: "tok", Hosts: []string{"ws.example.test"}, Header: "Authorization", Value: secret}
	s := &Session{ID: "ws", Owner: "alice", Rules: mustRules(t, "ws.example.test"), Credentials: staticCreds(cred)}
	client := e.client(e.serve(s))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://ws.example.test/socket", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "echo: hi" {
		t.Fatalf("read %q %v", msg, err)
	}
	if seen.last() != secret {
		t.Fatalf("upstream saw Authorization %q on the upgrade", seen.last())
	}
	if n := e.proxy.Cut("ws"); n != 1 {
		t.Fatalf("Cut = %d", n)
	}
	if _, _, err := c.Read(ctx); err == nil {
		t.Fatal("the socket survived the cut")
	}
	e.assertNoSecret()
}
