package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientConfig protects where the CLI finds its server and token.
func TestClientConfig(t *testing.T) {
	withToken := t.TempDir()
	if err := os.WriteFile(filepath.Join(withToken, "admin.token"), []byte("filetok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "admin.token"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := t.TempDir()

	tests := []struct {
		name      string
		env       map[string]string
		wantAddr  string
		wantToken string
		wantAdmin bool // the token is the admin token, read from the file
		wantErr   string
	}{
		{name: "env token", env: map[string]string{"COVE_TOKEN": "envtok", "COVE_HOME": withToken}, wantAddr: defaultAddr, wantToken: "envtok"},
		{name: "token file", env: map[string]string{"COVE_HOME": withToken}, wantAddr: defaultAddr, wantToken: "filetok", wantAdmin: true},
		{name: "addr", env: map[string]string{"COVE_TOKEN": "x", "COVE_ADDR": "https://cove.example:8443"}, wantAddr: "https://cove.example:8443", wantToken: "x"},
		{name: "addr without scheme", env: map[string]string{"COVE_TOKEN": "x", "COVE_ADDR": "10.0.0.1:7070"}, wantAddr: "http://10.0.0.1:7070", wantToken: "x"},
		{name: "no token", env: map[string]string{"COVE_HOME": missing},
			wantErr: "no token: run 'cove login', set COVE_TOKEN, or start the server (it writes " + filepath.Join(missing, "admin.token") + ")"},
		{name: "empty token file", env: map[string]string{"COVE_HOME": empty}, wantErr: "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := clientConfig(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || conf.addr != tt.wantAddr || conf.token != tt.wantToken {
				t.Errorf("got %q, %q, %v; want %q, %q", conf.addr, conf.token, err, tt.wantAddr, tt.wantToken)
			}
			if want := filepath.Join(tt.env["COVE_HOME"], "admin.token"); (conf.adminFile == want) != tt.wantAdmin || !tt.wantAdmin && conf.adminFile != "" {
				t.Errorf("adminFile %q; want it set (to %s): %v", conf.adminFile, want, tt.wantAdmin)
			}
		})
	}
}
