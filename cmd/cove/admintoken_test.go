package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// The admin token is made once, 0600, and read back at each start; a
// file left empty (an earlier server killed between creating and writing
// it) does not stop the server from starting: a new token is made.
func TestAdminTokenFile(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, "admin.token")
	tok, err := adminToken(path)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(tok) {
		t.Fatalf("admin token %q: want 32 random bytes in hex", tok)
	}
	wantFile := func(tok string) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("admin.token has mode %04o, want 0600", fi.Mode().Perm())
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != tok+"\n" {
			t.Errorf("admin.token holds %q (%v), want the token and a newline", b, err)
		}
		if left, _ := filepath.Glob(filepath.Join(home, ".key-*")); len(left) != 0 {
			t.Errorf("temporary files left in the home: %v", left)
		}
	}
	wantFile(tok)
	again, err := adminToken(path)
	if err != nil || again != tok {
		t.Fatalf("second start: %q, %v; want the same token", again, err)
	}

	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, err := adminToken(path)
	if err != nil {
		t.Fatalf("start with an empty admin.token: %v", err)
	}
	if fresh == tok || fresh == "" {
		t.Fatalf("token after an empty file: %q", fresh)
	}
	wantFile(fresh)
}
