package trigger

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
)

var (
	testGitHubSecret  = []byte("gh-webhook-secret-3f9a")
	testGenericSecret = []byte("deploys-secret-71c2")
	testNow           = time.Date(2026, 11, 28, 13, 0, 0, 0, time.UTC)
)

// testMaxBody is small so that the 413 test sends little, and large enough
// for every fixture.
const testMaxBody = 64 << 10

// githubSign signs body as GitHub does: "sha256=" and the hex HMAC-SHA256
// of the raw body under the secret. It is written out here rather than
// calling the code under test.
func githubSign(secret []byte, parts ...string) string {
	mac := hmac.New(sha256.New, secret)
	for _, p := range parts {
		io.WriteString(mac, p)
	}
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// memSink is the receiver's Sink as cove server has it, less the
// subscriptions: the session manager's Accept records each event with the
// state store's RecordEvent, and the de-duplication by (Source, ID) is the
// store's. So this sink does not de-duplicate: it hands every event to a
// real SQLite store and answers what the store says. It keeps every event
// it is handed, duplicates included, and the store's answer for each, so
// that a test sees what the receiver passed on and what was recorded.
type memSink struct {
	st   *sqlite.Store
	fail error // returned by Accept when set

	mu       sync.Mutex
	received []Event       // guarded by mu: every event handed to Accept
	recorded []store.Event // guarded by mu: what the store recorded as new
}

func newMemSink(t *testing.T) *memSink {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &memSink{st: st}
}

func (s *memSink) Accept(ctx context.Context, ev Event) (bool, error) {
	if s.fail != nil {
		return false, s.fail
	}
	s.mu.Lock()
	s.received = append(s.received, ev)
	s.mu.Unlock()
	// As session.Manager.Accept does, with no session subscribed.
	rec, _, dup, err := s.st.RecordEvent(ctx, store.Event{Source: ev.Source, ID: ev.ID, Name: ev.Name,
		Fields: ev.Fields, Body: ev.Body, Received: ev.Received.UTC()}, nil)
	if err != nil {
		return false, fmt.Errorf("record event: %w", err)
	}
	if !dup {
		s.mu.Lock()
		s.recorded = append(s.recorded, rec)
		s.mu.Unlock()
	}
	return dup, nil
}

// reset forgets the events handed to Accept so far (the store keeps
// them).
func (s *memSink) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received = nil
}

// got returns the events handed to Accept, duplicates included.
func (s *memSink) got() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.received...)
}

// stored returns the delivery ids the store recorded as new events, in
// order, each checked against the store's copy (Seq 1, 2, ...: a
// duplicate recorded in between would take a Seq).
func (s *memSink) stored(t *testing.T) []string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for i, rec := range s.recorded {
		got, err := s.st.GetEvent(context.Background(), rec.Seq)
		if err != nil || got.ID != rec.ID || got.Seq != int64(i+1) {
			t.Fatalf("new event %d (%s) recorded with seq %d; the store has %q there (%v); want seq %d", i+1, rec.ID, rec.Seq, got.ID, err, i+1)
		}
		ids = append(ids, rec.ID)
	}
	return ids
}

// memSecrets is Secrets from a map; fail makes every lookup fail.
type memSecrets struct {
	m    map[string][]byte
	fail error
}

func (s memSecrets) Secret(_ context.Context, hook string) ([]byte, bool, error) {
	if s.fail != nil {
		return nil, false, s.fail
	}
	b, ok := s.m[hook]
	return b, ok, nil
}

type rejectCall struct {
	source, reason string
	status         int
}

// lockedBuffer is a log destination safe to read while the server writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// hookEnv is a Receiver behind a real HTTP server, routed as the API
// server routes it.
type hookEnv struct {
	t    *testing.T
	rcv  *Receiver
	sink *memSink
	srv  *httptest.Server
	logs *lockedBuffer

	mu      sync.Mutex
	rejects []rejectCall // guarded by mu
}

