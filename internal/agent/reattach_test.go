package agent_test

// Re-attaching to a command after a cut, over raw streams: the host side
// here reads frames by hand, so a test can play a host that received some
// frames, lost others to a cut, and did or did not acknowledge the exit.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
)

// request opens a stream on s, sends req and reads the answer.
func request(t *testing.T, s *yamux.Session, req agentproto.Request) (*yamux.Stream, agentproto.Response) {
	t.Helper()
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_ = st.SetReadDeadline(time.Now().Add(time.Minute)) // a bound: the test fails, not hangs
	if err := agentproto.WriteJSON(st, agentproto.FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	var resp agentproto.Response
	if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &resp); err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	return st, resp
}

// execOutput is what an exec stream carried.
type execOutput struct {
	stdout, stderr []byte
	exit           *agentproto.Exit // nil if the stream ended before it
}

// readExec reads an exec stream's frames: until the exit, or until stdout
// holds upTo bytes (if upTo > 0).
func readExec(t *testing.T, st io.Reader, upTo int) execOutput {
	t.Helper()
	var o execOutput
	for upTo == 0 || len(o.stdout) < upTo {
		typ, p, err := agentproto.ReadFrame(st, nil)
		if err != nil {
			t.Fatalf("read exec stream: %v (after %d bytes of stdout)", err, len(o.stdout))
		}
		switch typ {
		case agentproto.FrameStdout:
			o.stdout = append(o.stdout, p...)
		case agentproto.FrameStderr:
			o.stderr = append(o.stderr, p...)
		case agentproto.FrameExit:
			o.exit = new(agentproto.Exit)
			if err := json.Unmarshal(p, o.exit); err != nil {
				t.Fatal(err)
			}
			return o
		default:
			t.Fatalf("unexpected frame %d on an exec stream", typ)
		}
	}
	return o
}

// ackAndForget acknowledges the exit read on st and waits until the
// agent closes st, which it does once it forgot the command.
func ackAndForget(t *testing.T, st *yamux.Stream) {
	t.Helper()
	if err := agentproto.WriteFrame(st, agentproto.FrameExitAck, nil); err != nil {
		t.Fatal(err)
	}
	if typ, _, err := agentproto.ReadFrame(st, nil); !errors.Is(err, io.EOF) {
		t.Fatalf("after the ack: frame %d, %v; want the stream closed", typ, err)
	}
}

func seqOutput(from, to int) []byte {
	var b bytes.Buffer
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "%d\n", i)
	}
	return b.Bytes()
}

// TestAttachResendsWhatACutKeptFromTheHost plays a park that cut a stream
// after the agent wrote frames into it and before the host read them: the
// host counted fewer bytes than the agent sent. The attach at the host's
// offsets sends exactly the missing bytes (a chunk that straddles the
// offset cut at it), none twice, then the live output and the exit.
func TestAttachResendsWhatACutKeptFromTheHost(t *testing.T) {
	s1 := rawSession(t)
	x := &agentproto.Exec{Argv: []string{"sh", "-c", "seq 1 3000; read x; seq 3001 4000"}}
	st, resp := request(t, s1, agentproto.Request{Op: agentproto.OpExec, Exec: x})
	if resp.Error != "" {
		t.Fatalf("exec: %s", resp.Error)
	}
	first := seqOutput(1, 3000)
	if got := readExec(t, st, len(first)); !bytes.Equal(got.stdout, first) {
		t.Fatalf("before the cut: stdout %q..., want 1..3000", got.stdout[:min(len(got.stdout), 40)])
	}
	// The agent sent all of 1..3000, but the host got only kept bytes of
	// it before the cut.
	const kept = 1001
	s1.Close()

	s2 := rawSession(t)
	st2, resp2 := request(t, s2, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{Stdout: kept}})
	if resp2.Error != "" || resp2.PID != resp.PID || resp2.Lost != nil {
		t.Fatalf("attach: %+v, want pid %d and nothing lost", resp2, resp.PID)
	}
	if err := agentproto.WriteFrame(st2, agentproto.FrameStdin, []byte("go\n")); err != nil {
		t.Fatal(err)
	}
	got := readExec(t, st2, 0)
	want := append(first[kept:], seqOutput(3001, 4000)...)
	if !bytes.Equal(got.stdout, want) {
		t.Fatalf("after the attach: %d bytes of stdout starting %q; want the %d bytes after offset %d, then 3001..4000",
			len(got.stdout), got.stdout[:min(len(got.stdout), 20)], len(first)-kept, kept)
	}
	if len(got.stderr) != 0 || got.exit == nil || got.exit.Code != 0 {
		t.Fatalf("after the attach: stderr %q, exit %+v; want exit 0", got.stderr, got.exit)
	}
	ackAndForget(t, st2)
}

