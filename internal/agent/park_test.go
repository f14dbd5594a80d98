package agent_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
)

// lateAck is the guest's end of a connection whose write of a tool's
// request (a body holding marker) reaches the host but does not return
// until the connection is closed, and then fails: as yamux reports the
// session's end, which the host's park or rollback brings, for a frame
// the host already read.
type lateAck struct {
	net.Conn
	marker []byte
	once   sync.Once
	closed chan struct{}
}

func (c *lateAck) Write(p []byte) (int, error) {
	if !bytes.Contains(p, c.marker) {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(p); err != nil {
		return 0, err
	}
	<-c.closed
	return 0, errors.New("the session ended before the write was acknowledged")
}

func (c *lateAck) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// lateAckOf wraps a guest's connection in a lateAck for requests of kind.
func lateAckOf(kind string) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn {
		return &lateAck{Conn: c, marker: []byte(`"kind":"` + kind + `"`), closed: make(chan struct{})}
	}
}

// TestParkToolWriteRace: a park request the host read, whose write then
// failed as the park ended the connection, returns the event that wakes
// the guest (not "the host went away"); so does a rollback the host read
// say, once the same guest's host is back, that this guest runs on.
func TestParkToolWriteRace(t *testing.T) {
	a := agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	events := t.TempDir()
	a.SetEventsDir(events)
	asked := make(chan agentproto.GuestRequest, 4)

	c := connectVia(t, a, lateAckOf(agentproto.GuestPark))
	go c.Listen(ctxT(t), func(req agentproto.GuestRequest) (*agentproto.GuestReply, error) {
		asked <- req
		c.Close() // the host parks the guest: the connection ends
		return nil, nil
	})
	until(t, "the host listens", a.Listening)
	parked := askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestPark, Until: []string{"github:push"}})
	if req := next(t, asked); req.Kind != agentproto.GuestPark || len(req.Until) != 1 || req.Until[0] != "github:push" {
		t.Fatalf("the host was asked %+v", req)
	}
	until(t, "the parked connection ended", func() bool { return !a.Listening() })

	// The woken guest: a new connection, then the waking event.
	hostUp(t, a, asked, nil)
	event := `{"trigger":"github:push","n":1}`
	if err := os.WriteFile(filepath.Join(events, "0001.json"), []byte(event), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := reply(t, parked); r.Error != "" || string(r.Event) != event {
		t.Fatalf("park whose write failed after the host read it: %+v, want the event %s", r, event)
	}

	// A rollback: the host ends the connection before it stops the guest;
	// one that came back to this guest did not roll it back.
	a2 := agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	c2 := connectVia(t, a2, lateAckOf(agentproto.GuestRollback))
	fakeHost(c2, asked)
	until(t, "the host listens", a2.Listening)
	pending := askTool(t, a2, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "hangup"})
	next(t, asked)
	until(t, "the host hung up", func() bool { return !a2.Listening() })
	hostUp(t, a2, asked, nil)
	if r := reply(t, pending); !strings.Contains(r.Error, "this guest runs on") {
		t.Fatalf("rollback whose write failed after the host read it, host back: %+v", r)
	}
}