func newHookEnv(t *testing.T) *hookEnv {
	t.Helper()
	e := &hookEnv{t: t, sink: newMemSink(t), logs: &lockedBuffer{}}
	e.rcv = &Receiver{
		Secrets: memSecrets{m: map[string][]byte{
			GitHubHook: testGitHubSecret,
			"deploys":  testGenericSecret,
			"empty":    {},
		}},
		Sink:    e.sink,
		MaxBody: testMaxBody,
		Now:     func() time.Time { return testNow },
		Log:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnReject: func(source, reason string, status int) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.rejects = append(e.rejects, rejectCall{source, reason, status})
		},
	}
	mux := http.NewServeMux()
	// No method in the pattern: the receiver answers 405 itself.
	mux.HandleFunc("/v1/hooks/{name}", func(w http.ResponseWriter, r *http.Request) {
		e.rcv.ServeHook(w, r, r.PathValue("name"))
	})
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *hookEnv) rejectCalls() []rejectCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]rejectCall(nil), e.rejects...)
}

// delivery is one request to a hook.
type delivery struct {
	method string // POST when empty
	hook   string
	header http.Header
	body   io.Reader // nil: empty
}

type answer struct {
	status int
	header http.Header
	raw    []byte
	ok     map[string]any     // a 2xx body
	err    *api.ErrorResponse // a 4xx or 5xx body
}

func (e *hookEnv) send(d delivery) answer {
	e.t.Helper()
	method := d.method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequest(method, e.srv.URL+"/v1/hooks/"+d.hook, d.body)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range d.header {
		req.Header[k] = vs
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, raw: raw}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("answer %d has Content-Type %q: %s", resp.StatusCode, ct, raw)
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, &a.ok); err != nil {
			e.t.Fatalf("answer %d: %v: %s", resp.StatusCode, err, raw)
		}
	} else {
		a.err = new(api.ErrorResponse)
		if err := json.Unmarshal(raw, a.err); err != nil || a.err.Error.Code == "" || a.err.Error.Message == "" {
			e.t.Fatalf("answer %d is not an api.ErrorResponse: %s", resp.StatusCode, raw)
		}
	}
	return a
}

// githubDelivery is a correctly signed GitHub delivery of body.
func githubDelivery(event, id string, body []byte) delivery {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/5f2a1c9")
	h.Set(HeaderGitHubEvent, event)
	h.Set(HeaderGitHubDelivery, id)
	h.Set(HeaderSignature, githubSign(testGitHubSecret, string(body)))
	return delivery{hook: GitHubHook, header: h, body: bytes.NewReader(body)}
}

// readFixture reads testdata/webhook-github-EVENT.json (with - for _), a
// payload as GitHub sends it.
func readFixture(t testing.TB, event string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "webhook-github-"+strings.ReplaceAll(event, "_", "-")+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	fixtureHead = "4f3c2a1b9e8d7c6b5a49382716f5e4d3c2b1a098"
	fixtureRepo = "cove-dev/widgets"
)

// githubFixtures are the fixture deliveries with the event name and some
// of the fields the sink must get for each.
var githubFixtures = []struct {
	event  string
	name   string
	fields map[string]string
}{
	{"check_suite", "check_suite.completed", map[string]string{
		"repo": fixtureRepo, "head_sha": fixtureHead, "conclusion": "failure", "pr": "42", "branch": "cove/session-s1a2b3"}},
	{"workflow_run", "workflow_run.completed", map[string]string{
		"repo": fixtureRepo, "head_sha": fixtureHead, "conclusion": "failure", "workflow": "CI", "pr": "42"}},
	{"pull_request_review", "pull_request_review.submitted", map[string]string{
		"repo": fixtureRepo, "pr": "42", "state": "changes_requested", "reviewer": "mira-k", "head_sha": fixtureHead}},
	{"pull_request_review_comment", "pull_request_review_comment.created", map[string]string{
		"repo": fixtureRepo, "pr": "42", "comment_id": "1867123456", "author": "mira-k"}},
	{"issue_comment", "issue_comment.created", map[string]string{
		"repo": fixtureRepo, "issue": "42", "pr": "42", "comment_id": "2509876543", "author": "mira-k"}},
	{"push", "push", map[string]string{
		"repo": fixtureRepo, "branch": "main", "head_sha": fixtureHead, "sender": "mira-k"}},
}