// TestExitKeptUntilAcknowledged plays a park that cut a stream after the
// agent sent the exit and before the host got it: the command is not
// forgotten, a re-attach replays the exit, and the ack forgets it.
func TestExitKeptUntilAcknowledged(t *testing.T) {
	s1 := rawSession(t)
	st, resp := request(t, s1, agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.Exec{Argv: []string{"sh", "-c", "echo hi; exit 3"}}})
	if got := readExec(t, st, 0); string(got.stdout) != "hi\n" || got.exit == nil || got.exit.Code != 3 {
		t.Fatalf("exec: %+v", got)
	}
	s1.Close() // before the ack

	s2 := rawSession(t)
	for range 2 { // the host got neither the output nor the exit, then all but the exit
		st2, resp2 := request(t, s2, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{}})
		if resp2.Error != "" {
			t.Fatalf("attach to an ended command whose exit was not acknowledged: %s", resp2.Error)
		}
		if got := readExec(t, st2, 0); string(got.stdout) != "hi\n" || got.exit == nil || got.exit.Code != 3 {
			t.Fatalf("attach: %q, exit %+v; want hi and exit 3", got.stdout, got.exit)
		}
		st2.Close() // a cut again
	}
	st3, resp3 := request(t, s2, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{Stdout: 3}})
	if got := readExec(t, st3, 0); resp3.Error != "" || len(got.stdout) != 0 || got.exit == nil || got.exit.Code != 3 {
		t.Fatalf("attach with all the output: %+v, %q, exit %+v; want only the exit", resp3, got.stdout, got.exit)
	}
	ackAndForget(t, st3)
	_, resp4 := request(t, s2, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{Stdout: 3}})
	if resp4.Code != agentproto.CodeNotFound {
		t.Fatalf("attach after the ack: %+v, want not_found", resp4)
	}
}

// TestAttachReportsLostOutput: a host whose offset is older than the
// output the agent still keeps is told how much the replay skips, and the
// replay is the rest, exactly.
func TestAttachReportsLostOutput(t *testing.T) {
	done := filepath.Join(t.TempDir(), "done")
	s1 := rawSession(t)
	x := &agentproto.Exec{Argv: []string{"sh", "-c", "seq 1 400000; touch " + done}}
	_, resp := request(t, s1, agentproto.Request{Op: agentproto.OpExec, Exec: x})
	s1.Close() // cut at once: the host got nothing
	// seq is done once done exists: all but a pipe's worth of its output
	// reached the agent, more than MaxOutputLog.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("seq did not finish")
		}
	}
	s2 := rawSession(t)
	st, resp2 := request(t, s2, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{}})
	want := seqOutput(1, 400000)
	if resp2.Lost == nil || resp2.Lost.Stdout <= 0 || resp2.Lost.Stderr != 0 {
		t.Fatalf("attach from offset 0 after %d bytes of output: lost %+v, want stdout's gap reported", len(want), resp2.Lost)
	}
	got := readExec(t, st, 0)
	lost := resp2.Lost.Stdout
	if lost+int64(len(got.stdout)) != int64(len(want)) || !bytes.Equal(got.stdout, want[lost:]) {
		t.Fatalf("lost %d and replayed %d bytes of %d: want the rest after the gap exactly", lost, len(got.stdout), len(want))
	}
	if got.exit == nil || got.exit.Code != 0 {
		t.Fatalf("exit %+v", got.exit)
	}
	ackAndForget(t, st)
}

// TestUnacknowledgedExitsAreBounded: the agent keeps the exits of the last
// KeptExits ended commands the host did not acknowledge, no more.
func TestUnacknowledgedExitsAreBounded(t *testing.T) {
	s := rawSession(t)
	var pids []int
	for range agentproto.KeptExits + 1 {
		st, resp := request(t, s, agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.Exec{Argv: []string{"true"}}})
		if got := readExec(t, st, 0); got.exit == nil {
			t.Fatal("no exit")
		}
		st.Close() // no ack
		pids = append(pids, resp.PID)
	}
	if _, resp := request(t, s, agentproto.Request{Op: agentproto.OpAttach, PID: pids[0], Offsets: &agentproto.Offsets{}}); resp.Code != agentproto.CodeNotFound {
		t.Fatalf("attach to the oldest of %d unacknowledged exits: %+v, want not_found", len(pids), resp)
	}
	st, resp := request(t, s, agentproto.Request{Op: agentproto.OpAttach, PID: pids[1], Offsets: &agentproto.Offsets{}})
	if got := readExec(t, st, 0); resp.Error != "" || got.exit == nil {
		t.Fatalf("attach to the oldest kept exit: %+v, %+v", resp, got)
	}
	ackAndForget(t, st)
}

// TestAttachRefusesAnOffsetPastTheOutput: offsets past what the command
// wrote are not this command's (a PID used again): refused.
func TestAttachRefusesAnOffsetPastTheOutput(t *testing.T) {
	s := rawSession(t)
	st, resp := request(t, s, agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.Exec{Argv: []string{"echo", "hi"}}})
	readExec(t, st, 0)
	st.Close()
	_, resp2 := request(t, s, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{Stdout: 4}})
	if resp2.Code != agentproto.CodeInvalid {
		t.Fatalf("attach past the output: %+v, want invalid", resp2)
	}
	st3, _ := request(t, s, agentproto.Request{Op: agentproto.OpAttach, PID: resp.PID, Offsets: &agentproto.Offsets{Stdout: 3}})
	readExec(t, st3, 0)
	ackAndForget(t, st3)
}

// TestClientAcknowledgesExits: the host client's Process acknowledges the
// exit it read, so the agent forgets the command.
func TestClientAcknowledgesExits(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(ctxT(t), agentproto.Exec{Argv: []string{"echo", "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := wait(t, p); r.stdout != "hi\n" {
		t.Fatalf("stdout %q", r.stdout)
	}
	// The agent handles the ack on its own time: an attach may find the
	// command still (and acknowledge the exit again); without acks it
	// would find it every time.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		p2, err := c.AttachAt(ctxT(t), p.PID, agentproto.Offsets{Stdout: 3})
		var re *agentproto.RemoteError
		if errors.As(err, &re) && re.Code == agentproto.CodeNotFound {
			return
		}
		if err != nil {
			t.Fatalf("attach after the client read the exit: %v", err)
		}
		if r := wait(t, p2); r.stdout != "" || r.exit.Code != 0 {
			t.Fatalf("attach after the client read the exit: %+v", r)
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent still keeps the command after the client read its exit")
		}
	}
}
