package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
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

// serveE2B serves the E2B-compatible API on cfg.E2BListen until ctx ends
// (its Serve error goes to errc): its own listener, so that the SDK's
// envd URLs, signed file URLs included, land at the root where envd's
// routes are (see package e2b). Its access tokens are signed with the key
// in HOME/e2b.key, made at the first start. Close stops it. The E2B calls
// about the sandboxes of the session-serving nodes connected to hub (nil
// for none) are relayed to them over their connections, and their
// records' E2BURL is this API's (see nodee2b.go).
func serveE2B(ctx context.Context, cfg serverConfig, serverID, node string, mgr *session.Manager, st store.Store, authn *identity.Authenticator,
	authorize func(context.Context, apiserver.Action) error, auditor apiserver.Auditor, hub *nodelink.Hub, log *slog.Logger, errc chan<- error) (*http.Server, error) {
	key, err := secret.LoadOrCreateKey(filepath.Join(cfg.Home, "e2b.key"))
	if err != nil {
		return nil, fmt.Errorf("server: e2b: %w", err)
	}
	var links e2b.Links
	if hub != nil {
		links = hub
	}
	h, err := e2b.New(e2b.Config{Sessions: mgr, Records: st, Authenticator: authn, Authorize: authorize, Audit: auditor, ServerID: serverID,
		Key: key, BaseImage: cfg.E2BBaseImage, MaxFileBytes: int64(cfg.E2BMaxUpload), Log: log.With("api", "e2b"),
		Router: routing.NewE2B(st, node), Links: links})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.E2BListen)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("server: e2b listen: %w", err)
	}
	url, err := advertised("--e2b-advertise-url", cfg.E2BAdvertiseURL, cfg.E2BListen, ln.Addr())
	if err == nil {
		err = advertiseE2B(ctx, st, node, url, log)
	}
	if err != nil {
		ln.Close()
		h.Close()
		return nil, err
	}
	if hub != nil {
		hub.SetE2BURL(ctx, url)
	}
	// Streams (a command's output) and transfers have no deadline;
	// headers do.
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	hs.RegisterOnShutdown(h.Close)
	go h.Run(ctx, time.Second)
	go func() {
		if err := hs.Serve(ln); err != http.ErrServerClosed {
			errc <- fmt.Errorf("e2b: %w", err)
		}
	}()
	log.Info("E2B-compatible API listening", "addr", "http://"+ln.Addr().String(), "base_image", cfg.E2BBaseImage)
	return hs, nil
}
