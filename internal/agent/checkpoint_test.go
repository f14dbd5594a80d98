package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
)

// connectTo returns a host client connected to agent a over a socket
// pair, as connect does for the shared agent.
func connectTo(t *testing.T, a *agent.Agent) *agentproto.Client {
	t.Helper()
	return connectVia(t, a, nil)
}

// connectVia is connectTo with the guest's end of the connection wrapped
// by wrap (nil: as it is).
func connectVia(t *testing.T, a *agent.Agent, wrap func(net.Conn) net.Conn) *agentproto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := agentproto.Connect(ctx, func(context.Context) (net.Conn, error) {
		host, guest := socketPair(t)
		if wrap != nil {
			guest = wrap(guest)
		}
		sctx, scancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if agentproto.GuestSync(guest, a.SayHello) == nil {
				a.ServeConn(sctx, guest)
			}
		}()
		t.Cleanup(func() { scancel(); guest.Close(); <-done })
		return host, nil
	})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// askTool sends req to a's tools socket as a guest tool does and returns
// the reply's channel.
func askTool(t *testing.T, a *agent.Agent, req agent.ToolRequest) <-chan agent.ToolReply {
	t.Helper()
	host, tool := socketPair(t)
	go a.ServeTool(context.Background(), host)
	if err := json.NewEncoder(tool).Encode(req); err != nil {
		t.Fatal(err)
	}
	out := make(chan agent.ToolReply, 1)
	go func() {
		var r agent.ToolReply
		line, err := bufio.NewReader(tool).ReadBytes('\n')
		if err != nil {
			r.Error = "no reply: " + err.Error()
		} else if err := json.Unmarshal(line, &r); err != nil {
			r.Error = "bad reply: " + err.Error()
		}
		out <- r
	}()
	return out
}

func reply(t *testing.T, ch <-chan agent.ToolReply) agent.ToolReply {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("the tool got no reply")
		return agent.ToolReply{}
	}
}

// fakeHost answers guest requests on c's listen stream: a checkpoint
// named "hold-…" is left unanswered (the guest is being saved, or the host
// goes away), any other is made; a rollback to "hangup" ends the
// connection (as a host does before it stops the guest), any other is
// refused naming its checkpoint. Every request is sent to asked.
func fakeHost(c *agentproto.Client, asked chan<- agentproto.GuestRequest) {
	go c.Listen(context.Background(), func(req agentproto.GuestRequest) (*agentproto.GuestReply, error) {
		asked <- req
		switch {
		case req.Kind == agentproto.GuestCheckpoint && strings.HasPrefix(req.Name, "hold-"):
			return nil, nil
		case req.Kind == agentproto.GuestCheckpoint:
			return &agentproto.GuestReply{Checkpoint: req.Name}, nil
		case req.Kind == agentproto.GuestRollback && req.Name == "hangup":
			c.Close()
			return nil, nil
		case req.Kind == agentproto.GuestRollback:
			return nil, fmt.Errorf("session s-1 has no checkpoint %q", req.Name)
		}
		return nil, errors.New("unexpected")
	})
}

// until waits for cond, failing the test after 30 s.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hostUp connects a fake host to a, tells it restored first if not nil,
// and returns once the agent has its listen stream.
func hostUp(t *testing.T, a *agent.Agent, asked chan<- agentproto.GuestRequest, restored *agentproto.Restored) *agentproto.Client {
	t.Helper()
	c := connectTo(t, a)
	if restored != nil {
		if err := c.Restored(ctxT(t), *restored); err != nil {
			t.Fatalf("restored: %v", err)
		}
	}
	fakeHost(c, asked)
	until(t, "the host listens", a.Listening)
	return c
}

// hostDown ends c and returns once the agent saw its listen stream end.
func hostDown(t *testing.T, a *agent.Agent, c *agentproto.Client) {
	t.Helper()
	c.Close()
	until(t, "the host's listen stream ended", func() bool { return !a.Listening() })
}

func next(t *testing.T, asked <-chan agentproto.GuestRequest) agentproto.GuestRequest {
	t.Helper()
	select {
	case r := <-asked:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("the host was asked nothing")
		return agentproto.GuestRequest{}
	}
}

