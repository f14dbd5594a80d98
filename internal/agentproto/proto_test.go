package agentproto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/cove-dev/cove/internal/agentproto"
)

// randBytes returns n reproducible pseudo-random bytes.
func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func header(typ byte, n uint32) []byte {
	h := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[1:], n)
	return h
}

func TestFrameRoundTrip(t *testing.T) {
	payloads := [][]byte{
		nil,
		{},
		[]byte("x"),
		[]byte(`{"op":"hello"}`),
		randBytes(70_000, 1),
		randBytes(agentproto.MaxFrame, 2), // the largest frame allowed
	}
	var buf bytes.Buffer
	for i, p := range payloads {
		if err := agentproto.WriteFrame(&buf, byte(i+1), p); err != nil {
			t.Fatalf("write frame %d (%d bytes): %v", i, len(p), err)
		}
	}
	// One scratch buffer for all reads, as the readers in the package do.
	var scratch []byte
	for i, p := range payloads {
		typ, got, err := agentproto.ReadFrame(&buf, scratch)
		if err != nil {
			t.Fatalf("read frame %d: %v", i, err)
		}
		if typ != byte(i+1) {
			t.Errorf("frame %d: type %d, want %d", i, typ, i+1)
		}
		if !bytes.Equal(got, p) {
			t.Errorf("frame %d: payload of %d bytes differs from the %d sent", i, len(got), len(p))
		}
		scratch = got[:0]
	}
	// A clean end between frames is io.EOF, not an unexpected EOF.
	if _, _, err := agentproto.ReadFrame(&buf, nil); err != io.EOF {
		t.Fatalf("read past the last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameReusesBuffer(t *testing.T) {
	var buf bytes.Buffer
	agentproto.WriteFrame(&buf, agentproto.FrameData, []byte("hello"))
	scratch := make([]byte, 0, 64)
	_, got, err := agentproto.ReadFrame(&buf, scratch)
	if err != nil {
		t.Fatal(err)
	}
	if &got[0] != &scratch[:1][0] {
		t.Fatal("payload does not alias a buffer that was large enough")
	}
}

func TestJSONRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	req := agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.Exec{Argv: []string{"sh", "-c", "true"}, TTY: true, Rows: 24, Cols: 80, Timeout: 5000}}
	if err := agentproto.WriteJSON(&buf, agentproto.FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	var got agentproto.Request
	if err := agentproto.ReadJSON(&buf, agentproto.FrameRequest, &got); err != nil {
		t.Fatal(err)
	}
	if got.Op != req.Op || got.Exec == nil || got.Exec.Rows != 24 || got.Exec.Timeout != 5000 || len(got.Exec.Argv) != 3 {
		t.Fatalf("got %+v (exec %+v), want %+v", got, got.Exec, req)
	}

	// A frame of another type is an error, not a silent decode.
	agentproto.WriteJSON(&buf, agentproto.FrameExit, agentproto.Exit{Code: 1})
	var resp agentproto.Response
	if err := agentproto.ReadJSON(&buf, agentproto.FrameResponse, &resp); err == nil {
		t.Fatal("ReadJSON accepted a FrameExit where a FrameResponse was expected")
	}
}

func TestResponseErr(t *testing.T) {
	ok := agentproto.Response{}
	if ok.Err() != nil {
		t.Fatalf("empty response: %v", ok.Err())
	}
	bad := agentproto.Response{Error: "open /x: no such file", Code: agentproto.CodeNotFound}
	var re *agentproto.RemoteError
	if !errors.As(bad.Err(), &re) || re.Code != agentproto.CodeNotFound || re.Error() != bad.Error {
		t.Fatalf("Err() = %#v, want a RemoteError carrying code and message", bad.Err())
	}
}

func TestWriteFrameRejectsOversizedPayload(t *testing.T) {
	var buf bytes.Buffer
	err := agentproto.WriteFrame(&buf, agentproto.FrameData, make([]byte, agentproto.MaxFrame+1))
	if !errors.Is(err, agentproto.ErrFrameTooLarge) {
		t.Fatalf("WriteFrame of MaxFrame+1 bytes: %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("WriteFrame wrote %d bytes of a frame it refused", buf.Len())
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// A hostile peer announces a huge frame: ReadFrame must refuse it from the
// header alone, neither allocating nor reading the claimed length.
func TestReadFrameRejectsHugeLengthWithoutAllocating(t *testing.T) {
	for _, n := range []uint32{agentproto.MaxFrame + 1, 1 << 30, 0xFFFFFFFF} {
		hdr := header(agentproto.FrameStdout, n)
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 4096)))}
		if _, _, err := agentproto.ReadFrame(cr, nil); !errors.Is(err, agentproto.ErrFrameTooLarge) {
			t.Fatalf("length %d: %v, want ErrFrameTooLarge", n, err)
		}
		if cr.n != len(hdr) {
			t.Errorf("length %d: read %d bytes, want only the %d-byte header", n, cr.n, len(hdr))
		}
	}

	const runs = 200
	hdr := header(agentproto.FrameStdout, 0xFFFFFFFF)
	r := bytes.NewReader(hdr)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		r.Reset(hdr)
		agentproto.ReadFrame(r, nil)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 1024 {
		t.Fatalf("ReadFrame allocated %d bytes per refused frame; it must not allocate the claimed length", per)
	}
}

