package e2b_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestFakeUnknownUser: a user the guest lacks is unauthenticated, on RPCs
// (Authorization: Basic) and /files (?username=), and changes nothing;
// "user", which E2B's sandboxes have, is made on first use, and where
// the guest cannot (the fake guest has no useradd) it is unknown too.
// Root, named or not, is served as before.
func TestFakeUnknownUser(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	if st, b := e.envd(sbx, "POST", "/files?path=/etc/passwd", "application/octet-stream", "root:x:0:0:root:/root:/bin/sh\n"); st != http.StatusOK {
		t.Fatalf("write /etc/passwd: %d %s", st, b)
	}
	rpcAs := func(user, method, body string) (int, string) {
		t.Helper()
		st, b := e.envdWith(sbx, "POST", "/filesystem.Filesystem/"+method, "application/json", strings.NewReader(body), basicUser(user)...)
		var eb struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(b, &eb)
		return st, eb.Code
	}
	for _, user := range []string{"nosuchuser", "user", "-rf"} {
		if st, code := rpcAs(user, "MakeDir", `{"path":"/tmp/by-`+user+`"}`); st != http.StatusUnauthorized || code != "unauthenticated" {
			t.Errorf("MakeDir as %s: %d %s, want 401 unauthenticated", user, st, code)
		}
		if st, b := e.envd(sbx, "GET", "/files?path=/etc/passwd&username="+user, "", ""); st != http.StatusUnauthorized {
			t.Errorf("read as %s: %d %s, want 401", user, st, b)
		}
		if st, b := e.envd(sbx, "POST", "/files?path=/tmp/by-"+user+"&username="+user, "application/octet-stream", "x"); st != http.StatusUnauthorized {
			t.Errorf("write as %s: %d %s, want 401", user, st, b)
		}
		e.rpcCode("after the refusals", sbx, "Stat", `{"path":"/tmp/by-`+user+`"}`, http.StatusNotFound, "not_found")
	}
	// A malformed Authorization names nobody.
	req, err := http.NewRequest("POST", e.url+"/filesystem.Filesystem/Stat", strings.NewReader(`{"path":"/tmp"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("E2b-Sandbox-Id", sbx.SandboxID)
	req.Header.Set("X-Access-Token", sbx.EnvdAccessToken)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer not-a-user")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Stat with a Bearer Authorization: %d, want 401", resp.StatusCode)
	}
	if st, code := rpcAs("root", "MakeDir", `{"path":"/tmp/by-root"}`); st != http.StatusOK {
		t.Errorf("MakeDir as root: %d %s", st, code)
	}
	if st, b := e.envd(sbx, "GET", "/files?path=/etc/passwd&username=root", "", ""); st != http.StatusOK || !strings.HasPrefix(string(b), "root:") {
		t.Errorf("read as root: %d %s", st, b)
	}
}

// TestFakeDefaultUser: a call that names no user runs as "user" where the
// guest has it, as E2B's envd does (relative paths start at its home),
// and as root where it does not; "root", named, stays root.
func TestFakeDefaultUser(t *testing.T) {
	e := newFakeEnv(t)
	var sbx sandboxAnswer
	e.ok(&sbx, http.StatusCreated, e.alice, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":600}`)
	for _, p := range []string{"/root/where", "/home/user/where"} {
		if st, b := e.envd(sbx, "POST", "/files?path="+p+"&username=root", "application/octet-stream", p); st != http.StatusOK {
			t.Fatalf("write %s: %d %s", p, st, b)
		}
	}
	// Stat reads as root (the fake guest has no head to read as the
	// user with), in the home of the user the call runs as.
	read := func(what, user, want string) {
		t.Helper()
		var hdr []string
		if user != "" {
			hdr = basicUser(user)
		}
		st, b := e.envdWith(sbx, "POST", "/filesystem.Filesystem/Stat", "application/json", strings.NewReader(`{"path":"where"}`), hdr...)
		var got struct {
			Entry struct {
				Path string `json:"path"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(b, &got); st != http.StatusOK || err != nil || got.Entry.Path != want {
			t.Errorf("%s: Stat where: %d %s (%v), want %s", what, st, b, err, want)
		}
	}
	read("a guest without /etc/passwd", "", "/root/where")
	if st, b := e.envd(sbx, "POST", "/files?path=/etc/passwd&username=root", "application/octet-stream", "root:x:0:0:root:/root:/bin/sh\n"); st != http.StatusOK {
		t.Fatalf("write /etc/passwd: %d %s", st, b)
	}
	read("a guest without user", "", "/root/where")
	if st, b := e.envd(sbx, "POST", "/files?path=/etc/passwd&username=root", "application/octet-stream",
		"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n"); st != http.StatusOK {
		t.Fatalf("write /etc/passwd: %d %s", st, b)
	}
	read("a guest with user", "", "/home/user/where")
	read("root named", "root", "/root/where")
}

// basicUser is the Authorization header, as name and value, by which an
// RPC names its user.
func basicUser(name string) []string {
	return []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"))}
}
