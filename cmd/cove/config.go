package main

import (
	"context"
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

// client returns an API client configured from the environment
// (clientConfig). Where that finds only the admin token, which only
// bootstraps, it signs in as the server's first admin user first
// (bootstrapSignIn) and uses that credential.
func (c *cli) client(ctx context.Context) (*api.Client, error) {
	conf, err := clientConfig(c.getenv)
	if err != nil {
		return nil, err
	}
	if conf.adminFile != "" {
		if conf.token, err = c.bootstrapSignIn(ctx, conf); err != nil {
			return nil, err
		}
	}
	return api.NewClient(conf.addr, conf.token), nil
}

// identityClient is client for the user, team and token commands: where
// the environment has only the admin token, they use it as it is, as it
// may do just what they do. So an operator can make an admin with it when
// the server has none to sign in as.
func (c *cli) identityClient() (*api.Client, error) {
	conf, err := clientConfig(c.getenv)
	if err != nil {
		return nil, err
	}
	return api.NewClient(conf.addr, conf.token), nil
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

// clientConf is where the CLI finds its server, and with what token.
type clientConf struct {
	addr  string
	token string
	// adminFile is the file token was read from when it is the admin
	// token the server wrote ($COVE_HOME/admin.token); "" otherwise.
	adminFile string
}

// clientConfig reads the server address (clientAddr) and the token, the
// first of: COVE_TOKEN; what 'cove login' saved for that address (an ID
// token renewed first if it is near its expiry); the admin token the
// server wrote to $COVE_HOME/admin.token (adminFile set).
func clientConfig(getenv func(string) string) (clientConf, error) {
	conf := clientConf{addr: clientAddr(getenv)}
	if conf.token = strings.TrimSpace(getenv("COVE_TOKEN")); conf.token != "" {
		return conf, nil
	}
	token, ok, err := savedToken(getenv, conf.addr)
	if err != nil || ok {
		conf.token = token
		return conf, err
	}
	home := getenv("COVE_HOME")
	if home == "" {
		home = defaultHome
	}
	p := filepath.Join(home, tokenFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return clientConf{}, fmt.Errorf("no token: run 'cove login', set COVE_TOKEN, or start the server (it writes %s)", p)
	}
	if err != nil {
		return clientConf{}, fmt.Errorf("read token: %w (set COVE_TOKEN instead?)", err)
	}
	if conf.token = strings.TrimSpace(string(b)); conf.token == "" {
		return clientConf{}, fmt.Errorf("no token: %s is empty; set COVE_TOKEN", p)
	}
	conf.adminFile = p
	return conf, nil
}
