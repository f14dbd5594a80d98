package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
)

// advertiseURL is where the other servers sharing the store reach this
// one (--advertise-url): the flag's value, checked, else http:// and the
// address the server listens on (addr, its port resolved) when --listen
// names a concrete host; "" when it names none (0.0.0.0, ::, no host),
// which a server cannot guess another can reach.
func advertiseURL(flag, listen string, addr net.Addr) (string, error) {
	if flag != "" {
		u, err := routing.ParseURL(flag)
		if err != nil {
			return "", fmt.Errorf("server: --advertise-url: %w", err)
		}
		return u.String(), nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return "", nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", nil
	}
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "", nil
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// here serves h's requests on this server's node alone (session.Here):
// the E2B-compatible API is not routed between servers yet, so its
// creates are placed on this node, as before routing, rather than
// refused as placed on another server's.
func here(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(session.Here(r.Context())))
	})
}

// advertise records the URL of this server in its embedded node's record
// (node; "" with --node=false, which records nothing), for the other
// servers to route its sessions' calls here.
func advertise(ctx context.Context, st store.Store, node, url string, log *slog.Logger) error {
	if node == "" {
		return nil
	}
	if err := session.AdvertiseNode(ctx, st, node, url); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if url == "" {
		log.Warn("no --advertise-url and --listen names no host: other servers cannot route this node's sessions' calls here (they answer 503 saying so)")
		return nil
	}
	log.Info("calls about this node's sessions are routed here by the other servers", "advertise_url", url)
	return nil
}