// wantAccepted checks a 202 for id and that the sink holds exactly want.
func (e *hookEnv) wantAccepted(a answer, id string, want ...Event) {
	e.t.Helper()
	if a.status != http.StatusAccepted {
		e.t.Fatalf("status %d, want 202: %s", a.status, a.raw)
	}
	if a.ok["ok"] != true || a.ok["id"] != id || len(a.ok) != 2 {
		e.t.Errorf(`answer %s, want {"ok":true,"id":%q}`, a.raw, id)
	}
	if got := e.sink.got(); !reflect.DeepEqual(got, want) {
		e.t.Errorf("sink got\n%+v\nwant\n%+v", got, want)
	}
	if r := e.rejectCalls(); len(r) != 0 {
		e.t.Errorf("OnReject called for an accepted delivery: %+v", r)
	}
}

// A signed GitHub delivery reaches the sink as exactly the event
// GitHubEvent makes of it, with the delivery id and the receive time.
func TestReceiverGitHubDeliveries(t *testing.T) {
	for i, fx := range githubFixtures {
		t.Run(fx.event, func(t *testing.T) {
			e := newHookEnv(t)
			body := readFixture(t, fx.event)
			id := fmt.Sprintf("7d4e1c20-cd7a-11f0-8b1e-%012x", i)
			want, err := GitHubEvent(fx.event, id, body)
			if err != nil {
				t.Fatalf("GitHubEvent: %v", err)
			}
			want.Received = testNow

			e.wantAccepted(e.send(githubDelivery(fx.event, id, body)), id, want)
			got := e.sink.got()[0]
			if got.Source != GitHubHook || got.Name != fx.name || got.ID != id {
				t.Errorf("event %s %s %s, want %s %s %s", got.Source, got.Name, got.ID, GitHubHook, fx.name, id)
			}
			for k, v := range fx.fields {
				if got.Fields[k] != v {
					t.Errorf("Fields[%s] = %q, want %q", k, got.Fields[k], v)
				}
			}
			if !bytes.Equal(got.Body, body) {
				t.Errorf("event Body is not the payload as sent")
			}
			if !strings.Contains(e.logs.String(), "hook delivery accepted") {
				t.Errorf("no log line for the accepted delivery:\n%s", e.logs)
			}
		})
	}
}

// The expression tests' GitHub fixtures, testdata/expr-github-EVENT[-ACTION[-VARIANT]].json,
// reach the sink through the receiver too, named EVENT.ACTION.
func TestReceiverExprFixtures(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "expr-github-*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		// They are part of the tree (expr_test.go reads them too): none
		// found is a broken checkout, not a reason to skip.
		t.Fatal("no testdata/expr-github-*.json: the expression tests' GitHub fixtures are missing")
	}
	for i, p := range paths {
		stem := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "expr-github-"), ".json")
		t.Run(stem, func(t *testing.T) {
			parts := strings.SplitN(stem, "-", 3)
			event, name := parts[0], parts[0]
			if len(parts) > 1 {
				name += "." + parts[1]
			}
			body, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			e := newHookEnv(t)
			id := fmt.Sprintf("e1e2e3e4-cd7c-11f0-8000-%012x", i)
			want, err := GitHubEvent(event, id, body)
			if err != nil {
				t.Fatalf("GitHubEvent: %v", err)
			}
			want.Received = testNow
			e.wantAccepted(e.send(githubDelivery(event, id, body)), id, want)
			if got := e.sink.got()[0]; got.Name != name || got.Fields["repo"] == "" {
				t.Errorf("event %s with fields %v, want %s with a repo", got.Name, got.Fields, name)
			}
		})
	}
}

