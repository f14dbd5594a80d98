package e2b

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cove-dev/cove/api"
	fspb "github.com/cove-dev/cove/internal/e2b/envdpb/filesystem"
	processpb "github.com/cove-dev/cove/internal/e2b/envdpb/process"
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

// A server stream's request: one uncompressed envelope of JSON in
// application/connect+json, or of protobuf in application/connect+proto;
// anything else is invalid_argument (or resource_exhausted past the size
// limit).
func TestReadEnvelope(t *testing.T) {
	huge := []byte{0, 0xff, 0xff, 0xff, 0xff}
	bin, err := proto.Marshal(&fspb.WatchDirRequest{Path: "/x", Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		ct   string
		body []byte
		code string
	}{
		"good":            {"application/connect+json", frame(0, `{"path":"/x","recursive":true}`), ""},
		"unknown field":   {"application/connect+json", frame(0, `{"path":"/x","recursive":true,"newer":1}`), ""},
		"binary":          {"application/connect+proto", frame(0, string(bin)), ""},
		"unary type":      {"application/json", frame(0, `{"path":"/x"}`), codeInvalidArgument},
		"short prefix":    {"application/connect+json", []byte{0, 0}, codeInvalidArgument},
		"short message":   {"application/connect+json", frame(0, `{"path":"/x"}`)[:9], codeInvalidArgument},
		"compressed":      {"application/connect+json", frame(flagCompressed, `{}`), codeInvalidArgument},
		"end-stream flag": {"application/connect+json", frame(flagEndStream, `{}`), codeInvalidArgument},
		"not JSON":        {"application/connect+json", frame(0, `{"path":`), codeInvalidArgument},
		"wrong type":      {"application/connect+json", frame(0, `{"path":7}`), codeInvalidArgument},
		"not protobuf":    {"application/connect+proto", frame(0, "\xff\xff"), codeInvalidArgument},
		"too large":       {"application/connect+json", huge, codeResourceExhausted},
	} {
		r := httptest.NewRequest("POST", "/filesystem.Filesystem/WatchDir", bytes.NewReader(c.body))
		r.Header.Set("Content-Type", c.ct)
		v := &fspb.WatchDirRequest{}
		e := readEnvelope(r, newStream(httptest.NewRecorder()), v)
		switch {
		case c.code == "" && (e != nil || v.Path != "/x" || !v.Recursive):
			t.Errorf("%s: %v, %v", name, e, v)
		case c.code != "" && (e == nil || e.Code != c.code):
			t.Errorf("%s: %v, want %s", name, e, c.code)
		}
	}
}

// envelopes splits a stream's body into its envelopes.
func envelopes(t *testing.T, b []byte) (flags []byte, msgs [][]byte) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("a stream ends in %d bytes, not an envelope", len(b))
		}
		n := binary.BigEndian.Uint32(b[1:5])
		if uint32(len(b)-5) < n {
			t.Fatalf("an envelope announces %d bytes, %d follow", n, len(b)-5)
		}
		flags, msgs = append(flags, b[0]), append(msgs, b[5:5+n])
		b = b[5+n:]
	}
	return flags, msgs
}

func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return v
}

var (
	startPID42 = &processpb.StartResponse{Event: &processpb.ProcessEvent{Event: &processpb.ProcessEvent_Start{Start: &processpb.ProcessEvent_StartEvent{Pid: 42}}}}
	stdoutHi   = &processpb.StartResponse{Event: &processpb.ProcessEvent{Event: &processpb.ProcessEvent_Data{
		Data: &processpb.ProcessEvent_DataEvent{Output: &processpb.ProcessEvent_DataEvent_Stdout{Stdout: []byte("hi\n")}}}}}
)

