package agentproto_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
)

// TestListenRefusesWhatAGuestShouldNotSend has a hostile guest send, on
// the listen stream, around real checkpoint requests: a forged
// "restored" (a host → guest message) as a response frame and as a
// request, payloads that are not JSON, a JSON array, data frames, and at
// last a frame longer than MaxFrame. Each bad frame is refused with a
// reply of ID 0 and never reaches the handler; the requests between are
// served in order; the too-long frame ends the listen (the framing is
// lost) with ErrFrameTooLarge, without the host reading its length's worth.
func TestListenRefusesWhatAGuestShouldNotSend(t *testing.T) {
	hostConn, guestConn := socketPair(t)
	c, err := agentproto.NewClient(hostConn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gs, err := yamux.Server(guestConn, agentproto.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()

	var handled []agentproto.GuestRequest
	listenErr := make(chan error, 1)
	go func() {
		listenErr <- c.Listen(context.Background(), func(r agentproto.GuestRequest) (*agentproto.GuestReply, error) {
			handled = append(handled, r)
			if r.Kind != agentproto.GuestCheckpoint {
				return nil, fmt.Errorf("unknown request %q", r.Kind)
			}
			return &agentproto.GuestReply{Checkpoint: r.Name}, nil
		})
	}()
	st, err := gs.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var req agentproto.Request
	if err := agentproto.ReadJSON(st, agentproto.FrameRequest, &req); err != nil || req.Op != agentproto.OpListen {
		t.Fatalf("listen request: %+v, %v", req, err)
	}
	if err := agentproto.WriteJSON(st, agentproto.FrameResponse, agentproto.Response{}); err != nil {
		t.Fatal(err)
	}
	reply := func() agentproto.GuestReply {
		t.Helper()
		_ = st.SetReadDeadline(time.Now().Add(time.Minute))
		var r agentproto.GuestReply
		if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &r); err != nil {
			t.Fatalf("read a reply: %v", err)
		}
		return r
	}
	send := func(typ byte, payload string) {
		t.Helper()
		if err := agentproto.WriteFrame(st, typ, []byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	forged, _ := json.Marshal(agentproto.Request{Op: agentproto.OpRestored,
		Restored: &agentproto.Restored{Kind: agentproto.RestoredRollback, Checkpoint: "x", Request: 1}})
	bad := []struct {
		name    string
		typ     byte
		payload string
		want    string
	}{
		{"a forged restored, as a response", agentproto.FrameResponse, string(forged), "frame of type 2"},
		{"not JSON", agentproto.FrameRequest, "\x00\xff{garbage", "not a JSON object"},
		{"a JSON array", agentproto.FrameRequest, `[1,2,3]`, "not a JSON object"},
		{"a truncated request with an id", agentproto.FrameRequest, `{"id":7,"kind":"checkpoint","name":"../x`, "not a JSON object"},
		{"stdin data", agentproto.FrameStdin, strings.Repeat("A", 64<<10), "frame of type"},
		{"empty", agentproto.FrameRequest, "", "not a JSON object"},
	}
	for i, b := range bad {
		send(agentproto.FrameRequest, `{"id":`+string(rune('1'+i))+`,"kind":"checkpoint","name":"c"}`)
		if r := reply(); r.ID != int64(i+1) || r.Checkpoint != "c" || r.Error != "" {
			t.Fatalf("before %s: reply %+v", b.name, r)
		}
		send(b.typ, b.payload)
		if r := reply(); r.ID != 0 || !strings.Contains(r.Error, b.want) || !strings.Contains(r.Error, "refused") {
			t.Fatalf("%s: reply %+v, want refused (id 0) saying %q", b.name, r, b.want)
		}
	}
	// A forged "restored" as a request is a request of an unknown kind:
	// the handler refuses it.
	send(agentproto.FrameRequest, `{"id":40,"kind":"restored","name":"c"}`)
	if r := reply(); r.ID != 40 || !strings.Contains(r.Error, `unknown request "restored"`) {
		t.Fatalf("a forged restored request: %+v", r)
	}
	// So is the host's own restored message sent back as a request.
	send(agentproto.FrameRequest, string(forged))
	if r := reply(); r.ID != 0 || !strings.Contains(r.Error, `unknown request ""`) {
		t.Fatalf("the host's restored message as a request: %+v", r)
	}
	if len(handled) != len(bad)+2 {
		t.Fatalf("the handler saw %d requests, want the %d good ones and the two of unknown kinds", len(handled), len(bad)+2)
	}
	// A length past MaxFrame: the host stops at the header.
	hdr := []byte{agentproto.FrameRequest, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], 1<<31)
	if _, err := st.Write(hdr); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-listenErr:
		if !errors.Is(err, agentproto.ErrFrameTooLarge) {
			t.Fatalf("listen after a frame too large: %v, want ErrFrameTooLarge", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("listen goes on after a frame too large")
	}
	// The connection itself still serves: a new listen works.
	go func() {
		_ = c.Listen(context.Background(), func(agentproto.GuestRequest) (*agentproto.GuestReply, error) {
			return &agentproto.GuestReply{Checkpoint: "again"}, nil
		})
	}()
	st2, err := gs.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := agentproto.ReadJSON(st2, agentproto.FrameRequest, &req); err != nil || req.Op != agentproto.OpListen {
		t.Fatalf("second listen request: %+v, %v", req, err)
	}
	agentproto.WriteJSON(st2, agentproto.FrameResponse, agentproto.Response{})
	agentproto.WriteJSON(st2, agentproto.FrameRequest, agentproto.GuestRequest{ID: 50, Kind: agentproto.GuestCheckpoint})
	var r agentproto.GuestReply
	if err := agentproto.ReadJSON(st2, agentproto.FrameResponse, &r); err != nil || r.ID != 50 || r.Checkpoint != "again" {
		t.Fatalf("second listen: %+v, %v", r, err)
	}
}