// A redelivery (same X-GitHub-Delivery) reaches the sink with the same
// id, the store records the event once, and the receiver answers the
// store's duplicate as 200 duplicate.
func TestReceiverDuplicateDelivery(t *testing.T) {
	e := newHookEnv(t)
	body := readFixture(t, "check_suite")
	const id = "0f6b2e80-cd7b-11f0-9a44-5e2b1f0c7d11"
	if a := e.send(githubDelivery("check_suite", id, body)); a.status != http.StatusAccepted {
		t.Fatalf("first delivery answered %d %s, want 202", a.status, a.raw)
	}
	a := e.send(githubDelivery("check_suite", id, body))
	if a.status != http.StatusOK || a.ok["ok"] != true || a.ok["duplicate"] != true || a.ok["id"] != id {
		t.Fatalf(`answer %d %s, want 200 {"ok":true,"duplicate":true,"id":%q}`, a.status, a.raw, id)
	}
	// The receiver keeps no memory of deliveries of its own (it would
	// not survive a restart): both reached the sink, as the same event.
	if got := e.sink.got(); len(got) != 2 || got[0].ID != id || !reflect.DeepEqual(got[0], got[1]) {
		t.Errorf("sink received %+v, want the same event twice", got)
	}
	if ids := e.sink.stored(t); len(ids) != 1 || ids[0] != id {
		t.Errorf("store recorded %q, want %s once", ids, id)
	}
	if r := e.rejectCalls(); len(r) != 0 {
		t.Errorf("OnReject called for a duplicate: %+v", r)
	}
	if !strings.Contains(e.logs.String(), "hook delivery duplicate") {
		t.Errorf("no log line for the duplicate:\n%s", e.logs)
	}
	// Another delivery id of the same payload is a new event (GitHub's
	// "redeliver" keeps the id; a new event gets a new one).
	if a := e.send(githubDelivery("check_suite", id+"-2", body)); a.status != http.StatusAccepted {
		t.Errorf("a new delivery id answered %d %s, want 202", a.status, a.raw)
	}
	if ids := e.sink.stored(t); len(ids) != 2 || ids[1] != id+"-2" {
		t.Errorf("store recorded %q after a new delivery id, want %s then %s-2", ids, id, id)
	}
}

// GitHub's form option: the JSON in a "payload" field, signed over the raw
// form body.
func TestReceiverFormEncodedPayload(t *testing.T) {
	e := newHookEnv(t)
	payload := readFixture(t, "issue_comment")
	form := url.Values{"payload": {string(payload)}}.Encode()
	const id = "a1b2c3d4-cd7b-11f0-8000-000000000001"
	d := githubDelivery("issue_comment", id, []byte(form))
	d.header.Set("Content-Type", "application/x-www-form-urlencoded")
	want, err := GitHubEvent("issue_comment", id, payload)
	if err != nil {
		t.Fatal(err)
	}
	want.Received = testNow
	e.wantAccepted(e.send(d), id, want)
}

// ping is GitHub's "hook created" delivery: answered, never an event.
func TestReceiverGitHubPing(t *testing.T) {
	e := newHookEnv(t)
	body := []byte(`{"zen":"Design for failure.","hook_id":512345678,"hook":{"type":"Repository","id":512345678,"name":"web","active":true,"events":["check_suite","issue_comment"],"config":{"content_type":"json","insecure_ssl":"0","url":"https://cove.example/v1/hooks/github"}},"repository":{"id":812345678,"full_name":"cove-dev/widgets"},"sender":{"login":"mira-k","id":5123987}}`)
	a := e.send(githubDelivery("ping", "5e3f0a10-cd7b-11f0-8e1a-1c9d4f2a6b77", body))
	if a.status != http.StatusOK || a.ok["ok"] != true || a.ok["ping"] != true {
		t.Fatalf(`answer %d %s, want 200 {"ok":true,"ping":true}`, a.status, a.raw)
	}
	if n := len(e.sink.got()); n != 0 {
		t.Errorf("ping reached the sink (%d events)", n)
	}
	if r := e.rejectCalls(); len(r) != 0 {
		t.Errorf("OnReject called for a ping: %+v", r)
	}
	// A ping must be signed like anything else.
	d := githubDelivery("ping", "5e3f0a10-cd7b-11f0-8e1a-1c9d4f2a6b78", body)
	d.header.Del(HeaderSignature)
	if a := e.send(d); a.status != http.StatusUnauthorized {
		t.Errorf("unsigned ping answered %d, want 401", a.status)
	}
}

// genericDelivery is a generic-hook delivery signed over the body, or over
// ts "." body when ts is set.
func genericDelivery(hook, ts string, body []byte) delivery {
	h := http.Header{"Content-Type": {"application/json"}}
	if ts != "" {
		h.Set(HeaderTimestamp, ts)
		h.Set(HeaderSignature, githubSign(testGenericSecret, ts, ".", string(body)))
	} else {
		h.Set(HeaderSignature, githubSign(testGenericSecret, string(body)))
	}
	return delivery{hook: hook, header: h, body: bytes.NewReader(body)}
}