// TestCheckpointToolTimelines: a checkpoint call answered by the host
// returns the checkpoint's name; one still waiting when its guest is
// restored from that checkpoint returns again once the host says so
// (rolled back, or forked from a parent), and one whose host went away
// without a word fails. After "rolled back to NAME" the agent refuses a
// rollback to NAME without asking the host, unless --again, until a
// checkpoint is made.
func TestCheckpointToolTimelines(t *testing.T) {
	a := agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	asked := make(chan agentproto.GuestRequest, 16)
	c := hostUp(t, a, asked, nil)

	r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestCheckpoint, Name: "first"}))
	if r.Checkpoint != "first" || r.Restored != "" || r.Error != "" {
		t.Fatalf("checkpoint answered: %+v", r)
	}
	if req := next(t, asked); req.Kind != agentproto.GuestCheckpoint || req.Name != "first" || req.ID == 0 {
		t.Fatalf("the host was asked %+v", req)
	}

	// Restored by a rollback while the call waits: a new connection, and
	// the host's word before its listen stream.
	held := askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestCheckpoint, Name: "hold-1"})
	req := next(t, asked)
	hostDown(t, a, c)
	c = hostUp(t, a, asked, &agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: "hold-1", Request: req.ID})
	if r := reply(t, held); r.Checkpoint != "hold-1" || r.Restored != agentproto.RestoredRollback || r.Error != "" {
		t.Fatalf("checkpoint call in the rolled-back guest: %+v", r)
	}

	// The guard: refused without the host, but for --again or another
	// checkpoint.
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "hold-1"})); !r.Already || r.Checkpoint != "hold-1" || r.Error != "" {
		t.Fatalf("rollback to the checkpoint rolled back to: %+v, want already", r)
	}
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "other"})); r.Already || !strings.Contains(r.Error, `no checkpoint "other"`) {
		t.Fatalf("rollback to another: %+v, want the host's refusal", r)
	}
	if req := next(t, asked); req.Kind != agentproto.GuestRollback || req.Name != "other" {
		t.Fatalf("the host was asked %+v, want the rollback to other (and none to hold-1)", req)
	}
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "hold-1", Again: true})); r.Already || r.Error == "" {
		t.Fatalf("rollback --again: %+v, want the host asked", r)
	}
	next(t, asked)
	reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestCheckpoint, Name: "second"}))
	next(t, asked)
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "hold-1"})); r.Already {
		t.Fatalf("rollback after a new checkpoint: %+v, want the host asked", r)
	}
	next(t, asked)

	// Restored as a fork: the parent named, no guard.
	held = askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestCheckpoint, Name: "hold-2"})
	req = next(t, asked)
	hostDown(t, a, c)
	c = hostUp(t, a, asked, &agentproto.Restored{Kind: agentproto.RestoredFork, Checkpoint: "hold-2", Request: req.ID, Parent: "s-1"})
	if r := reply(t, held); r.Checkpoint != "hold-2" || r.Restored != agentproto.RestoredFork || r.Parent != "s-1" {
		t.Fatalf("checkpoint call in the fork: %+v", r)
	}

	// The host went away and came back without a word: the call fails.
	held = askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestCheckpoint, Name: "hold-3"})
	next(t, asked)
	hostDown(t, a, c)
	c = hostUp(t, a, asked, nil)
	if r := reply(t, held); r.Checkpoint != "" || !strings.Contains(r.Error, "may or may not have been made") {
		t.Fatalf("checkpoint call whose host went away: %+v", r)
	}
	// A word for a request no tool waits for is refused.
	err := c.Restored(ctxT(t), agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: "x", Request: 999})
	wantCode(t, err, agentproto.CodeNotFound)
}

// TestRollbackTool: a rollback the host refuses returns its reason; one
// whose host ends the connection (as a rollback does before it stops the
// guest) and comes back to the same guest returns that nothing was
// rolled back.
func TestRollbackTool(t *testing.T) {
	a := agent.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	asked := make(chan agentproto.GuestRequest, 4)
	hostUp(t, a, asked, nil)
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "nosuch"})); r.Error != `rollback: session s-1 has no checkpoint "nosuch"` {
		t.Fatalf("refused rollback: %+v", r)
	}
	next(t, asked)
	if r := reply(t, askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback})); !strings.Contains(r.Error, "no checkpoint named") {
		t.Fatalf("rollback naming nothing: %+v", r)
	}

	pending := askTool(t, a, agent.ToolRequest{Kind: agentproto.GuestRollback, Name: "hangup"})
	next(t, asked)
	until(t, "the host hung up", func() bool { return !a.Listening() })
	hostUp(t, a, asked, nil)
	if r := reply(t, pending); !strings.Contains(r.Error, "nothing was rolled back") {
		t.Fatalf("rollback whose host came back: %+v", r)
	}
}