func TestReadFrameTruncated(t *testing.T) {
	full := append(header(agentproto.FrameData, 10), "0123456789"...)
	for _, cut := range []int{1, 4, 5, 6, 14} {
		_, _, err := agentproto.ReadFrame(bytes.NewReader(full[:cut]), nil)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("frame cut after %d of %d bytes: %v, want io.ErrUnexpectedEOF", cut, len(full), err)
		}
	}
	// Same through a reader that hands out one byte at a time.
	_, _, err := agentproto.ReadFrame(iotest.OneByteReader(bytes.NewReader(full[:9])), nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("one byte at a time, cut in the payload: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestDataWriterReaderChunking(t *testing.T) {
	data := randBytes(3<<20+12345, 3) // a few MB, not a multiple of ChunkSize
	var wire bytes.Buffer
	w := agentproto.DataWriter{W: &wire, Typ: agentproto.FrameData}
	// Write in odd-sized pieces: chunks must still respect ChunkSize.
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 700_001)
		if k, err := w.Write(rest[:n]); err != nil || k != n {
			t.Fatalf("DataWriter.Write: %d, %v; want %d, nil", k, err, n)
		}
		rest = rest[n:]
	}
	agentproto.WriteFrame(&wire, agentproto.FrameEOF, nil)
	// What follows the data must stay unread by the DataReader.
	agentproto.WriteJSON(&wire, agentproto.FrameResponse, agentproto.Response{PID: 42})

	// Check the frames themselves.
	raw := bytes.NewReader(wire.Bytes())
	frames, total := 0, 0
	for {
		typ, p, err := agentproto.ReadFrame(raw, nil)
		if err != nil {
			t.Fatal(err)
		}
		if typ == agentproto.FrameEOF {
			break
		}
		if typ != agentproto.FrameData {
			t.Fatalf("frame %d: type %d, want FrameData", frames, typ)
		}
		if len(p) == 0 || len(p) > agentproto.ChunkSize {
			t.Fatalf("frame %d carries %d bytes, want 1..%d", frames, len(p), agentproto.ChunkSize)
		}
		frames++
		total += len(p)
	}
	if total != len(data) {
		t.Fatalf("frames carry %d bytes, want %d", total, len(data))
	}
	if min := (len(data) + agentproto.ChunkSize - 1) / agentproto.ChunkSize; frames < min {
		t.Fatalf("%d frames, want at least %d", frames, min)
	}

	// Read it back through small reads.
	r := &agentproto.DataReader{R: &wire}
	got, err := io.ReadAll(iotest.HalfReader(r))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(data))
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF: %d, %v; want 0, io.EOF", n, err)
	}
	var resp agentproto.Response
	if err := agentproto.ReadJSON(&wire, agentproto.FrameResponse, &resp); err != nil || resp.PID != 42 {
		t.Fatalf("the frame after FrameEOF: %+v, %v; DataReader must stop at FrameEOF", resp, err)
	}
}

func TestDataReaderErrors(t *testing.T) {
	t.Run("stream cut before FrameEOF", func(t *testing.T) {
		var wire bytes.Buffer
		agentproto.WriteFrame(&wire, agentproto.FrameData, []byte("partial"))
		_, err := io.ReadAll(&agentproto.DataReader{R: &wire})
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want io.ErrUnexpectedEOF: a cut stream must not look complete", err)
		}
	})
	t.Run("unexpected frame type", func(t *testing.T) {
		var wire bytes.Buffer
		agentproto.WriteFrame(&wire, agentproto.FrameData, []byte("a"))
		agentproto.WriteFrame(&wire, agentproto.FrameStdout, []byte("b"))
		_, err := io.ReadAll(&agentproto.DataReader{R: &wire})
		if err == nil {
			t.Fatal("DataReader accepted a FrameStdout inside a data stream")
		}
	})
	t.Run("oversized frame", func(t *testing.T) {
		wire := bytes.NewReader(header(agentproto.FrameData, agentproto.MaxFrame+1))
		_, err := io.ReadAll(&agentproto.DataReader{R: wire})
		if !errors.Is(err, agentproto.ErrFrameTooLarge) {
			t.Fatalf("got %v, want ErrFrameTooLarge", err)
		}
	})
	t.Run("empty data frames", func(t *testing.T) {
		var wire bytes.Buffer
		agentproto.WriteFrame(&wire, agentproto.FrameData, nil)
		agentproto.WriteFrame(&wire, agentproto.FrameData, []byte("x"))
		agentproto.WriteFrame(&wire, agentproto.FrameData, nil)
		agentproto.WriteFrame(&wire, agentproto.FrameEOF, nil)
		got, err := io.ReadAll(&agentproto.DataReader{R: &wire})
		if err != nil || string(got) != "x" {
			t.Fatalf("got %q, %v; want \"x\", nil", got, err)
		}
	})
}