func wantGeneric(t *testing.T, hook, id string, body []byte) Event {
	t.Helper()
	ev, err := GenericEvent(hook, body)
	if err != nil {
		t.Fatalf("GenericEvent: %v", err)
	}
	ev.ID = id
	ev.Received = testNow
	return ev
}

// A generic hook's delivery id is X-Cove-Delivery, else X-Request-Id,
// else the SHA-256 of what was signed, so an identical replay is a
// duplicate.
func TestReceiverGenericHookDeliveryID(t *testing.T) {
	body := []byte(`{"service":"widgets","environment":"staging","status":"succeeded","sha":"4f3c2a1b9e8d"}`)
	sum := sha256.Sum256(body)
	hashID := "sha256:" + hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name   string
		header http.Header
		id     string
	}{
		{"X-Cove-Delivery", http.Header{"X-Cove-Delivery": {"dep-981"}, "X-Request-Id": {"req-1"}}, "dep-981"},
		{"X-Request-Id", http.Header{"X-Request-Id": {"req-77f1"}}, "req-77f1"},
		{"body hash", nil, hashID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHookEnv(t)
			d := genericDelivery("deploys", "", body)
			for k, v := range tc.header {
				d.header[k] = v
			}
			e.wantAccepted(e.send(d), tc.id, wantGeneric(t, "deploys", tc.id, body))

			d = genericDelivery("deploys", "", body)
			for k, v := range tc.header {
				d.header[k] = v
			}
			a := e.send(d)
			if a.status != http.StatusOK || a.ok["duplicate"] != true || a.ok["id"] != tc.id {
				t.Errorf("replay answered %d %s, want 200 duplicate of %s", a.status, a.raw, tc.id)
			}
			// The replay reached the store with the same id, which
			// recorded it once.
			if got := e.sink.got(); len(got) != 2 || got[1].ID != tc.id {
				t.Errorf("sink received %+v, want the event twice with id %s", got, tc.id)
			}
			if ids := e.sink.stored(t); len(ids) != 1 || ids[0] != tc.id {
				t.Errorf("store recorded %q after a replay, want %s once", ids, tc.id)
			}
		})
	}
}

// With X-Cove-Timestamp the signature covers "<ts>.<body>" and the
// timestamp must be within five minutes of the receiver's clock.
func TestReceiverGenericHookTimestamp(t *testing.T) {
	body := []byte(`{"alert":"disk_full","host":"build-3"}`)
	unix := func(d time.Duration) string { return strconv.FormatInt(testNow.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name   string
		ts     string
		status int
	}{
		{"now", unix(0), http.StatusAccepted},
		{"4m59s ago", unix(-4*time.Minute - 59*time.Second), http.StatusAccepted},
		{"5m ago", unix(-5 * time.Minute), http.StatusAccepted},
		{"5m ahead", unix(5 * time.Minute), http.StatusAccepted},
		{"5m1s ago", unix(-5*time.Minute - time.Second), http.StatusUnauthorized},
		{"5m1s ahead", unix(5*time.Minute + time.Second), http.StatusUnauthorized},
		{"a day ago", unix(-24 * time.Hour), http.StatusUnauthorized},
		{"far future", "9223372036854775807", http.StatusUnauthorized},
		{"not a number", "2026-11-28T13:00:00Z", http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHookEnv(t)
			a := e.send(genericDelivery("deploys", tc.ts, body))
			if a.status != tc.status {
				t.Fatalf("answered %d %s, want %d", a.status, a.raw, tc.status)
			}
			if tc.status != http.StatusAccepted {
				e.wantRejected(a, "deploys", tc.status, api.CodeUnauthorized)
				return
			}
			sum := sha256.Sum256([]byte(tc.ts + "." + string(body)))
			id := "sha256:" + hex.EncodeToString(sum[:])
			e.wantAccepted(a, id, wantGeneric(t, "deploys", id, body))
		})
	}

	// The timestamp is signed: moving it into the window, or signing only
	// the body, does not pass.
	e := newHookEnv(t)
	d := genericDelivery("deploys", unix(-time.Hour), body)
	d.header.Set(HeaderTimestamp, unix(0))
	e.wantRejected(e.send(d), "deploys", http.StatusUnauthorized, api.CodeUnauthorized)
	e = newHookEnv(t)
	d = genericDelivery("deploys", "", body)
	d.header.Set(HeaderTimestamp, unix(0))
	e.wantRejected(e.send(d), "deploys", http.StatusUnauthorized, api.CodeUnauthorized)
}

