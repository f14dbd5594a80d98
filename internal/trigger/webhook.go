package trigger

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
)

// Headers a webhook sender sets.
const (
	// HeaderSignature carries "sha256=" and the hex HMAC-SHA256 of the
	// signed material under the hook's secret, for every hook: GitHub's
	// header and format, which generic senders use too.
	HeaderSignature = "X-Hub-Signature-256"
	// HeaderGitHubEvent and HeaderGitHubDelivery are the event name and
	// the delivery GUID GitHub sends.
	HeaderGitHubEvent    = "X-GitHub-Event"
	HeaderGitHubDelivery = "X-GitHub-Delivery"
	// HeaderDelivery is a generic sender's delivery id; HeaderRequestID is
	// taken in its place when it is absent.
	HeaderDelivery  = "X-Cove-Delivery"
	HeaderRequestID = "X-Request-Id"
	// HeaderTimestamp is an optional generic-hook header, unix seconds;
	// when present it is signed along with the body (see Receiver).
	HeaderTimestamp = "X-Cove-Timestamp"
)

// GitHubHook is the name of the hook that speaks GitHub's webhook protocol
// (POST /v1/hooks/github); every other name is a generic hook.
const GitHubHook = "github"

// DefaultMaxBody is the body limit of a Receiver whose MaxBody is zero:
// GitHub caps its payloads at 25 MiB.
const DefaultMaxBody = 25 << 20

// TimestampTolerance is how far HeaderTimestamp may be from the receiver's
// clock, either way.
const TimestampTolerance = 5 * time.Minute

// maxHookDeliveryID bounds the length of a delivery id taken from a header.
const maxHookDeliveryID = 256

// codeMethodNotAllowed is the code of 405 answers, as the API server
// spells it; api has no constant for it.
const codeMethodNotAllowed = "method_not_allowed"

// Errors of VerifySignature; the error it returns wraps exactly one.
var (
	ErrNoSignature       = errors.New("trigger: no " + HeaderSignature + " header")
	ErrBadSignature      = errors.New("trigger: malformed " + HeaderSignature + " header")
	ErrSignatureMismatch = errors.New("trigger: signature does not match")
)

// VerifySignature checks header, the value of HeaderSignature
// ("sha256=" and 64 hex digits), against the HMAC-SHA256 of body under
// secret, in constant time. It returns nil, or an error wrapping
// ErrNoSignature (header empty), ErrBadSignature (wrong prefix, bad hex,
// wrong length) or ErrSignatureMismatch.
func VerifySignature(secret, body []byte, header string) error {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return checkSignature(header, mac.Sum(nil))
}

// Sign returns the HeaderSignature value a sender puts on body: "sha256="
// and the hex HMAC-SHA256 of body under secret, as GitHub signs.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// checkSignature is VerifySignature given the HMAC sum of the signed
// material, which the receiver computes while the body streams in.
func checkSignature(header string, sum []byte) error {
	got, err := parseSignature(header)
	if err != nil {
		return err
	}
	if !hmac.Equal(got, sum) {
		return ErrSignatureMismatch
	}
	return nil
}

// parseSignature returns the digest a HeaderSignature value carries.
func parseSignature(header string) ([]byte, error) {
	if header == "" {
		return nil, ErrNoSignature
	}
	const prefix = "sha256="
	hexSum, ok := strings.CutPrefix(header, prefix)
	if !ok {
		return nil, fmt.Errorf("%w: want prefix %q", ErrBadSignature, prefix)
	}
	if len(hexSum) != 2*sha256.Size {
		return nil, fmt.Errorf("%w: want %d hex digits, got %d characters", ErrBadSignature, 2*sha256.Size, len(hexSum))
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return nil, fmt.Errorf("%w: not hex", ErrBadSignature)
	}
	return got, nil
}

