package e2b

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/cove-dev/cove/api"
)

// The list's metadata filter as the SDK sends it: each key and value
// URL-encoded, joined as a query string, and that encoded once more.
func TestParseMetadataAsTheSDKEncodesIt(t *testing.T) {
	u, err := url.Parse("/v2/sandboxes?metadata=a%252520b%3Dc%252526d%26suite%3Dsdk")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseMetadata(u.Query().Get("metadata"))
	if want := map[string]string{"a b": "c&d", "suite": "sdk"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseMetadata = %v, %v; want %v", got, err, want)
	}
	if got, err := parseMetadata(""); err != nil || got != nil {
		t.Errorf("parseMetadata(\"\") = %v, %v; want no filter", got, err)
	}
	if _, err := parseMetadata("a=%zz"); err == nil {
		t.Error("parseMetadata of a broken encoding: no error")
	}
}

func TestGuestPath(t *testing.T) {
	for in, want := range map[string]string{
		"":             "/root",
		"~":            "/root",
		"~/a/b":        "/root/a/b",
		"rel.txt":      "/root/rel.txt",
		"a/../../etc":  "/etc",
		"/tmp//x/./y/": "/tmp/x/y",
	} {
		if got := guestPath(in); got != want {
			t.Errorf("guestPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func frame(flags byte, msg string) []byte {
	b := []byte{flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// A server stream's request: one uncompressed envelope of JSON, in
// application/connect+json; anything else is invalid_argument (or
// resource_exhausted past the size limit).
func TestReadEnvelope(t *testing.T) {
	huge := []byte{0, 0xff, 0xff, 0xff, 0xff}
	for name, c := range map[string]struct {
		ct   string
		body []byte
		code string
	}{
		"good":            {"application/connect+json", frame(0, `{"path":"/x"}`), ""},
		"unary type":      {"application/json", frame(0, `{"path":"/x"}`), codeInvalidArgument},
		"short prefix":    {"application/connect+json", []byte{0, 0}, codeInvalidArgument},
		"short message":   {"application/connect+json", frame(0, `{"path":"/x"}`)[:9], codeInvalidArgument},
		"compressed":      {"application/connect+json", frame(flagCompressed, `{}`), codeInvalidArgument},
		"end-stream flag": {"application/connect+json", frame(flagEndStream, `{}`), codeInvalidArgument},
		"not JSON":        {"application/connect+json", frame(0, `{"path":`), codeInvalidArgument},
		"too large":       {"application/connect+json", huge, codeResourceExhausted},
	} {
		r := httptest.NewRequest("POST", "/filesystem.Filesystem/WatchDir", bytes.NewReader(c.body))
		r.Header.Set("Content-Type", c.ct)
		var v struct {
			Path string `json:"path"`
		}
		e := readEnvelope(r, &v)
		switch {
		case c.code == "" && (e != nil || v.Path != "/x"):
			t.Errorf("%s: %v, %+v", name, e, v)
		case c.code != "" && (e == nil || e.Code != c.code):
			t.Errorf("%s: %v, want %s", name, e, c.code)
		}
	}
}

// A stream answers 200 in application/connect+json with each message in
// an envelope and ends with an end-of-stream envelope: {} or the error.
func TestStreamEnvelopes(t *testing.T) {
	w := httptest.NewRecorder()
	st := newStream(w)
	if err := st.send(eventMsg{Event: processEvent{Start: &startEvent{PID: 42}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.send(eventMsg{Event: processEvent{Data: &dataEvent{Stdout: []byte("hi\n")}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.end(rpcErrorf(codeNotFound, "gone")); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d, type %q", w.Code, w.Header().Get("Content-Type"))
	}
	want := string(frame(0, `{"event":{"start":{"pid":42}}}`)) + string(frame(0, `{"event":{"data":{"stdout":"aGkK"}}}`)) +
		string(frame(flagEndStream, `{"error":{"code":"not_found","message":"gone"}}`))
	if got := w.Body.String(); got != want {
		t.Errorf("stream:\n%q\nwant\n%q", got, want)
	}
}

func TestEndEvents(t *testing.T) {
	for _, c := range []struct {
		code   int
		signal string
		want   endEvent
	}{
		{0, "", endEvent{ExitCode: 0, Exited: true, Status: "exit status 0"}},
		{3, "", endEvent{ExitCode: 3, Exited: true, Status: "exit status 3", Error: "exit status 3"}},
		{137, "KILL", endEvent{ExitCode: -1, Status: "signal: killed", Error: "signal: killed"}},
	} {
		got := endOf(apiExit(c.code, c.signal))
		if *got != c.want {
			t.Errorf("endOf(%d, %q) = %+v, want %+v", c.code, c.signal, *got, c.want)
		}
	}
}

func TestSandboxRouting(t *testing.T) {
	for host, want := range map[string]string{
		"49983-abc-123.cove.example:8080": "abc-123",
		"cove.example":                    "",
		"127.0.0.1:49983":                 "",
	} {
		r := httptest.NewRequest("GET", "/health", nil)
		r.Host = host
		if got := sandboxOf(r); got != want {
			t.Errorf("sandboxOf(host %s) = %q, want %q", host, got, want)
		}
	}
	r := httptest.NewRequest("GET", "/health", strings.NewReader(""))
	r.Header.Set("E2b-Sandbox-Id", "s1")
	if got := sandboxOf(r); got != "s1" {
		t.Errorf("sandboxOf(header) = %q", got)
	}
}

func apiExit(code int, signal string) api.ExitStatus {
	return api.ExitStatus{Code: code, Signal: signal}
}