// wantRejected checks an error answer, that the sink saw nothing, that
// OnReject was called once with the status, and that a Warn (4xx) or Error
// (5xx) line was logged.
func (e *hookEnv) wantRejected(a answer, hook string, status int, code string) {
	e.t.Helper()
	if a.status != status {
		e.t.Fatalf("status %d %s, want %d", a.status, a.raw, status)
	}
	if a.err == nil || a.err.Error.Code != code {
		e.t.Errorf("answer %s, want code %q", a.raw, code)
	}
	if n := len(e.sink.got()); n != 0 {
		e.t.Errorf("sink saw %d events of a rejected delivery", n)
	}
	r := e.rejectCalls()
	if len(r) != 1 || r[0].status != status || r[0].source != hook || r[0].reason == "" {
		e.t.Errorf("OnReject calls %+v, want one for %q with status %d", r, hook, status)
	}
	level := "level=WARN"
	if status >= 500 {
		level = "level=ERROR"
	}
	logs := e.logs.String()
	if !strings.Contains(logs, level) || !strings.Contains(logs, "hook delivery rejected") || !strings.Contains(logs, "status="+strconv.Itoa(status)) {
		e.t.Errorf("no %s rejection line logged:\n%s", level, logs)
	}
}

// Every malformed, unauthenticated or misrouted delivery is refused before
// it reaches the sink.
func TestReceiverRejects(t *testing.T) {
	body := readFixture(t, "workflow_run")
	const id = "c0ffee00-cd7b-11f0-8d3e-000000000042"
	ok := func() delivery { return githubDelivery("workflow_run", id, body) }
	with := func(d delivery, f func(h http.Header)) delivery { f(d.header); return d }
	resign := func(d delivery, b []byte) delivery {
		d.body = bytes.NewReader(b)
		d.header.Set(HeaderSignature, githubSign(testGitHubSecret, string(b)))
		return d
	}
	sig := githubSign(testGitHubSecret, string(body))
	big := append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), testMaxBody)...)
	big = append(big, `"}`...)

	for _, tc := range []struct {
		name   string
		d      delivery
		status int
		code   string
	}{
		{"unsigned", with(ok(), func(h http.Header) { h.Del(HeaderSignature) }), 401, api.CodeUnauthorized},
		{"sha1 header only", with(ok(), func(h http.Header) {
			h.Del(HeaderSignature)
			h.Set("X-Hub-Signature", "sha1=2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
		}), 401, api.CodeUnauthorized},
		{"bad hex", with(ok(), func(h http.Header) { h.Set(HeaderSignature, "sha256="+strings.Repeat("zz", 32)) }), 401, api.CodeUnauthorized},
		{"short hex", with(ok(), func(h http.Header) { h.Set(HeaderSignature, sig[:len(sig)-2]) }), 401, api.CodeUnauthorized},
		{"wrong prefix", with(ok(), func(h http.Header) { h.Set(HeaderSignature, "sha1="+sig[len("sha256="):]) }), 401, api.CodeUnauthorized},
		{"bare hex", with(ok(), func(h http.Header) { h.Set(HeaderSignature, sig[len("sha256="):]) }), 401, api.CodeUnauthorized},
		{"wrong secret", with(ok(), func(h http.Header) {
			h.Set(HeaderSignature, githubSign([]byte("not-the-secret"), string(body)))
		}), 401, api.CodeUnauthorized},
		{"generic secret on github", with(ok(), func(h http.Header) {
			h.Set(HeaderSignature, githubSign(testGenericSecret, string(body)))
		}), 401, api.CodeUnauthorized},
		{"tampered body", func() delivery {
			d := ok()
			d.body = bytes.NewReader(bytes.Replace(body, []byte(`"conclusion":"failure"`), []byte(`"conclusion":"success"`), 1))
			return d
		}(), 401, api.CodeUnauthorized},
		{"malformed JSON, valid signature", resign(ok(), []byte(`{"action":"completed",`)), 400, api.CodeInvalid},
		{"empty body, valid signature", resign(ok(), nil), 400, api.CodeInvalid},
		{"oversized", resign(ok(), big), 413, api.CodeTooLarge},
		{"oversized, no Content-Length", func() delivery {
			d := resign(ok(), big)
			d.body = io.MultiReader(bytes.NewReader(big)) // hides the length: chunked
			return d
		}(), 413, api.CodeTooLarge},
		{"missing X-GitHub-Event", with(ok(), func(h http.Header) { h.Del(HeaderGitHubEvent) }), 400, api.CodeInvalid},
		{"missing X-GitHub-Delivery", with(ok(), func(h http.Header) { h.Del(HeaderGitHubDelivery) }), 400, api.CodeInvalid},
		{"delivery id with a tab", with(ok(), func(h http.Header) { h.Set(HeaderGitHubDelivery, "a\tb") }), 400, api.CodeInvalid},
		{"delivery id too long", with(ok(), func(h http.Header) { h.Set(HeaderGitHubDelivery, strings.Repeat("d", 257)) }), 400, api.CodeInvalid},
		{"unsupported content type", with(ok(), func(h http.Header) { h.Set("Content-Type", "text/plain") }), 415, api.CodeUnsupported},
		{"form without payload", func() delivery {
			d := resign(ok(), []byte("data="+url.QueryEscape(string(body))))
			d.header.Set("Content-Type", "application/x-www-form-urlencoded")
			return d
		}(), 400, api.CodeInvalid},
		{"form with malformed JSON", func() delivery {
			d := resign(ok(), []byte("payload="+url.QueryEscape(`{"action":`)))
			d.header.Set("Content-Type", "application/x-www-form-urlencoded")
			return d
		}(), 400, api.CodeInvalid},
		{"GET", func() delivery { d := ok(); d.method = http.MethodGet; d.body = nil; return d }(), 405, codeMethodNotAllowed},
		{"PUT", func() delivery { d := ok(); d.method = http.MethodPut; return d }(), 405, codeMethodNotAllowed},
		{"unknown hook", func() delivery { d := ok(); d.hook = "nope"; return d }(), 404, api.CodeNotFound},
		{"hook with an empty secret", func() delivery { d := ok(); d.hook = "empty"; return d }(), 404, api.CodeNotFound},
		{"generic hook, GitHub secret", func() delivery { d := ok(); d.hook = "deploys"; return d }(), 401, api.CodeUnauthorized},
		{"generic hook, malformed JSON", genericDelivery("deploys", "", []byte(`{"x":`)), 400, api.CodeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHookEnv(t)
			a := e.send(tc.d)
			e.wantRejected(a, tc.d.hook, tc.status, tc.code)
			if tc.status == http.StatusMethodNotAllowed && a.header.Get("Allow") != http.MethodPost {
				t.Errorf("405 with Allow %q, want POST", a.header.Get("Allow"))
			}
		})
	}
}