// Secrets says where hook secrets come from.
type Secrets interface {
	// Secret returns the HMAC secret of the named hook. ok is false, with
	// a nil error, when the hook has no secret configured: the receiver
	// then treats the hook as unknown. An empty secret counts as none.
	// err is for a failed lookup (the store is down) and makes the
	// receiver answer 503. The receiver neither changes nor keeps the
	// returned slice. Secret must be safe for concurrent use.
	Secret(ctx context.Context, hook string) (secret []byte, ok bool, err error)
}

// Sink is where accepted events go.
type Sink interface {
	// Accept records ev durably before it returns nil: once it has, the
	// sender is told the delivery is accepted and will not send it again,
	// so the event must survive a crash from then on. Accept deduplicates
	// by (ev.Source, ev.ID): if that pair was accepted before, it records
	// nothing and returns dup true. Any error means nothing was recorded;
	// the receiver answers 503 so that the sender retries. Accept must be
	// safe for concurrent use.
	Accept(ctx context.Context, ev Event) (dup bool, err error)
}

// Receiver checks and decodes webhook deliveries and hands them to a Sink.
// It is not an http.Handler: the API server routes POST /v1/hooks/github
// and POST /v1/hooks/{name} to ServeHook with the hook name.
//
// Every hook signs its deliveries with HeaderSignature under the secret
// Secrets has for it. The GitHub hook follows GitHub's protocol: the
// signature is over the raw body, HeaderGitHubEvent and
// HeaderGitHubDelivery are required, and the delivery id is GitHub's.
//
// The event handed to the Sink is GitHubEvent's or GenericEvent's with ID
// set to the delivery id and Received to Now.
//
// A generic hook's delivery id is HeaderDelivery, else HeaderRequestID,
// else "sha256:" and the hex SHA-256 of the signed material, so that a
// replay of an identical delivery is deduplicated. A generic sender may
// also set HeaderTimestamp to the time of sending in unix seconds: the
// signature is then over the timestamp, ".", and the raw body, and the
// timestamp must be within TimestampTolerance of Now, which bounds how long
// a captured delivery can be replayed. Without the header the signature is
// over the raw body alone, as GitHub's.
//
// Bodies are application/json (or carry no Content-Type), or
// application/x-www-form-urlencoded with the JSON in the "payload" field
// (GitHub's form option); the signature is over the raw body either way.
//
// Until its signature is checked a delivery is pending, and its sender
// could be anyone: its body is hashed as it arrives, its first 64 KiB are
// held in memory and the rest in an unlinked file in SpoolDir, and only
// once the signature checks out is the body read into memory. Pending
// deliveries are bounded all together (MaxPendingMemory, MaxPendingSpool:
// 503 with Retry-After past them) and per sender, the remote IP address or
// IPv6 /64 (MaxSenderPending deliveries, and twice MaxBody of body bytes:
// 429 with Retry-After past them). They are read no faster than
// MaxPendingRate, one sender at half of it. How fast a body must arrive is the API
// server's business: it sets the connection's read deadline, and a body
// cut off by it is answered 408.
//
// The zero Receiver knows no hooks. Its fields must not change once it
// serves, and it must not be copied.
type Receiver struct {
	Secrets Secrets // nil: no hook is known
	Sink    Sink    // nil: every delivery is answered 503

	// MaxBody limits the body in bytes; zero or less means DefaultMaxBody.
	MaxBody int64
	// SpoolDir is the directory, made when missing (0700), where a pending
	// body past its first 64 KiB waits in an unlinked file; "" means
	// os.TempDir().
	SpoolDir string
	// MaxPendingMemory bounds the memory the bodies of pending deliveries
	// hold, all senders together (at most 64 KiB each); zero or less means
	// DefaultMaxPendingMemory.
	MaxPendingMemory int64
	// MaxPendingSpool bounds the bytes pending bodies hold in SpoolDir, all
	// senders together; zero or less means DefaultMaxPendingSpool.
	MaxPendingSpool int64
	// MaxSenderPending bounds the deliveries one sender has pending at
	// once; zero or less means DefaultMaxSenderPending.
	MaxSenderPending int
	// MaxPendingRate bounds the bytes a second pending bodies are read at,
	// all senders together (one sender gets half); zero or less means
	// DefaultMaxPendingRate.
	MaxPendingRate int64
	// Now is the clock for HeaderTimestamp and Event.Received; nil means
	// time.Now.
	Now func() time.Time
	// Log gets a Warn line per rejected delivery, an Error line per failed
	// lookup or Accept, and an Info line per accepted one; nil discards.
	Log *slog.Logger
	// OnReject, if set, is called for every delivery answered with a 4xx
	// or 5xx status, with the hook name ("github" for GitHub), the reason
	// as the server would log it, and the status. It runs on the request's
	// goroutine before the answer is written.
	OnReject func(source string, reason string, status int)

	pending pendingLoad
}

