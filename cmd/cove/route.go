package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

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
	return advertised("--advertise-url", flag, listen, addr)
}

// advertised is advertiseURL for the flag named name.
func advertised(name, flag, listen string, addr net.Addr) (string, error) {
	if flag != "" {
		u, err := routing.ParseURL(flag)
		if err != nil {
			return "", fmt.Errorf("server: %s: %w", name, err)
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

// advertiseE2B records the URL of this server's E2B API in its embedded
// node's record (node; "" with --node=false, which records nothing), for
// the other servers to route its sandboxes' E2B calls, and the E2B
// creates placed on it, here.
func advertiseE2B(ctx context.Context, st store.Store, node, url string, log *slog.Logger) error {
	if node == "" {
		return nil
	}
	if err := session.AdvertiseNodeE2B(ctx, st, node, url); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if url == "" {
		log.Warn("no --e2b-advertise-url and --e2b-listen names no host: other servers cannot route this node's sandboxes' E2B calls here (they answer 503 saying so) and place their E2B creates on their own nodes")
		return nil
	}
	log.Info("E2B calls about this node's sandboxes are routed here by the other servers", "e2b_advertise_url", url)
	return nil
}