// A failing Sink or Secrets is a 503 that tells the sender to retry and
// keeps the cause on the server.
func TestReceiverUnavailable(t *testing.T) {
	body := readFixture(t, "push")
	cause := errors.New("sqlite: database is locked at /var/lib/cove/state.db")
	for _, tc := range []struct {
		name  string
		setup func(*hookEnv)
	}{
		{"sink fails", func(e *hookEnv) { e.sink.fail = cause }},
		{"secrets fail", func(e *hookEnv) { e.rcv.Secrets = memSecrets{fail: cause} }},
		{"no sink", func(e *hookEnv) { e.rcv.Sink = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHookEnv(t)
			tc.setup(e)
			a := e.send(githubDelivery("push", "9b1f7d3a-cd7b-11f0-8c1d-3e5f7a9b1c2d", body))
			e.wantRejected(a, GitHubHook, http.StatusServiceUnavailable, api.CodeUnavailable)
			if strings.Contains(string(a.raw), "sqlite") {
				t.Errorf("503 answer leaks the cause: %s", a.raw)
			}
			if r := e.rejectCalls(); tc.name != "no sink" && (len(r) != 1 || !strings.Contains(r[0].reason, cause.Error())) {
				t.Errorf("OnReject reason %+v does not carry the cause", r)
			}
		})
	}
}

