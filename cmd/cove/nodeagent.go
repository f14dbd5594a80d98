package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmm/remote"
)

// nodeAgentConfig is what 'cove node' (the agent, run bare) is
// configured with.
type nodeAgentConfig struct {
	Server        string
	JoinToken     string
	JoinTokenFile string
	Labels        string
	Name          string
	Heartbeat     time.Duration
	// Side is the session side's configuration, the flags 'cove server'
	// shares (addSessionFlags): with a shared store (--db postgres://…)
	// the node runs sessions as a server runs its embedded node's; else
	// only Home, Accel and the QEMU driver's flags are used.
	Side serverConfig
}

// nodeAgentLong is the help of the agent, which 'cove node' runs when
// given no subcommand.
const nodeAgentLong = `Run bare, 'cove node --server URL' runs this host's node agent in the
foreground: it joins the server with the join token (once: the credential
it is issued is kept in HOME/node.credential, 0600), then keeps a control
connection to the server up, reconnecting after any drop (0.5 s doubling
to 30 s), and heartbeats with this host's capacity every --heartbeat. The
node dials the server, so a node behind NAT works.

With a shared store (--db postgres://…, and --objects, the servers' object
store) the node runs sessions: it does for the node it joined what 'cove
server' does for its embedded node (sessions' VMs, park and wake,
snapshots, egress, the audit log of what it does, the API's policy), and
serves cove's API over its control connection: the servers route the
calls about its sessions, and the creates placed on it, through the
server that holds its connection. It opens no port. Such a node holds
the store's credentials (and the secret key, --secret-key, the same as
the servers'), as a server does: run it on hosts trusted as much.
Without a shared store it takes no sessions, and serves the server only
this host's QEMU driver (under /node/v1/vmm/).

A node that was removed ('cove node rm') stops with an error: remove its
credential file and start it with the join token to join again.`

// addNodeAgent makes cmd run the node agent when it is run with no
// subcommand, with the agent's flags and the session side's.
func addNodeAgent(cmd *cobra.Command) {
	cfg := nodeAgentConfig{}
	cmd.Args = usageArgs(cobra.NoArgs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if cfg.Server == "" {
			return usagef(cmd, "--server is required: the URL of a cove server the node joins (COVE_NODE_SERVER)")
		}
		if err := envCacheSize(cmd, &cfg.Side.CacheSize); err != nil {
			return err
		}
		if err := checkGuestLimits(cfg.Side); err != nil {
			return err
		}
		return runNodeAgent(cmd.Context(), cfg)
	}
	addSessionFlags(cmd, &cfg.Side)
	f := cmd.Flags()
	f.StringVar(&cfg.Server, "server", os.Getenv("COVE_NODE_SERVER"), "URL of the cove server (or the load balancer before the servers) this node dials, e.g. https://cove.example:7070 (COVE_NODE_SERVER)")
	f.StringVar(&cfg.JoinToken, "join-token", os.Getenv("COVE_JOIN_TOKEN"), "the servers' join token, needed only until the node has joined; prefer --join-token-file or COVE_JOIN_TOKEN, which keep it out of ps (COVE_JOIN_TOKEN)")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", os.Getenv("COVE_JOIN_TOKEN_FILE"), "file that holds the join token (COVE_JOIN_TOKEN_FILE)")
	f.StringVar(&cfg.Labels, "labels", os.Getenv("COVE_NODE_LABELS"), "the node's labels, KEY=VALUE,… (placement follows them) (COVE_NODE_LABELS)")
	f.StringVar(&cfg.Name, "name", os.Getenv("COVE_NODE_NAME"), "the node's unique name (default: the host name, in lowercase); a node that joins again with a name gets that name's record (COVE_NODE_NAME)")
	f.DurationVar(&cfg.Heartbeat, "heartbeat", envDuration("COVE_HEARTBEAT", nodelink.DefaultHeartbeat), "interval of the node's heartbeats (COVE_HEARTBEAT)")
}

