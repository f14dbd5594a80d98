package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A join token file gives its first line less the newline; an empty one,
// or one that group or others may read, is refused with the reason.
func TestReadJoinTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := readJoinTokenFile(write("ok", "s3cret token\n", 0o600)); err != nil || tok != "s3cret token" {
		t.Errorf("0600 file: %q, %v; want the token without its newline", tok, err)
	}
	if tok, err := readJoinTokenFile(write("crlf", "abc\r\n", 0o400)); err != nil || tok != "abc" {
		t.Errorf("CRLF file: %q, %v", tok, err)
	}
	for name, tc := range map[string]struct {
		body string
		mode os.FileMode
		want string
	}{
		"empty":          {"", 0o600, "is empty"},
		"newline only":   {"\n", 0o600, "is empty"},
		"group-readable": {"abc\n", 0o640, "chmod 600"},
		"world-readable": {"abc\n", 0o644, "chmod 600"},
	} {
		if _, err := readJoinTokenFile(write(strings.ReplaceAll(name, " ", "-"), tc.body, tc.mode)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error saying %q", name, err, tc.want)
		}
	}
	if _, err := readJoinTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file is no error")
	}
}

// 'cove node' without --server is a usage error; one with a join token
// and a join token file too is refused.
func TestNodeAgentFlags(t *testing.T) {
	if _, err := nodeJoinToken(nodeAgentConfig{JoinToken: "a", JoinTokenFile: "f"}); err == nil {
		t.Error("--join-token and --join-token-file together are accepted")
	}
	t.Setenv("COVE_NODE_SERVER", "")
	cmd := newNodeCmd(&cli{})
	cmd.SetArgs([]string{})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--server is required") {
		t.Errorf("cove node without --server: %v", err)
	}
}

// 'cove node' takes the session side's flags, the ones 'cove server'
// has (a session-serving node is configured as a server is), and keeps
// the names of its own.
func TestNodeAgentSessionFlags(t *testing.T) {
	node, server := newNodeCmd(&cli{}).Flags(), newServerCmd().Flags()
	for _, name := range []string{"db", "objects", "secret-key", "policy", "node-grace", "stop-on-exit", "home", "accel", "qemu-user", "cgroup-root"} {
		n, s := node.Lookup(name), server.Lookup(name)
		if n == nil || s == nil || n.Usage != s.Usage || n.DefValue != s.DefValue {
			t.Errorf("--%s: cove node %+v, cove server %+v; want the same flag on both", name, n, s)
		}
	}
	for _, name := range []string{"server", "join-token", "join-token-file", "heartbeat", "name", "labels"} {
		if node.Lookup(name) == nil {
			t.Errorf("cove node has no --%s", name)
		}
	}
	for _, name := range []string{"listen", "advertise-url", "e2b-listen"} {
		if node.Lookup(name) != nil {
			t.Errorf("cove node has --%s: it opens no port", name)
		}
	}
}