// The zero Receiver knows no hooks and does not panic.
func TestReceiverZeroValue(t *testing.T) {
	var r Receiver
	w := httptest.NewRecorder()
	r.ServeHook(w, httptest.NewRequest(http.MethodPost, "/v1/hooks/github", strings.NewReader("{}")), GitHubHook)
	if w.Code != http.StatusNotFound {
		t.Errorf("zero Receiver answered %d, want 404", w.Code)
	}
}

func TestVerifySignature(t *testing.T) {
	secret := []byte("It's a Secret to Everybody")
	body := []byte("Hello, World!")
	// The example from GitHub's "Validating webhook deliveries".
	const good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	for _, tc := range []struct {
		name   string
		secret []byte
		header string
		want   error
	}{
		{"valid", secret, good, nil},
		{"upper-case hex", secret, "sha256=" + strings.ToUpper(good[7:]), nil},
		{"missing", secret, "", ErrNoSignature},
		{"no prefix", secret, good[7:], ErrBadSignature},
		{"sha1 prefix", secret, "sha1=" + good[7:], ErrBadSignature},
		{"prefix only", secret, "sha256=", ErrBadSignature},
		{"short", secret, good[:len(good)-1], ErrBadSignature},
		{"long", secret, good + "00", ErrBadSignature},
		{"not hex", secret, "sha256=" + strings.Repeat("g", 64), ErrBadSignature},
		{"wrong secret", []byte("another"), good, ErrSignatureMismatch},
		{"other digest", secret, "sha256=" + strings.Repeat("0", 64), ErrSignatureMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifySignature(tc.secret, body, tc.header)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("VerifySignature: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifySignature = %v, want %v", err, tc.want)
			}
			for _, other := range []error{ErrNoSignature, ErrBadSignature, ErrSignatureMismatch} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
		})
	}
	if err := VerifySignature(secret, []byte("Hello, World?"), good); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("tampered body: %v, want ErrSignatureMismatch", err)
	}
}

// nopSink accepts everything and records nothing: the receiver's own cost.
type nopSink struct{}

func (nopSink) Accept(context.Context, Event) (bool, error) { return false, nil }

// BenchmarkReceiver measures accepted GitHub deliveries per second with a
// sink that does nothing: "handler" calls ServeHook directly, "http" goes
// through a loopback HTTP server from parallel clients.
func BenchmarkReceiver(b *testing.B) {
	body := readFixture(b, "pull_request_review")
	sig := githubSign(testGitHubSecret, string(body))
	rcv := &Receiver{Secrets: memSecrets{m: map[string][]byte{GitHubHook: testGitHubSecret}}, Sink: nopSink{}}
	header := func(id string) http.Header {
		h := http.Header{}
		h.Set("Content-Type", "application/json")
		h.Set(HeaderGitHubEvent, "pull_request_review")
		h.Set(HeaderGitHubDelivery, id)
		h.Set(HeaderSignature, sig)
		return h
	}
	perSecond := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
	}

	b.Run("handler", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		var n int
		for b.Loop() {
			n++
			req := httptest.NewRequest(http.MethodPost, "/v1/hooks/github", bytes.NewReader(body))
			req.Header = header("bench-" + strconv.Itoa(n))
			w := httptest.NewRecorder()
			rcv.ServeHook(w, req, GitHubHook)
			if w.Code != http.StatusAccepted {
				b.Fatalf("answered %d: %s", w.Code, w.Body)
			}
		}
		perSecond(b)
	})

	b.Run("http", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rcv.ServeHook(w, r, GitHubHook)
		}))
		defer srv.Close()
		tr := srv.Client().Transport.(*http.Transport)
		tr.MaxIdleConnsPerHost = 64
		client := srv.Client()
		var n atomic.Int64
		b.SetBytes(int64(len(body)))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/hooks/github", bytes.NewReader(body))
				req.Header = header("bench-" + strconv.FormatInt(n.Add(1), 10))
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Errorf("answered %d", resp.StatusCode)
					return
				}
			}
		})
		perSecond(b)
	})
}
