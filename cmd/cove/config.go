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

// clientConfig reads the server address and token from the environment:
// COVE_ADDR (default defaultAddr), and COVE_TOKEN or else the token the
// server wrote to $COVE_HOME/admin.token.
func clientConfig(getenv func(string) string) (addr, token string, err error) {
	addr = getenv("COVE_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	if token = strings.TrimSpace(getenv("COVE_TOKEN")); token != "" {
		return addr, token, nil
	}
	home := getenv("COVE_HOME")
	if home == "" {
		home = defaultHome
	}
	p := filepath.Join(home, tokenFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("no token: set COVE_TOKEN or start the server (it writes %s)", p)
	}
	if err != nil {
		return "", "", fmt.Errorf("read token: %w (set COVE_TOKEN instead?)", err)
	}
	if token = strings.TrimSpace(string(b)); token == "" {
		return "", "", fmt.Errorf("no token: %s is empty; set COVE_TOKEN", p)
	}
	return addr, token, nil
}
