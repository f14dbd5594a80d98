package agentproto

import (
	"cmp"
	"fmt"
	"slices"
)

// MaxOutputLog is how many bytes of each of a command's output streams a
// guest keeps for a re-attach (see OutputLog).
const MaxOutputLog = 1 << 20

// KeptExits bounds the ended commands a guest keeps whose exit the host
// has not acknowledged: past it the oldest is forgotten, and an attach to
// it finds no command.
const KeptExits = 64

// outputChunkMax bounds a chunk that consecutive writes to one stream are
// merged into: a command writing a byte at a time is not kept as a
// million chunks.
const outputChunkMax = 32 << 10

// OutputLog is the end of a command's output as a guest keeps it for the
// command's next attach: the last MaxOutputLog bytes of stdout and of
// stderr at their offsets from the command's start, in the order they were
// written, kept whether or not a stream is attached. The zero value is an
// empty log. The fields are exported for a guest that saves the log (the
// fake driver's state file); they are changed through the methods only.
type OutputLog struct {
	Stdout OutputStream `json:"stdout"`
	Stderr OutputStream `json:"stderr"`
	// Seq is the last chunk's number: chunks of both streams are numbered
	// in the order written.
	Seq uint64 `json:"seq,omitempty"`
}

// OutputStream is one stream of an OutputLog.
type OutputStream struct {
	Chunks []OutputChunk `json:"chunks,omitempty"` // oldest first
	Start  int64         `json:"start,omitempty"`  // the offset of the first byte kept
	End    int64         `json:"end,omitempty"`    // the bytes written
	// Sent is how far an attached stream took the output: where an attach
	// without offsets (a host from before them) resumes.
	Sent int64 `json:"sent,omitempty"`
}

// OutputChunk is a stretch of one stream.
type OutputChunk struct {
	Seq  uint64 `json:"seq"`
	Data []byte `json:"data"`
}

// Replay is a stretch of output that an attach sends.
type Replay struct {
	Typ  byte   // FrameStdout or FrameStderr
	Data []byte // aliases the log: send it before the log changes
	End  int64  // the stream's offset after Data
}

func (l *OutputLog) stream(typ byte) *OutputStream {
	if typ == FrameStderr {
		return &l.Stderr
	}
	return &l.Stdout
}

// Write keeps p, written to the stream of frame type typ (FrameStdout or
// FrameStderr), dropping what falls out of the last MaxOutputLog bytes, and
// returns the stream's offset after p.
func (l *OutputLog) Write(typ byte, p []byte) int64 {
	s := l.stream(typ)
	if len(p) == 0 {
		return s.End
	}
	if n := len(s.Chunks); n > 0 && s.Chunks[n-1].Seq == l.Seq && len(s.Chunks[n-1].Data)+len(p) <= outputChunkMax {
		s.Chunks[n-1].Data = append(s.Chunks[n-1].Data, p...)
	} else {
		l.Seq++
		s.Chunks = append(s.Chunks, OutputChunk{Seq: l.Seq, Data: append([]byte(nil), p...)})
	}
	s.End += int64(len(p))
	for over := s.End - s.Start - MaxOutputLog; over > 0; {
		c := &s.Chunks[0]
		n := min(over, int64(len(c.Data)))
		if n == int64(len(c.Data)) {
			s.Chunks = s.Chunks[1:]
		} else {
			c.Data = c.Data[n:]
		}
		s.Start += n
		over -= n
	}
	return s.End
}

// Sent records that an attached stream took the stream of frame type typ
// up to offset end.
func (l *OutputLog) Sent(typ byte, end int64) {
	if s := l.stream(typ); end > s.Sent {
		s.Sent = end
	}
}

// Replay returns the output to send to a host that has received from of
// each stream (nil: what an attached stream took, see OutputStream.Sent),
// in the order it was written, a chunk that straddles an offset cut at
// it; and lost, the bytes after from that are no longer kept. An offset
// past what the command wrote is an error: it is not this command's.
func (l *OutputLog) Replay(from *Offsets) (replay []Replay, lost Offsets, err error) {
	at := [2]int64{l.Stdout.Sent, l.Stderr.Sent}
	if from != nil {
		at = [2]int64{from.Stdout, from.Stderr}
	}
	type part struct {
		seq uint64
		r   Replay
	}
	var parts []part
	for i, typ := range []byte{FrameStdout, FrameStderr} {
		s := l.stream(typ)
		off := at[i]
		if off < 0 || off > s.End {
			return nil, Offsets{}, fmt.Errorf("offset %d of %s: the command wrote %d bytes", off, streamName(typ), s.End)
		}
		if off < s.Start {
			if typ == FrameStdout {
				lost.Stdout = s.Start - off
			} else {
				lost.Stderr = s.Start - off
			}
			off = s.Start
		}
		pos := s.Start
		for _, c := range s.Chunks {
			end := pos + int64(len(c.Data))
			if end > off {
				parts = append(parts, part{c.Seq, Replay{Typ: typ, Data: c.Data[max(off-pos, 0):], End: end}})
			}
			pos = end
		}
	}
	slices.SortStableFunc(parts, func(a, b part) int { return cmp.Compare(a.seq, b.seq) })
	for _, p := range parts {
		replay = append(replay, p.r)
	}
	return replay, lost, nil
}

func streamName(typ byte) string {
	if typ == FrameStderr {
		return "stderr"
	}
	return "stdout"
}
