package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cove-dev/cove/api"
)

// Client configuration defaults.
const (
	defaultAddr = "http://127.0.0.1:7070"
	defaultHome = "/var/lib/cove"
	tokenFile   = "admin.token"
)

// client returns an API client configured from the environment.
func (c *cli) client() (*api.Client, error) {
	addr, token, err := clientConfig(c.getenv)
	if err != nil {
		return nil, err
	}
	return api.NewClient(addr, token), nil
}

// clientAddr is the server address: COVE_ADDR (default defaultAddr),
// http:// when it names no scheme.
func clientAddr(getenv func(string) string) string {
	addr := getenv("COVE_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return addr
}

// clientConfig reads the server address (clientAddr) and the token, the
// first of: COVE_TOKEN; what 'cove login' saved for that address (an ID
// token renewed first if it is near its expiry); the admin token the
// server wrote to $COVE_HOME/admin.token.
func clientConfig(getenv func(string) string) (addr, token string, err error) {
	addr = clientAddr(getenv)
	if token = strings.TrimSpace(getenv("COVE_TOKEN")); token != "" {
		return addr, token, nil
	}
	if token, ok, err := savedToken(getenv, addr); err != nil || ok {
		return addr, token, err
	}
	home := getenv("COVE_HOME")
	if home == "" {
		home = defaultHome
	}
	p := filepath.Join(home, tokenFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("no token: run 'cove login', set COVE_TOKEN, or start the server (it writes %s)", p)
	}
	if err != nil {
		return "", "", fmt.Errorf("read token: %w (set COVE_TOKEN instead?)", err)
	}
	if token = strings.TrimSpace(string(b)); token == "" {
		return "", "", fmt.Errorf("no token: %s is empty; set COVE_TOKEN", p)
	}
	return addr, token, nil
}
