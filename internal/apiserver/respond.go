package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// maxJSONBytes limits JSON request bodies.
const maxJSONBytes = 16 << 20

// codeMethodNotAllowed is the code of 405 answers; api has no code for it.
const codeMethodNotAllowed = "method_not_allowed"

// statusError is an error answered with a status that no api code has.
type statusError struct {
	status int
	code   string
	msg    string
}

func (e *statusError) Error() string { return e.msg }

// reportedError marks an error that the handler already told the client
// in-band (an NDJSON error line, a WebSocket error message): the gate only
// logs it.
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

func reported(err error) error {
	if err == nil {
		return nil
	}
	return &reportedError{err}
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	return reported(err) // the status is out; nothing else to tell
}

// writeError answers with an api.ErrorResponse for err.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, verb string, err error) {
	var se *statusError
	if errors.As(err, &se) {
		_ = writeJSON(w, se.status, api.ErrorResponse{Error: api.ErrorBody{Code: se.code, Message: se.msg}})
		return
	}
	body := s.errorBody(r.Context(), verb, err)
	if session.IsNoRoom(err) {
		w.Header().Set(noRoomHeader, "1") // a forwarding server places it again (route.go)
	}
	_ = writeJSON(w, api.Status(body.Code), api.ErrorResponse{Error: body})
}

// errorBody is what a client is told about err. Internal errors are logged
// in full and answered with the operation and a reference to the log line,
// so that host details stay on the host. A state store that cannot be used
// for now (store.ErrUnavailable: locked by another process, read-only,
// full) is no fault of the request and passes, so it is answered 503 with
// the store's reason. A write refused because the record changed since it
// was read (store.ErrConflict: another request or server wrote it first)
// is answered 409 with the record it names; the client reads again.
func (s *Server) errorBody(ctx context.Context, verb string, err error) api.ErrorBody {
	code := api.CodeOf(err)
	switch {
	case code != api.CodeInternal:
	case errors.Is(err, store.ErrUnavailable):
		code = api.CodeUnavailable
	case errors.Is(err, store.ErrConflict):
		code = api.CodeConflict
	}
	if code != api.CodeInternal {
		return api.ErrorBody{Code: code, Message: err.Error()}
	}
	ref := rand.Text()[:10]
	s.log.LogAttrs(ctx, slog.LevelError, "internal error", slog.String("verb", verb), slog.String("ref", ref), slog.Any("err", err))
	op := verb
	if op == "" {
		op = "request"
	}
	return api.ErrorBody{Code: code, Message: fmt.Sprintf("%s failed: internal error (ref %s)", op, ref)}
}

// decodeJSON decodes the request body into v: at most maxJSONBytes, no
// unknown fields, no trailing data. An empty body leaves v as it is.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return api.Errorf(api.CodeUnsupported, "request body must be application/json, not %q", ct)
		}
	}
	if r.ContentLength > maxJSONBytes {
		return api.Errorf(api.CodeTooLarge, "request body is %d bytes; the limit is %d", r.ContentLength, maxJSONBytes)
	}
	dec := json.NewDecoder(http.MaxBytesReader(unwrap(w), r.Body, maxJSONBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			if e := decodeError(err); api.IsCode(e, api.CodeTooLarge) {
				return e
			}
		}
		return api.Errorf(api.CodeInvalid, "request body: data after the JSON value")
	}
	return nil
}

func decodeError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return api.Errorf(api.CodeTooLarge, "request body is larger than the limit of %d bytes", mbe.Limit)
	}
	return api.Errorf(api.CodeInvalid, "request body: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// mediaType returns the request's Content-Type without parameters.
func mediaType(r *http.Request) string {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return ""
	}
	return mt
}

// accepts reports whether the request's Accept header lists mt.
func accepts(r *http.Request, mt string) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			if got, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && got == mt {
				return true
			}
		}
	}
	return false
}

// ndjson writes a stream of JSON lines, flushing after each. It is safe for
// concurrent use; after the first failed write every send fails.
type ndjson struct {
	mu  sync.Mutex
	w   io.Writer                // guarded by mu
	rc  *http.ResponseController // guarded by mu
	err error                    // guarded by mu
}

var errStreamClosed = errors.New("stream closed")

// liftDeadlines clears the http.Server's read and write deadlines for an
// authenticated request that may rightly outlast them: an exec, a build, a
// file transfer. Left in place, an expired read deadline would also cancel
// the request's context once the body is read, killing the command.
func liftDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
}

// startNDJSON answers 200 with an NDJSON stream.
func startNDJSON(w http.ResponseWriter) *ndjson {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	n := &ndjson{w: w, rc: rc}
	n.mu.Lock()
	n.err = rc.Flush()
	n.mu.Unlock()
	return n
}

func (n *ndjson) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return n.err
	}
	if _, n.err = n.w.Write(append(b, '\n')); n.err == nil {
		n.err = n.rc.Flush()
	}
	return n.err
}

// close makes every later send fail.
func (n *ndjson) close() {
	n.mu.Lock()
	if n.err == nil {
		n.err = errStreamClosed
	}
	n.mu.Unlock()
}