// sharedStore reports whether --db names a store servers share (a
// PostgreSQL URL): a node runs sessions only with one.
func sharedStore(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// runNodeAgent runs the node agent until a signal, or until the server
// refuses the node.
func runNodeAgent(ctx context.Context, cfg nodeAgentConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	token, err := nodeJoinToken(cfg)
	if err != nil {
		return err
	}
	labels, err := nodelink.ParseLabels(cfg.Labels)
	if err != nil {
		return fmt.Errorf("node: --labels: %w", err)
	}
	name := cfg.Name
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node: --name not given, and no host name: %w", err)
		}
		name = strings.ToLower(h)
	}
	if err := nodelink.ValidName(name); err != nil {
		return fmt.Errorf("node: --name: %w", err)
	}
	if cfg.Heartbeat <= 0 {
		return fmt.Errorf("node: --heartbeat (%v) must be positive", cfg.Heartbeat)
	}
	home := cfg.Side.Home
	if err := os.MkdirAll(home, 0o711); err != nil {
		return fmt.Errorf("node: data dir: %w", err)
	}
	accel, _, err := qemu.DetectAccel(cfg.Side.Accel)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	// A node serving sessions says after how long without a heartbeat it
	// freezes its VMs (its session manager's FenceAfter, the same span).
	fence := fenceAfter(cfg.Side.DB, cfg.Side.NodeGrace)
	probe := func(ctx context.Context) (store.NodeCapacity, error) { return probeNode(ctx, home, accel, fence) }
	serves := sharedStore(cfg.Side.DB)

	var agent *nodelink.Agent
	var mgr *session.Manager // set before the agent runs: its heartbeats fence and clean up
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+nodelink.InfoPath, func(w http.ResponseWriter, r *http.Request) {
		c, err := probe(r.Context())
		if err != nil {
			http.Error(w, "capacity probe failed", http.StatusInternalServerError)
			log.Error("node: info: capacity probe", "err", err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(nodelink.Info{ID: agent.NodeID(), Name: name, Labels: labels, Capacity: c, Version: versionString()})
	})
	agent = nodelink.NewAgent(nodelink.AgentConfig{Server: cfg.Server, JoinToken: token, Name: name, Labels: labels,
		Home: home, Heartbeat: cfg.Heartbeat, Probe: probe, Handler: mux, Log: log,
		Serves: serves, OnHeartbeat: func(ctx context.Context) {
			if mgr != nil {
				mgr.Heartbeated(ctx)
			}
		}})
	if serves {
		cfg.Side.NodeHeartbeat = cfg.Heartbeat
		if f := fenceAfter(cfg.Side.DB, cfg.Side.NodeGrace); f <= cfg.Heartbeat {
			return fmt.Errorf("node: --node-grace (%v) must be more than twice --heartbeat (%v): a node that goes half the grace without a heartbeat freezes its VMs (give it the servers' --node-grace)", cfg.Side.NodeGrace, cfg.Heartbeat)
		}
		side, err := openSessionSide(ctx, cfg.Side, sessionSideOptions{Linked: true,
			Node: func(ctx context.Context, st store.Store, accel string) (string, error) {
				id, err := agent.Join(ctx)
				if err != nil {
					return "", fmt.Errorf("node: join: %w", err)
				}
				log.Info("node joined: it runs sessions", "node", id, "name", name)
				return id, nil
			}}, log)
		if err != nil {
			return err
		}
		defer side.stop(cfg.Side.StopOnExit)
		mgr = side.mgr
		// The servers route the calls about this node's sessions over
		// the link; the driver's routes stay, as a node without a
		// shared store serves them.
		mux.Handle(remote.Prefix, remote.Handler(side.driver, remote.HandlerConfig{Log: log}))
		h, stopE2B, err := nodeE2B(ctx, nodeE2BConfig{Home: home, Node: side.node, ServerID: side.serverID,
			BaseImage: cfg.Side.E2BBaseImage, MaxUpload: int64(cfg.Side.E2BMaxUpload),
			Sessions: side.mgr, Store: side.st, Authn: side.authn, Authorize: side.authorize,
			Audit: side.audit, Log: log, CoveAPI: apiserver.New(side.api).Handler()})
		if err != nil {
			return err
		}
		defer stopE2B()
		mux.Handle("/", h)
	} else {
		log.Warn("node: no shared store (--db is not a postgres:// URL): this node takes no sessions; it serves the server its QEMU driver only")
		// The server drives this host's VMs through the driver's routes.
		// A host that cannot run QEMU still joins and heartbeats (its
		// capacity says what it lacks); its driver's routes say why
		// they fail.
		driver, err := qemu.New(qemu.Config{Accel: cfg.Side.Accel, User: cfg.Side.QEMUUser, AllowRootVMs: cfg.Side.AllowRootVMs, GuestCmdline: cfg.Side.GuestCmdline,
			CgroupRoot: cfg.Side.CgroupRoot, CgroupTag: qemu.CgroupTag(home), AllowNoCgroups: cfg.Side.AllowNoCgroups, Log: log})
		if err != nil {
			log.Error("node: no QEMU driver: the server cannot run VMs here", "err", err)
			mux.Handle(remote.Prefix, remote.Unavailable(err.Error()))
		} else {
			defer driver.Close()
			mux.Handle(remote.Prefix, remote.Handler(driver, remote.HandlerConfig{Log: log}))
		}
	}
	log.Info("cove node starting", "name", name, "server", cfg.Server, "home", home, "accel", accel, "labels", labels, "sessions", serves)
	if err := agent.Run(ctx); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	log.Info("cove node stopped")
	return nil
}

// nodeJoinToken is the join token of --join-token, else of
// --join-token-file; "" when neither is given (a node that joined needs
// none).
func nodeJoinToken(cfg nodeAgentConfig) (string, error) {
	if cfg.JoinToken != "" && cfg.JoinTokenFile != "" {
		return "", errors.New("node: give --join-token or --join-token-file, not both")
	}
	if cfg.JoinTokenFile == "" {
		return cfg.JoinToken, nil
	}
	return readJoinTokenFile(cfg.JoinTokenFile)
}

// readJoinTokenFile reads a join token file: its trailing newline is not
// part of the token, and an empty file, or one that group or others may
// read, is refused.
func readJoinTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("join token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("join token file %s: mode %v lets others read the secret: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("join token file: %w", err)
	}
	tok := strings.TrimRight(string(b), "\r\n")
	if strings.TrimSpace(tok) == "" {
		return "", fmt.Errorf("join token file %s is empty", path)
	}
	return tok, nil
}
