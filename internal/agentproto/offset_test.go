package agentproto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
)

// replayed concatenates a replay per stream, checking each stretch's End.
func replayed(t *testing.T, l *OutputLog, rs []Replay, from Offsets) (stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	for _, r := range rs {
		b, at := &out, from.Stdout
		if r.Typ == FrameStderr {
			b, at = &errb, from.Stderr
		}
		b.Write(r.Data)
		if want := at + int64(b.Len()); r.End != want {
			t.Fatalf("replay of %d ends at %d, want %d", r.Typ, r.End, want)
		}
	}
	return out.String(), errb.String()
}

// TestOutputLogReplaysFromOffsets: a replay starts exactly at the host's
// offsets, cutting the chunk that straddles each, keeps the order the
// streams were written in, and reports nothing lost.
func TestOutputLogReplaysFromOffsets(t *testing.T) {
	var l OutputLog
	l.Write(FrameStdout, []byte("abc"))
	l.Write(FrameStdout, []byte("def")) // merged with abc
	l.Write(FrameStderr, []byte("XY"))
	l.Write(FrameStdout, []byte("ghi"))
	for _, tc := range []struct {
		from     Offsets
		out, err string
		order    []byte
	}{
		{Offsets{}, "abcdefghi", "XY", []byte{FrameStdout, FrameStderr, FrameStdout}},
		{Offsets{Stdout: 4, Stderr: 1}, "efghi", "Y", []byte{FrameStdout, FrameStderr, FrameStdout}},
		{Offsets{Stdout: 6, Stderr: 2}, "ghi", "", []byte{FrameStdout}},
		{Offsets{Stdout: 9, Stderr: 0}, "", "XY", []byte{FrameStderr}},
		{Offsets{Stdout: 9, Stderr: 2}, "", "", nil},
	} {
		rs, lost, err := l.Replay(&tc.from)
		if err != nil || lost != (Offsets{}) {
			t.Fatalf("replay from %+v: lost %+v, %v", tc.from, lost, err)
		}
		out, errs := replayed(t, &l, rs, tc.from)
		var order []byte
		for _, r := range rs {
			order = append(order, r.Typ)
		}
		if out != tc.out || errs != tc.err || !bytes.Equal(order, tc.order) {
			t.Errorf("replay from %+v: %q %q in order %v, want %q %q in order %v", tc.from, out, errs, order, tc.out, tc.err, tc.order)
		}
	}
}

// TestOutputLogKeepsTheLastBytes: past MaxOutputLog bytes of a stream the
// oldest go, a replay from before them says how many it skips, and the
// other stream is untouched.
func TestOutputLogKeepsTheLastBytes(t *testing.T) {
	var l OutputLog
	var all bytes.Buffer
	for i := 0; all.Len() < MaxOutputLog+100_000; i++ {
		line := []byte(fmt.Sprintf("%d\n", i))
		all.Write(line)
		l.Write(FrameStdout, line)
		if i == 10 {
			l.Write(FrameStderr, []byte("e"))
		}
	}
	rs, lost, err := l.Replay(&Offsets{Stdout: 1000})
	if err != nil {
		t.Fatal(err)
	}
	want := all.Bytes()[all.Len()-MaxOutputLog:]
	if lost.Stdout != int64(all.Len()-MaxOutputLog)-1000 || lost.Stderr != 0 {
		t.Fatalf("lost %+v, want %d bytes of stdout", lost, all.Len()-MaxOutputLog-1000)
	}
	out, errs := replayed(t, &l, rs, Offsets{Stdout: 1000 + lost.Stdout})
	if out != string(want) || errs != "e" {
		t.Fatalf("replayed %d bytes of stdout and %q: want the last %d and e", len(out), errs, MaxOutputLog)
	}
	if len(l.Stdout.Chunks) > 2*MaxOutputLog/outputChunkMax+1 {
		t.Errorf("%d chunks for %d bytes: small writes are not merged", len(l.Stdout.Chunks), MaxOutputLog)
	}
}

// TestOutputLogWithoutOffsets: an attach without offsets (a host from
// before them) replays what no attached stream took, as agents did.
func TestOutputLogWithoutOffsets(t *testing.T) {
	var l OutputLog
	l.Sent(FrameStdout, l.Write(FrameStdout, []byte("sent ")))
	l.Write(FrameStdout, []byte("kept"))
	l.Write(FrameStderr, []byte("err"))
	rs, _, err := l.Replay(nil)
	if err != nil {
		t.Fatal(err)
	}
	if out, errs := replayed(t, &l, rs, Offsets{Stdout: 5}); out != "kept" || errs != "err" {
		t.Fatalf("replay without offsets: %q %q, want kept and err", out, errs)
	}
}

// TestOutputLogRefusesOffsetsPastTheOutput: a host cannot have received
// more than the command wrote: such offsets are another command's.
func TestOutputLogRefusesOffsetsPastTheOutput(t *testing.T) {
	var l OutputLog
	l.Write(FrameStdout, []byte("abc"))
	for _, from := range []Offsets{{Stdout: 4}, {Stderr: 1}, {Stdout: -1}} {
		if _, _, err := l.Replay(&from); err == nil {
			t.Errorf("replay from %+v of 3 bytes: no error", from)
		}
	}
}

// TestOutputLogSurvivesJSON: a guest that saves its log (the fake
// driver's) replays the same after loading it.
func TestOutputLogSurvivesJSON(t *testing.T) {
	var l OutputLog
	l.Write(FrameStdout, []byte("abc"))
	l.Write(FrameStderr, []byte("X"))
	l.Write(FrameStdout, []byte("def"))
	b, err := json.Marshal(&l)
	if err != nil {
		t.Fatal(err)
	}
	var l2 OutputLog
	if err := json.Unmarshal(b, &l2); err != nil {
		t.Fatal(err)
	}
	l2.Write(FrameStdout, []byte("g"))
	rs, _, err := l2.Replay(&Offsets{Stdout: 2})
	if err != nil {
		t.Fatal(err)
	}
	if out, errs := replayed(t, &l2, rs, Offsets{Stdout: 2}); out != "cdefg" || errs != "X" {
		t.Fatalf("after a JSON round trip: %q %q", out, errs)
	}
}

// TestRequestOffsetsAreOptional: the attach's offsets are additive JSON:
// absent when unset (an old agent sees the request it knew), and an
// explicit zero is kept (replay everything, not "as before").
func TestRequestOffsetsAreOptional(t *testing.T) {
	b, _ := json.Marshal(Request{Op: OpAttach, PID: 7})
	if bytes.Contains(b, []byte("offsets")) {
		t.Fatalf("attach without offsets encodes as %s", b)
	}
	b, _ = json.Marshal(Request{Op: OpAttach, PID: 7, Offsets: &Offsets{}})
	var r Request
	if err := json.Unmarshal(b, &r); err != nil || r.Offsets == nil {
		t.Fatalf("attach with zero offsets: %s decodes as %+v, %v", b, r, err)
	}
}
