package e2b_test

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/e2b"
)

// Clients that break the rules on purpose: envelopes whose length lies,
// messages past the limit, uploads past --e2b-max-upload. Each is refused
// alone, and nothing is left half done. (A stream nobody reads is held
// in TestE2BSDK/BadInput, cmd/cove, on a real guest: the fake guest
// holds its lock while it writes a command's output, so it cannot show
// a command held back by its stream.)

// rawStart posts body as a Start stream's request and returns the
// status and the whole answer.
func (e *fakeEnv) rawStart(sbx sandboxAnswer, body []byte) (int, []byte) {
	e.t.Helper()
	return e.envd(sbx, "POST", "/process.Process/Start", "application/connect+json", string(body))
}

// endCode is the code of the end-of-stream envelope that ends answer, ""
// for a clean end or no such envelope.
func endCode(answer []byte) string {
	for len(answer) >= 5 {
		n := binary.BigEndian.Uint32(answer[1:5])
		if uint64(len(answer)-5) < uint64(n) {
			return ""
		}
		if answer[0]&2 != 0 {
			var end struct {
				Error struct {
					Code string `json:"code"`
				} `json:"error"`
			}
			_ = json.Unmarshal(answer[5:5+n], &end)
			return end.Error.Code
		}
		answer = answer[5+n:]
	}
	return ""
}

// withLength is payload in an envelope that announces n bytes.
func withLength(n uint32, payload string) []byte {
	b := []byte{0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, payload...)
}

func (e *fakeEnv) processCount(sbx sandboxAnswer) int {
	e.t.Helper()
	st, b := e.envd(sbx, "POST", "/process.Process/List", "application/json", `{}`)
	var list struct {
		Processes []json.RawMessage `json:"processes"`
	}
	if err := json.Unmarshal(b, &list); st != http.StatusOK || err != nil {
		e.t.Fatalf("List: %d %s (%v)", st, b, err)
	}
	return len(list.Processes)
}

// TestFakeEnvelopeLengthLies: a Start whose envelope announces more
// bytes than follow, fewer than the message has, or more than the limit,
// and unary messages past the limit, are refused with the Connect codes
// the SDK maps (invalid_argument, resource_exhausted); nothing runs, and
// the sandbox answers the next call as before.
func TestFakeEnvelopeLengthLies(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	msg := `{"process":{"cmd":"touch","args":["/tmp/ran"]}}`
	for name, c := range map[string]struct {
		body []byte
		code string
	}{
		"more announced than sent":    {withLength(uint32(len(msg)+100), msg), "invalid_argument"},
		"fewer announced than sent":   {withLength(uint32(len(msg)-5), msg), "invalid_argument"},
		"none announced":              {withLength(0, msg), "invalid_argument"},
		"4 GiB announced":             {withLength(0xffffffff, msg), "resource_exhausted"},
		"just past the limit, unsent": {withLength(16<<20+1, msg), "resource_exhausted"},
		"a 17 MiB message, sent":      {withLength(17<<20, `{"process":{"cmd":"`+strings.Repeat("x", 17<<20-21)+`"}}`), "resource_exhausted"},
	} {
		st, b := e.rawStart(sbx, c.body)
		if got := endCode(b); st != http.StatusOK || got != c.code {
			t.Errorf("%s: %d, end code %q (%.200q); want a stream ended with %s", name, st, got, b, c.code)
		}
	}
	// Unary calls: a body past the limit, of JSON or not.
	huge := `{"path":"/tmp/` + strings.Repeat("y", 17<<20) + `"}`
	e.rpcCode("a 17 MiB Stat", sbx, "Stat", huge, http.StatusTooManyRequests, "resource_exhausted")
	e.rpcCode("a 17 MiB MakeDir of no JSON", sbx, "MakeDir", strings.Repeat("{", 17<<20), http.StatusTooManyRequests, "resource_exhausted")
	e.rpcCode("nothing ran", sbx, "Stat", `{"path":"/tmp/ran"}`, http.StatusNotFound, "not_found")
	if n := e.processCount(sbx); n != 0 {
		t.Errorf("%d processes after refused Starts, want none", n)
	}
	// The sandbox is served as before.
	if st, b := e.rawStart(sbx, withLength(uint32(len(msg)), msg)); st != http.StatusOK || endCode(b) != "" {
		t.Fatalf("a good Start after: %d %q", st, b)
	}
	if st, b := e.rpc(sbx, "Stat", `{"path":"/tmp/ran"}`); st != http.StatusOK {
		t.Errorf("the good Start's file: %d %s", st, b)
	}
}