// hookRejection is a delivery the receiver refuses, with the answer.
type hookRejection struct {
	status int
	code   string
	msg    string // told to the sender
	detail string // logged and given to OnReject; msg when empty
}

func hookReject(status int, code, format string, args ...any) *hookRejection {
	return &hookRejection{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// hookAnswer is the body of a 2xx answer.
type hookAnswer struct {
	OK        bool   `json:"ok"`
	ID        string `json:"id,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Ping      bool   `json:"ping,omitempty"`
}

// ServeHook answers one delivery to the named hook:
//
//	202 {"ok":true,"id":ID}                  accepted: Sink.Accept returned nil
//	200 {"ok":true,"duplicate":true,"id":ID} Sink.Accept saw (source, ID) before
//	200 {"ok":true,"ping":true}              GitHub's ping event; no event
//	400 invalid_argument    missing GitHub header, bad delivery id, malformed JSON
//	401 unauthorized        missing, malformed or wrong signature; stale timestamp
//	404 not_found           no secret configured for hook
//	405 method_not_allowed  not POST
//	408 request_timeout     the body did not arrive in time
//	413 payload_too_large   body over MaxBody
//	415 unsupported_media   neither JSON nor form-encoded
//	429 too_many_requests   the sender's pending limits are reached (Retry-After)
//	503 unavailable         Secrets or Sink failed, or the pending limits of
//	                        all senders are reached; the sender should retry
//
// Errors are api.ErrorResponse bodies.
func (r *Receiver) ServeHook(w http.ResponseWriter, req *http.Request, hook string) {
	ans, rej := r.serve(w, req, hook)
	if rej != nil {
		r.rejected(req, hook, rej)
		// The body may be unread: the server would otherwise wait for
		// (some of) it before answering.
		w.Header().Set("Connection", "close")
		switch rej.status {
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", http.MethodPost)
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			w.Header().Set("Retry-After", "1")
		}
		writeHookJSON(w, rej.status, api.ErrorResponse{Error: api.ErrorBody{Code: rej.code, Message: rej.msg}})
		return
	}
	status := http.StatusOK
	if !ans.Duplicate && !ans.Ping {
		status = http.StatusAccepted
	}
	writeHookJSON(w, status, ans)
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request, hook string) (hookAnswer, *hookRejection) {
	ctx := req.Context()
	if req.Method != http.MethodPost {
		return hookAnswer{}, hookReject(http.StatusMethodNotAllowed, codeMethodNotAllowed, "method %s not allowed on a hook; use POST", req.Method)
	}
	secret, rej := r.secret(ctx, hook)
	if rej != nil {
		return hookAnswer{}, rej
	}
	form, rej := hookFormEncoded(req)
	if rej != nil {
		return hookAnswer{}, rej
	}
	// A delivery that cannot be signed right is refused unread.
	if _, err := parseSignature(req.Header.Get(HeaderSignature)); err != nil {
		return hookAnswer{}, hookReject(http.StatusUnauthorized, api.CodeUnauthorized, "%s", strings.TrimPrefix(err.Error(), "trigger: "))
	}
	// Until the signature checks out the sender is anyone: its body is
	// hashed as it streams in and held within the pending limits (see
	// Receiver), mostly on disk, and read into memory only once it is
	// authenticated.
	c, rej := r.admit(req)
	if rej != nil {
		return hookAnswer{}, rej
	}
	defer c.release()
	mac := hmac.New(sha256.New, secret)
	hashes := []hash.Hash{mac}
	var sum hash.Hash // the signed material's SHA-256: a generic hook's fallback delivery id
	if hook != GitHubHook {
		sum = sha256.New()
		hashes = append(hashes, sum)
		if ts := req.Header.Get(HeaderTimestamp); ts != "" {
			if rej := r.checkTimestamp(ts); rej != nil {
				return hookAnswer{}, rej
			}
			for _, h := range hashes {
				io.WriteString(h, ts+".")
			}
		}
	}
	body, rej := r.readBody(w, req, c, hashes)
	if rej != nil {
		return hookAnswer{}, rej
	}
	defer body.close()

	// Authenticate before anything in the body or headers is believed.
	if err := checkSignature(req.Header.Get(HeaderSignature), mac.Sum(nil)); err != nil {
		return hookAnswer{}, hookReject(http.StatusUnauthorized, api.CodeUnauthorized, "%s", strings.TrimPrefix(err.Error(), "trigger: "))
	}
	raw, err := body.bytes()
	if err != nil {
		return hookAnswer{}, hookUnavailable("read back spooled body: " + err.Error())
	}
	body.close()
	c.release() // authenticated: the body no longer counts as pending

	var id, event string
	if hook == GitHubHook {
		if event = req.Header.Get(HeaderGitHubEvent); event == "" {
			return hookAnswer{}, hookReject(http.StatusBadRequest, api.CodeInvalid, "missing %s header", HeaderGitHubEvent)
		}
		if id = req.Header.Get(HeaderGitHubDelivery); id == "" {
			return hookAnswer{}, hookReject(http.StatusBadRequest, api.CodeInvalid, "missing %s header", HeaderGitHubDelivery)
		}
	} else {
		id = req.Header.Get(HeaderDelivery)
		if id == "" {
			id = req.Header.Get(HeaderRequestID)
		}
		if id == "" {
			id = "sha256:" + hex.EncodeToString(sum.Sum(nil))
		}
	}
	if rej := checkHookDeliveryID(id); rej != nil {
		return hookAnswer{}, rej
	}
	if hook == GitHubHook && event == "ping" {
		return hookAnswer{OK: true, Ping: true}, nil
	}

	payload := raw
	if form {
		if payload, rej = hookFormPayload(raw); rej != nil {
			return hookAnswer{}, rej
		}
	}
	var ev Event
	if hook == GitHubHook {
		ev, err = GitHubEvent(event, id, payload)
	} else {
		ev, err = GenericEvent(hook, payload)
	}
	if err != nil {
		return hookAnswer{}, hookReject(http.StatusBadRequest, api.CodeInvalid, "%s", strings.TrimPrefix(err.Error(), "trigger: "))
	}
	ev.ID = id
	ev.Received = r.now()

	if r.Sink == nil {
		return hookAnswer{}, hookUnavailable("no sink configured")
	}
	dup, err := r.Sink.Accept(ctx, ev)
	if err != nil {
		return hookAnswer{}, hookUnavailable("accept event: " + err.Error())
	}
	if dup {
		r.log().LogAttrs(ctx, slog.LevelInfo, "hook delivery duplicate",
			slog.String("hook", hook), slog.String("event", ev.Name), slog.String("id", ev.ID))
		return hookAnswer{OK: true, Duplicate: true, ID: ev.ID}, nil
	}
	r.log().LogAttrs(ctx, slog.LevelInfo, "hook delivery accepted",
		slog.String("hook", hook), slog.String("event", ev.Name), slog.String("id", ev.ID))
	return hookAnswer{OK: true, ID: ev.ID}, nil
}

// secret looks up the hook's secret.
func (r *Receiver) secret(ctx context.Context, hook string) ([]byte, *hookRejection) {
	if r.Secrets != nil && hook != "" {
		secret, ok, err := r.Secrets.Secret(ctx, hook)
		if err != nil {
			return nil, hookUnavailable("look up hook secret: " + err.Error())
		}
		if ok && len(secret) > 0 {
			return secret, nil
		}
	}
	return nil, hookReject(http.StatusNotFound, api.CodeNotFound, "no hook %q", hook)
}

// unavailable is a 503 whose detail stays on the server.
func hookUnavailable(detail string) *hookRejection {
	return &hookRejection{
		status: http.StatusServiceUnavailable,
		code:   api.CodeUnavailable,
		msg:    "cannot take the delivery now; retry later",
		detail: detail,
	}
}

// hookFormEncoded reports whether the body is form-encoded rather than JSON.
func hookFormEncoded(req *http.Request) (bool, *hookRejection) {
	ct := req.Header.Get("Content-Type")
	if ct == "" {
		return false, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case err != nil:
	case mt == "application/json":
		return false, nil
	case mt == "application/x-www-form-urlencoded":
		return true, nil
	}
	return false, hookReject(http.StatusUnsupportedMediaType, api.CodeUnsupported,
		"body must be application/json or application/x-www-form-urlencoded, not %q", ct)
}

// hookFormPayload returns the "payload" field of a form-encoded body.
func hookFormPayload(raw []byte) ([]byte, *hookRejection) {
	vals, err := url.ParseQuery(string(raw))
	if err != nil {
		return nil, hookReject(http.StatusBadRequest, api.CodeInvalid, "form body: %v", err)
	}
	p := vals.Get("payload")
	if p == "" {
		return nil, hookReject(http.StatusBadRequest, api.CodeInvalid, "form body has no payload field")
	}
	return []byte(p), nil
}

// checkTimestamp checks a HeaderTimestamp value against the clock.
func (r *Receiver) checkTimestamp(ts string) *hookRejection {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return hookReject(http.StatusUnauthorized, api.CodeUnauthorized, "%s is not unix seconds", HeaderTimestamp)
	}
	// Compare in seconds: a time.Duration overflows for far-off values.
	now := r.now().Unix()
	tol := int64(TimestampTolerance / time.Second)
	if sec < now-tol || sec > now+tol {
		return hookReject(http.StatusUnauthorized, api.CodeUnauthorized,
			"%s %d is more than %v away from the receiver's clock", HeaderTimestamp, sec, TimestampTolerance)
	}
	return nil
}

// checkHookDeliveryID rejects ids a store should not key by.
func checkHookDeliveryID(id string) *hookRejection {
	if len(id) > maxHookDeliveryID {
		return hookReject(http.StatusBadRequest, api.CodeInvalid, "delivery id is longer than %d bytes", maxHookDeliveryID)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return hookReject(http.StatusBadRequest, api.CodeInvalid, "delivery id has a byte outside printable ASCII")
		}
	}
	return nil
}

// rejected reports a refused delivery to the log and to OnReject.
func (r *Receiver) rejected(req *http.Request, hook string, rej *hookRejection) {
	reason := rej.detail
	if reason == "" {
		reason = rej.msg
	}
	level := slog.LevelWarn
	if rej.status >= 500 {
		level = slog.LevelError
	}
	r.log().LogAttrs(req.Context(), level, "hook delivery rejected",
		slog.String("hook", hook), slog.Int("status", rej.status), slog.String("reason", reason),
		slog.String("remote", req.RemoteAddr))
	if r.OnReject != nil {
		r.OnReject(hook, reason, rej.status)
	}
}

func (r *Receiver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

var discardLog = slog.New(slog.DiscardHandler)

func (r *Receiver) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return discardLog
}

// writeHookJSON answers with v as JSON. A failed write is the sender's problem:
// the status is out and there is nothing else to tell.
func writeHookJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v) // v is one of this file's wire types
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