// A stream answers 200 in application/connect+json with each message in
// an envelope, as protojson names it (what the SDK reads), and ends with
// an end-of-stream envelope: {} or the error.
func TestStreamEnvelopes(t *testing.T) {
	w := httptest.NewRecorder()
	st := newStream(w)
	for _, m := range []proto.Message{startPID42, stdoutHi} {
		if err := st.send(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.end(rpcErrorf(codeNotFound, "gone")); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d, type %q", w.Code, w.Header().Get("Content-Type"))
	}
	flags, msgs := envelopes(t, w.Body.Bytes())
	want := []string{`{"event":{"start":{"pid":42}}}`, `{"event":{"data":{"stdout":"aGkK"}}}`, `{"error":{"code":"not_found","message":"gone"}}`}
	if !bytes.Equal(flags, []byte{0, 0, flagEndStream}) || len(msgs) != len(want) {
		t.Fatalf("envelopes flagged %v: %q", flags, msgs)
	}
	for i := range want {
		if got := jsonValue(t, msgs[i]); !reflect.DeepEqual(got, jsonValue(t, []byte(want[i]))) {
			t.Errorf("envelope %d = %s, want %s", i, msgs[i], want[i])
		}
	}
}

// A stream asked in application/connect+proto answers in it: protobuf
// messages, and the end-of-stream envelope in JSON (the protocol's rule).
func TestStreamEnvelopesBinary(t *testing.T) {
	w := httptest.NewRecorder()
	st := newStream(w)
	r := httptest.NewRequest("POST", "/process.Process/Connect", bytes.NewReader(frame(0, "\x0a\x02\x08\x2a"))) // process{pid:42}
	r.Header.Set("Content-Type", "application/connect+proto")
	req := &processpb.ConnectRequest{}
	if e := readEnvelope(r, st, req); e != nil || req.GetProcess().GetPid() != 42 {
		t.Fatalf("readEnvelope: %v, %v", e, req)
	}
	if err := st.send(startPID42); err != nil {
		t.Fatal(err)
	}
	if err := st.end(nil); err != nil {
		t.Fatal(err)
	}
	if w.Header().Get("Content-Type") != "application/connect+proto" {
		t.Fatalf("type %q", w.Header().Get("Content-Type"))
	}
	flags, msgs := envelopes(t, w.Body.Bytes())
	if !bytes.Equal(flags, []byte{0, flagEndStream}) || string(msgs[1]) != "{}" {
		t.Fatalf("envelopes flagged %v: %q", flags, msgs)
	}
	got := &processpb.StartResponse{}
	if err := proto.Unmarshal(msgs[0], got); err != nil || !proto.Equal(got, startPID42) {
		t.Errorf("message = %v, %v; want %v", got, err, startPID42)
	}
}

func TestEndEvents(t *testing.T) {
	for _, c := range []struct {
		code   int
		signal string
		want   string
	}{
		{0, "", `{"exited":true,"status":"exit status 0"}`},
		{3, "", `{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}`},
		{137, "KILL", `{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}`},
	} {
		b, err := protojson.Marshal(endOf(apiExit(c.code, c.signal)))
		if err != nil {
			t.Fatal(err)
		}
		if got := jsonValue(t, b); !reflect.DeepEqual(got, jsonValue(t, []byte(c.want))) {
			t.Errorf("endOf(%d, %q) = %s, want %s", c.code, c.signal, b, c.want)
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

// CPU use is the busy share of the jiffies between two reads of
// /proc/stat: idle and iowait are not busy, guest time is within user.
func TestCPUTimes(t *testing.T) {
	b1, t1, n := cpuTimes([]byte("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 100 0 50 800 50 0 0 0 30 0\n"))
	b2, t2, _ := cpuTimes([]byte("cpu  160 0 70 820 50 0 0 0 30 0\ncpu0 160 0 70 820 50 0 0 0 30 0\n"))
	if n != 1 || b1 != 150 || t1 != 1000 || b2-b1 != 80 || t2-t1 != 100 {
		t.Errorf("cpuTimes: busy %d→%d, total %d→%d, %d CPUs; want 150→230, 1000→1100, 1", b1, b2, t1, t2, n)
	}
	mem := meminfoBytes([]byte("MemTotal:  2048 kB\nHugePages_Total:  3\nbroken line\n"))
	if mem["MemTotal"] != 2048*1024 || mem["HugePages_Total"] != 3 {
		t.Errorf("meminfoBytes = %v", mem)
	}
}

// The user a request names: RPCs in Authorization: Basic
// base64("USER:"), /files in ?username=.
func TestRequestedUser(t *testing.T) {
	for _, c := range []struct {
		path, auth, want string
		bad              bool
	}{
		{"/process.Process/Start", "", "", false},
		{"/process.Process/Start", "Basic dXNlcjo=", "user", false}, // "user:"
		{"/filesystem.Filesystem/Stat", "Basic cm9vdDo=", "root", false},
		{"/process.Process/List", "Bearer x", "", true},
		{"/process.Process/List", "Basic !!!", "", true},
		{"/files?path=/x&username=user", "", "user", false},
		{"/files?path=/x", "Basic dXNlcjo=", "", false}, // /files reads only ?username=
	} {
		r := httptest.NewRequest("POST", c.path, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		got, err := requestedUser(r)
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("%s with %q: %q, %v; want %q (error: %v)", c.path, c.auth, got, err, c.want, c.bad)
		}
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nodd:x:a:b::/:/bin/sh\n")
	if u, ok := lookupPasswd(passwd, "user"); !ok || u != (guestUser{Name: "user", UID: 1000, GID: 1000, Home: "/home/user"}) {
		t.Errorf("lookupPasswd(user) = %+v, %v", u, ok)
	}
	for _, name := range []string{"odd", "nobody", "us"} {
		if u, ok := lookupPasswd(passwd, name); ok {
			t.Errorf("lookupPasswd(%s) = %+v", name, u)
		}
	}
	for name, want := range map[string]bool{"user": true, "a.b_c-1": true, "-rf": false, "a/b": false, "": false, "x y": false} {
		if validUserName(name) != want {
			t.Errorf("validUserName(%q) = %v", name, !want)
		}
	}
	if got := execUser(guestUser{Name: "user", UID: 1000, GID: 1001}); got != "user" {
		t.Errorf("execUser(user) = %q", got)
	}
	if got := execUser(rootUser); got != "" {
		t.Errorf("execUser(root) = %q", got)
	}
}
