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

	"github.com/cove-dev/cove/internal/nodeinfo"
	"github.com/cove-dev/cove/internal/nodelink"
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
	Home          string
	Accel         string
	Heartbeat     time.Duration
	// The QEMU driver the node serves the server (as 'cove server' has).
	QEMUUser       string
	AllowRootVMs   bool
	GuestCmdline   string
	CgroupRoot     string
	AllowNoCgroups bool
}

// nodeAgentLong is the help of the agent, which 'cove node' runs when
// given no subcommand.
const nodeAgentLong = `Run bare, 'cove node --server URL' runs this host's node agent in the
foreground: it joins the server with the join token (once: the credential
it is issued is kept in HOME/node.credential, 0600), then keeps a control
connection to the server up, reconnecting after any drop (0.5 s doubling
to 30 s), and heartbeats with this host's capacity every --heartbeat. Over that
connection it serves the server this host's QEMU driver (boot, adopt,
stop, save, restore, checkpoint, disk files, the guest agent's channel),
under /node/v1/vmm/; the --qemu-user, --cgroup-root and related flags
configure it as they do 'cove server'. The
node dials the server, so a node behind NAT works. A node that was
removed ('cove node rm') stops with an error: remove its credential file
and start it with the join token to join again.`

// addNodeAgent makes cmd run the node agent when it is run with no
// subcommand, with the agent's flags.
func addNodeAgent(cmd *cobra.Command) {
	cfg := nodeAgentConfig{}
	cmd.Args = usageArgs(cobra.NoArgs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if cfg.Server == "" {
			return usagef(cmd, "--server is required: the URL of a cove server the node joins (COVE_NODE_SERVER)")
		}
		return runNodeAgent(cmd.Context(), cfg)
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Server, "server", os.Getenv("COVE_NODE_SERVER"), "URL of the cove server (or the load balancer before the servers) this node dials, e.g. https://cove.example:7070 (COVE_NODE_SERVER)")
	f.StringVar(&cfg.JoinToken, "join-token", os.Getenv("COVE_JOIN_TOKEN"), "the servers' join token, needed only until the node has joined; prefer --join-token-file or COVE_JOIN_TOKEN, which keep it out of ps (COVE_JOIN_TOKEN)")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", os.Getenv("COVE_JOIN_TOKEN_FILE"), "file that holds the join token (COVE_JOIN_TOKEN_FILE)")
	f.StringVar(&cfg.Labels, "labels", os.Getenv("COVE_NODE_LABELS"), "the node's labels, KEY=VALUE,… (placement follows them) (COVE_NODE_LABELS)")
	f.StringVar(&cfg.Name, "name", os.Getenv("COVE_NODE_NAME"), "the node's unique name (default: the host name, in lowercase); a node that joins again with a name gets that name's record (COVE_NODE_NAME)")
	f.StringVar(&cfg.Home, "home", envOr("COVE_HOME", defaultHome), "the node's data directory, where its credential is kept (COVE_HOME)")
	f.StringVar(&cfg.Accel, "accel", envOr("COVE_ACCEL", "auto"), "accelerator this node reports: auto, kvm or tcg (COVE_ACCEL)")
	f.DurationVar(&cfg.Heartbeat, "heartbeat", envDuration("COVE_HEARTBEAT", nodelink.DefaultHeartbeat), "interval of the node's heartbeats (COVE_HEARTBEAT)")
	f.StringVar(&cfg.QEMUUser, "qemu-user", envOr("COVE_QEMU_USER", "cove-vm"), "unprivileged user QEMU runs as when the node is root (COVE_QEMU_USER)")
	f.BoolVar(&cfg.AllowRootVMs, "allow-root-vms", os.Getenv("COVE_ALLOW_ROOT_VMS") == "1", "run QEMU as root when the node is root and has no unprivileged user to run it as (COVE_ALLOW_ROOT_VMS=1)")
	f.StringVar(&cfg.GuestCmdline, "guest-cmdline", os.Getenv("COVE_GUEST_CMDLINE"), "added to the kernel command line of every guest this node boots (COVE_GUEST_CMDLINE)")
	f.StringVar(&cfg.CgroupRoot, "cgroup-root", envOr("COVE_CGROUP_ROOT", "/sys/fs/cgroup"), "where each VM's cgroup limits are set (COVE_CGROUP_ROOT)")
	f.BoolVar(&cfg.AllowNoCgroups, "allow-no-cgroups", os.Getenv("COVE_ALLOW_NO_CGROUPS") == "1", "run VMs without the cgroup limits this host cannot apply (COVE_ALLOW_NO_CGROUPS=1)")
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
	if err := os.MkdirAll(cfg.Home, 0o711); err != nil {
		return fmt.Errorf("node: data dir: %w", err)
	}
	accel, _, err := qemu.DetectAccel(cfg.Accel)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	probe := func(ctx context.Context) (store.NodeCapacity, error) { return nodeinfo.Probe(ctx, cfg.Home, accel) }

	var agent *nodelink.Agent
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
	// The server drives this host's VMs through the driver's routes. A
	// host that cannot run QEMU still joins and heartbeats (its capacity
	// says what it lacks); its driver's routes say why they fail.
	driver, err := qemu.New(qemu.Config{Accel: cfg.Accel, User: cfg.QEMUUser, AllowRootVMs: cfg.AllowRootVMs, GuestCmdline: cfg.GuestCmdline,
		CgroupRoot: cfg.CgroupRoot, CgroupTag: qemu.CgroupTag(cfg.Home), AllowNoCgroups: cfg.AllowNoCgroups, Log: log})
	if err != nil {
		log.Error("node: no QEMU driver: the server cannot run VMs here", "err", err)
		mux.Handle(remote.Prefix, remote.Unavailable(err.Error()))
	} else {
		defer driver.Close()
		mux.Handle(remote.Prefix, remote.Handler(driver, remote.HandlerConfig{Log: log}))
	}
	agent = nodelink.NewAgent(nodelink.AgentConfig{Server: cfg.Server, JoinToken: token, Name: name, Labels: labels,
		Home: cfg.Home, Heartbeat: cfg.Heartbeat, Probe: probe, Handler: mux, Log: log})
	log.Info("cove node starting", "name", name, "server", cfg.Server, "home", cfg.Home, "accel", accel, "labels", labels)
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
