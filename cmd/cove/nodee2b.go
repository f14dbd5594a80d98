package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/e2b"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// nodeE2BConfig is what a session-serving 'cove node' needs to serve the
// E2B-compatible API over its control connection.
type nodeE2BConfig struct {
	Home       string // its e2b.key is there
	Node       string // the node's id (nodelink.Agent.Join's)
	ServerID   string // names it in the store's leases; "" is the node's id
	BaseImage  string // the template "base" where cove has none; "" is debian
	MaxUpload  int64  // one upload's bytes; 0 is the default
	Sessions   *session.Manager
	Store      store.Store
	Authn      *identity.Authenticator
	Authorize  func(context.Context, apiserver.Action) error
	Audit      apiserver.Auditor // nil records nothing
	Log        *slog.Logger
	CoveAPI    http.Handler // cove's API server's handler
	SweepEvery time.Duration
}

// nodeE2B is the handler a 'cove node' serving sessions gives its agent
// (nodelink.AgentConfig.Handler): cove's API, and the node's own E2B API
// for the calls a server's E2B API relays to it (nodelink.HeaderAPI;
// nodelink.Split). The node signs its sandboxes' access tokens with its
// own key (HOME/e2b.key, made at the first start) and checks them: the
// relaying server only carries the calls. Its sweep of its sandboxes'
// end times runs until ctx ends; stop ends its process streams.
//
// Call site (runNodeAgent, where the node runs sessions): the agent's
// Handler becomes the handler this returns, with CoveAPI the handler it
// had.
func nodeE2B(ctx context.Context, cfg nodeE2BConfig) (h http.Handler, stop func(), err error) {
	key, err := secret.LoadOrCreateKey(filepath.Join(cfg.Home, "e2b.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("node: e2b: %w", err)
	}
	if cfg.ServerID == "" {
		cfg.ServerID = cfg.Node
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv, err := e2b.New(e2b.Config{Sessions: cfg.Sessions, Records: cfg.Store, Authenticator: cfg.Authn, Authorize: cfg.Authorize,
		Audit: cfg.Audit, ServerID: cfg.ServerID, Key: key, BaseImage: cfg.BaseImage, MaxFileBytes: cfg.MaxUpload,
		Log: log.With("api", "e2b"), Router: routing.NewE2B(cfg.Store, cfg.Node)})
	if err != nil {
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	go srv.Run(ctx, cfg.SweepEvery)
	return nodelink.Split(cfg.CoveAPI, srv), srv.Close, nil
}
