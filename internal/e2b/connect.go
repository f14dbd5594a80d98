package e2b

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cove-dev/cove/api"
)

// The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec,
// as the SDK speaks it, and the binary one (which other Connect clients
// may choose): unary calls are a message body each way; server streams
// answer one request envelope with envelopes of [flags u8][length u32
// BE][message], the last one flagged end-of-stream (its body JSON).

// Connect error codes (the ones cove answers).
const (
	codeCanceled           = "canceled"
	codeInvalidArgument    = "invalid_argument"
	codeDeadlineExceeded   = "deadline_exceeded"
	codeNotFound           = "not_found"
	codeAlreadyExists      = "already_exists"
	codePermissionDenied   = "permission_denied"
	codeResourceExhausted  = "resource_exhausted"
	codeFailedPrecondition = "failed_precondition"
	codeUnimplemented      = "unimplemented"
	codeInternal           = "internal"
	codeUnavailable        = "unavailable"
	codeUnauthenticated    = "unauthenticated"
)

// rpcError is a Connect error.
type rpcError struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

func (e *rpcError) Error() string { return e.Code + ": " + e.Message }

func rpcErrorf(code, format string, args ...any) *rpcError {
	return &rpcError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// httpStatus is the HTTP status of a unary call's error code.
func httpStatus(code string) int {
	switch code {
	case codeCanceled:
		return 499
	case codeInvalidArgument, codeFailedPrecondition:
		return http.StatusBadRequest
	case codeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case codeNotFound:
		return http.StatusNotFound
	case codeAlreadyExists:
		return http.StatusConflict
	case codePermissionDenied:
		return http.StatusForbidden
	case codeResourceExhausted:
		return http.StatusTooManyRequests
	case codeUnimplemented:
		return http.StatusNotImplemented
	case codeUnavailable:
		return http.StatusServiceUnavailable
	case codeUnauthenticated:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}

// asRPC turns a session manager error into a Connect error.
func (s *Server) asRPC(r *http.Request, what string, err error) *rpcError {
	var re *rpcError
	if errors.As(err, &re) {
		return re
	}
	code := codeInternal
	switch api.CodeOf(err) {
	case api.CodeNotFound:
		code = codeNotFound
	case api.CodeInvalid, api.CodeTooLarge:
		code = codeInvalidArgument
	case api.CodeConflict:
		code = codeFailedPrecondition
	case api.CodeUnavailable:
		code = codeUnavailable
	case api.CodeTimeout:
		code = codeDeadlineExceeded
	case api.CodeInsufficientStorage:
		code = codeResourceExhausted
	case api.CodeForbidden:
		code = codePermissionDenied
	}
	if code == codeInternal {
		s.log.ErrorContext(r.Context(), "e2b: envd internal error", "what", what, "err", err)
		return rpcErrorf(code, "%s: internal error (see the server's log)", what)
	}
	return rpcErrorf(code, "%s", err.Error())
}

// maxMessageBytes bounds one request message (stdin chunks are sent as
// base64 in unary SendInput calls).
const maxMessageBytes = 16 << 20

func mediaType(r *http.Request) string {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt
}

// codec is a Connect codec: the messages are cove's generated envd types
// (package envdpb, from its .proto files), encoded as protojson (what
// the SDKs send) or as protobuf's binary form.
type codec struct{ binary bool }

// The JSON codec reads what a newer SDK may add (unknown fields are
// dropped, as connect-go's codec does), and writes proto3 JSON: zero
// values left out, enums by name, 64-bit integers as strings.
var (
	jsonIn  = protojson.UnmarshalOptions{DiscardUnknown: true}
	jsonOut = protojson.MarshalOptions{}
)

func (c codec) unmarshal(b []byte, m proto.Message) error {
	if c.binary {
		return proto.Unmarshal(b, m)
	}
	return jsonIn.Unmarshal(b, m)
}

func (c codec) marshal(m proto.Message) ([]byte, error) {
	if c.binary {
		return proto.Marshal(m)
	}
	return jsonOut.Marshal(m)
}

// unaryCodecs and streamCodecs are the Content-Types of the Connect
// codecs served: JSON and binary protobuf.
var (
	unaryCodecs  = map[string]codec{"application/json": {}, "application/proto": {binary: true}}
	streamCodecs = map[string]codec{"application/connect+json": {}, "application/connect+proto": {binary: true}}
)

// readUnary decodes a unary call's body into m, by its Content-Type's
// codec, which the answer is to use.
func readUnary(r *http.Request, m proto.Message) (codec, *rpcError) {
	mt := mediaType(r)
	c, ok := unaryCodecs[mt]
	if !ok {
		return codec{}, rpcErrorf(codeInvalidArgument, "content type %q: a unary call takes application/json or application/proto", mt)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxMessageBytes+1))
	if err != nil {
		return c, rpcErrorf(codeInvalidArgument, "read request: %v", err)
	}
	if len(b) > maxMessageBytes {
		return c, rpcErrorf(codeResourceExhausted, "request message over %d bytes", maxMessageBytes)
	}
	if err := c.unmarshal(b, m); err != nil {
		return c, rpcErrorf(codeInvalidArgument, "request message: %v", err)
	}
	return c, nil
}

// writeUnary answers a unary call with m in codec c.
func writeUnary(w http.ResponseWriter, c codec, m proto.Message) {
	b, err := c.marshal(m)
	if err != nil {
		writeUnaryError(w, rpcErrorf(codeInternal, "encode answer: %v", err))
		return
	}
	ct := "application/json"
	if c.binary {
		ct = "application/proto"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// writeUnaryError answers a unary call's error, in JSON whatever the
// codec (the Connect protocol's rule).
func writeUnaryError(w http.ResponseWriter, e *rpcError) {
	writeJSON(w, httpStatus(e.Code), e)
}

// Envelope flags.
const (
	flagCompressed = 0x01
	flagEndStream  = 0x02
)

// readEnvelope reads a server stream's request: one uncompressed
// envelope holding a message, decoded into m by the Content-Type's codec,
// which the stream then answers in (st takes it).
func readEnvelope(r *http.Request, st *stream, m proto.Message) *rpcError {
	mt := mediaType(r)
	c, ok := streamCodecs[mt]
	if !ok {
		return rpcErrorf(codeInvalidArgument, "content type %q: a streaming call takes application/connect+json or application/connect+proto", mt)
	}
	st.codec = c
	var hdr [5]byte
	if _, err := io.ReadFull(r.Body, hdr[:]); err != nil {
		return rpcErrorf(codeInvalidArgument, "malformed envelope: want a 5-byte prefix (%v)", err)
	}
	if hdr[0]&flagCompressed != 0 {
		return rpcErrorf(codeInvalidArgument, "malformed envelope: compressed messages are not accepted")
	}
	if hdr[0] != 0 {
		return rpcErrorf(codeInvalidArgument, "malformed envelope: flags %#x on a request message", hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxMessageBytes {
		return rpcErrorf(codeResourceExhausted, "request message of %d bytes; the limit is %d", n, maxMessageBytes)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.Body, b); err != nil {
		return rpcErrorf(codeInvalidArgument, "malformed envelope: %d bytes announced, fewer sent (%v)", n, err)
	}
	if err := c.unmarshal(b, m); err != nil {
		return rpcErrorf(codeInvalidArgument, "request message: %v", err)
	}
	return nil
}

// stream writes a server stream's envelopes; safe for concurrent use.
type stream struct {
	codec codec // the request's, set by readEnvelope before the first write

	mu    sync.Mutex
	w     http.ResponseWriter
	rc    *http.ResponseController
	begun bool
	err   error // the first write error; guarded by mu
}

func newStream(w http.ResponseWriter) *stream {
	return &stream{w: w, rc: http.NewResponseController(w)}
}

// send writes one message envelope and flushes it.
func (st *stream) send(m proto.Message) error {
	b, err := st.codec.marshal(m)
	if err != nil {
		return err
	}
	return st.write(0, b)
}

// end writes the end-of-stream envelope, JSON whatever the codec (the
// Connect protocol's rule): {} or {"error":…}.
func (st *stream) end(e *rpcError) error {
	body := []byte("{}")
	if e != nil {
		body, _ = json.Marshal(struct {
			Error *rpcError `json:"error"`
		}{e})
	}
	return st.write(flagEndStream, body)
}

func (st *stream) write(flags byte, b []byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil {
		return st.err
	}
	if !st.begun {
		st.begun = true
		ct := "application/connect+json"
		if st.codec.binary {
			ct = "application/connect+proto"
		}
		st.w.Header().Set("Content-Type", ct)
		st.w.WriteHeader(http.StatusOK)
	}
	var hdr [5]byte
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
	if _, err := st.w.Write(hdr[:]); err != nil {
		st.err = err
		return err
	}
	if _, err := st.w.Write(b); err != nil {
		st.err = err
		return err
	}
	if err := st.rc.Flush(); err != nil {
		st.err = err
	}
	return st.err
}

// keepaliveInterval is how often a stream with nothing to say sends a
// keepalive: the Keepalive-Ping-Interval header's seconds (the SDK sends
// 50), at most a minute, 30 s without it.
func keepaliveInterval(r *http.Request) time.Duration {
	if n, err := strconv.Atoi(r.Header.Get("Keepalive-Ping-Interval")); err == nil && n > 0 {
		return min(time.Duration(n)*time.Second, time.Minute)
	}
	return 30 * time.Second
}

// connectTimeout is the Connect-Timeout-Ms header, which envd treats as a
// started process's lifetime; zero: none.
func connectTimeout(r *http.Request) (time.Duration, *rpcError) {
	v := r.Header.Get("Connect-Timeout-Ms")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || len(v) > 10 {
		return 0, rpcErrorf(codeInvalidArgument, "Connect-Timeout-Ms %q: want at most 10 digits", v)
	}
	return time.Duration(n) * time.Millisecond, nil
}