// TestFakeUploadPastTheLimit: uploads past --e2b-max-upload, multipart
// and octet-stream, with a Content-Length or chunked (no length to refuse
// them by up front), or gzip that inflates past it, are 413 and leave no
// file (as root: the guest agent writes a file whole or not at all).
func TestFakeUploadPastTheLimit(t *testing.T) {
	e := newFakeEnv(t)
	const limit = 64 << 10
	e.replaceE2B(func(c *e2b.Config) { c.MaxFileBytes = limit })
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	big := bytes.Repeat([]byte("z"), limit+1)
	multipartBody := func(name string, data []byte) (string, []byte) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		fw, err := mw.CreateFormFile("file", name)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(data)
		mw.Close()
		return mw.FormDataContentType(), b.Bytes()
	}
	upload := func(path, ct string, body []byte, chunked bool, hdr ...string) (int, []byte) {
		t.Helper()
		var r io.Reader = bytes.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // no length known: sent chunked
		}
		return e.envdWith(sbx, "POST", "/files"+path, ct, r, hdr...)
	}
	mpCT, mp := multipartBody("/tmp/up/multi", big)
	mp2CT, mp2 := multipartBody("/tmp/up/multi-path", big)
	for name, c := range map[string]struct {
		path, ct string
		body     []byte
		chunked  bool
		file     string
	}{
		"octet-stream with a length": {"?path=/tmp/up/octet", "application/octet-stream", big, false, "/tmp/up/octet"},
		"octet-stream chunked":       {"?path=/tmp/up/octet-chunked", "application/octet-stream", big, true, "/tmp/up/octet-chunked"},
		"multipart with a length":    {"", mpCT, mp, false, "/tmp/up/multi"},
		"multipart chunked":          {"", mpCT, mp, true, "/tmp/up/multi"},
		"multipart to ?path=":        {"?path=/tmp/up/multi-path", mp2CT, mp2, true, "/tmp/up/multi-path"},
	} {
		st, b := upload(c.path, c.ct, c.body, c.chunked)
		var eb struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(b, &eb); st != http.StatusRequestEntityTooLarge || err != nil || eb.Code != 413 || eb.Message == "" {
			t.Errorf("%s: %d %q, want 413 {code, message}", name, st, b)
		}
		e.rpcCode(name+": no file", sbx, "Stat", `{"path":"`+c.file+`"}`, http.StatusNotFound, "not_found")
	}
	// A small gzip body that inflates past the limit: the limit holds
	// for the file written.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("z"), 64*limit))
	zw.Close()
	if gz.Len() >= limit {
		t.Fatalf("the gzip body is %d bytes, not under the limit", gz.Len())
	}
	if st, b := upload("?path=/tmp/up/bomb", "application/octet-stream", gz.Bytes(), false, "Content-Encoding", "gzip"); st != http.StatusRequestEntityTooLarge {
		t.Errorf("a gzip body inflating to %d bytes: %d %s, want 413", 64*limit, st, b)
	}
	e.rpcCode("the inflated upload: no file", sbx, "Stat", `{"path":"/tmp/up/bomb"}`, http.StatusNotFound, "not_found")
	// At the limit it is taken.
	if st, b := upload("?path=/tmp/up/fits", "application/octet-stream", big[:limit], true); st != http.StatusOK {
		t.Errorf("an upload at the limit: %d %s", st, b)
	}
	if st, b := e.envd(sbx, "GET", "/files?path=/tmp/up/fits", "", ""); st != http.StatusOK || len(b) != limit {
		t.Errorf("the upload at the limit: %d, %d bytes", st, len(b))
	}
}
