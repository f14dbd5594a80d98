package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
)

// TestToolToken: a guest tool (here as root, the test's uid) asking the
// agent for a token gets what the host answers on its listen stream, for
// the audience and ttl it asked; a host's refusal reaches the tool as its
// error; a request of no known kind is refused by the agent.
func TestToolToken(t *testing.T) {
	c := connect(t)
	asked := make(chan agentproto.GuestRequest, 4)
	go c.Listen(context.Background(), func(req agentproto.GuestRequest) (*agentproto.GuestReply, error) {
		asked <- req
		if req.Audience == "refused" {
			return nil, errors.New("session s-1 is parking")
		}
		return &agentproto.GuestReply{Token: "tok-for-" + req.Audience}, nil
	})
	ask := func(req agent.ToolRequest) agent.ToolReply {
		t.Helper()
		host, tool := socketPair(t)
		go sharedAgent().ServeTool(ctxT(t), host)
		if err := json.NewEncoder(tool).Encode(req); err != nil {
			t.Fatal(err)
		}
		var r agent.ToolReply
		line, err := bufio.NewReader(tool).ReadBytes('\n')
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := ask(agent.ToolRequest{Kind: agentproto.GuestToken, Audience: "https://api.example.com", TTL: "5m"})
	if r.Token != "tok-for-https://api.example.com" || r.Error != "" {
		t.Errorf("token reply %+v", r)
	}
	if req := <-asked; req.Kind != agentproto.GuestToken || req.TTL != "5m" {
		t.Errorf("the host was asked %+v", req)
	}
	if r := ask(agent.ToolRequest{Kind: agentproto.GuestToken, Audience: "refused"}); r.Token != "" || r.Error != "token: session s-1 is parking" {
		t.Errorf("refused reply %+v", r)
	}
	if r := ask(agent.ToolRequest{Kind: "steal"}); r.Token != "" || r.Error == "" {
		t.Errorf("unknown kind: %+v", r)
	}
}
