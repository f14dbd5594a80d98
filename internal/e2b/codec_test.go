package e2b_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"google.golang.org/protobuf/proto"

	fspb "github.com/cove-dev/cove/internal/e2b/envdpb/filesystem"
)

// TestFakeBinaryCodec calls envd's unary RPCs with the Connect protocol's
// binary codec (application/proto), which comes with cove's generated
// envd types: the answers are protobuf in application/proto, errors are
// JSON whatever the codec, and a body that is not the message is
// invalid_argument.
func TestFakeBinaryCodec(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	call := func(method string, req, resp proto.Message) (int, []byte) {
		t.Helper()
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		st, body := e.envd(sbx, "POST", "/filesystem.Filesystem/"+method, "application/proto", string(b))
		if st == http.StatusOK {
			if err := proto.Unmarshal(body, resp); err != nil {
				t.Fatalf("%s: answer is not a %T: %v", method, resp, err)
			}
		}
		return st, body
	}
	mk := &fspb.MakeDirResponse{}
	if st, b := call("MakeDir", &fspb.MakeDirRequest{Path: "/tmp/bin/dir"}, mk); st != http.StatusOK || mk.GetEntry().GetType() != fspb.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("MakeDir: %d %q, %v", st, b, mk)
	}
	stat := &fspb.StatResponse{}
	if st, b := call("Stat", &fspb.StatRequest{Path: "/tmp/bin/dir"}, stat); st != http.StatusOK ||
		stat.GetEntry().GetPath() != "/tmp/bin/dir" || stat.GetEntry().GetName() != "dir" || stat.GetEntry().GetModifiedTime() == nil {
		t.Fatalf("Stat: %d %q, %v", st, b, stat)
	}
	ls := &fspb.ListDirResponse{}
	if st, b := call("ListDir", &fspb.ListDirRequest{Path: "/tmp/bin"}, ls); st != http.StatusOK || len(ls.Entries) != 1 || ls.Entries[0].Name != "dir" {
		t.Fatalf("ListDir: %d %q, %v", st, b, ls)
	}
	// Errors: JSON {code, message}, whatever the codec.
	for what, c := range map[string]struct {
		method, body string
		status       int
		code         string
	}{
		"missing file": {"Stat", string(mustMarshal(t, &fspb.StatRequest{Path: "/tmp/bin/none"})), http.StatusNotFound, "not_found"},
		"not protobuf": {"Stat", "\xff\xff\xff", http.StatusBadRequest, "invalid_argument"},
	} {
		st, b := e.envd(sbx, "POST", "/filesystem.Filesystem/"+c.method, "application/proto", c.body)
		var eb struct {
			Code string `json:"code"`
		}
		if err := json.Unmarshal(b, &eb); err != nil || st != c.status || eb.Code != c.code {
			t.Errorf("%s: %d %q, want %d with code %s", what, st, b, c.status, c.code)
		}
	}
	// An unknown Content-Type is refused, and changes nothing.
	if st, b := e.envd(sbx, "POST", "/filesystem.Filesystem/MakeDir", "text/plain", `{"path":"/tmp/bin/other"}`); st != http.StatusBadRequest {
		t.Errorf("MakeDir in text/plain: %d %s", st, b)
	}
	e.rpcCode("after the refused MakeDir", sbx, "Stat", `{"path":"/tmp/bin/other"}`, http.StatusNotFound, "not_found")
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
