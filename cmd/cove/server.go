package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/keyfile"
	"github.com/cove-dev/cove/internal/nodelink"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// serverConfig is everything 'cove server' is configured with.
type serverConfig struct {
	// EgressAllow are rules every session may use; UpstreamCA a PEM
	// bundle of CAs upstreams may also be signed by.
	EgressAllow   []string
	UpstreamCA    string
	EgressResolve []string

	Listen       string
	Home         string
	DB           string        // "sqlite" (Home/state.db) or a postgres:// URL
	Objects      string        // where snapshots go off the host: "" (file://Home/objects), file:// or s3:// URL
	CacheSize    sizeFlag      // bound on parked sessions' snapshot files here; 0: none
	GCInterval   time.Duration // how often the object store's garbage is collected; 0 never
	GCGrace      time.Duration // how old unnamed objects must be before a GC deletes them
	KeyTTL       time.Duration // how long an Idempotency-Key is kept; 0 for ever
	Accel        string
	AgentPath    string
	QEMUUser     string
	AllowRootVMs bool     // run QEMU as root when QEMUUser cannot be used
	GuestCmdline string   // added to every guest's kernel command line
	Images       []string // built at start when missing
	DefaultImage string
	StopOnExit   bool
	IdleTimeout  time.Duration
	Spares       int // spare QEMU processes per machine shape; 0: none
	CloneFiles   int // clone files made ahead per template; 0: none

	CgroupRoot       string  // where VMs' cgroup limits go
	AllowNoCgroups   bool    // run VMs without the limits the host cannot apply
	MemoryOvercommit float64 // VM memory admitted per MiB of host memory
	CPUOvercommit    float64 // vCPUs admitted per host CPU

	// Bounds on what a guest asks for itself (session/guestlimit.go):
	// checkpoints one session holds, its guest's checkpoint and rollback
	// requests (a burst, then one per period), and those under way on
	// the host at once. 0: the session package's defaults.
	MaxCheckpoints         int
	GuestCheckpointBurst   int
	GuestCheckpointEvery   time.Duration
	GuestCheckpointsAtOnce int

	// WebhookMemory bounds the memory of webhook bodies not yet
	// authenticated, in MiB.
	WebhookMemory int

	// Policy is the Cedar policy file that decides every API action; "":
	// the built-in default. SIGHUP reloads it.
	Policy string
	// OIDCIssuers are the OpenID Connect issuers whose ID tokens the API
	// accepts, each ISSUER_URL=CLIENT_ID.
	OIDCIssuers []string
	// IssuerURL is the iss of the sessions' identity tokens, where
	// verifiers fetch its keys; "": http:// and the listen address, if
	// that is a loopback one.
	IssuerURL string
	// Node runs the embedded node (this host runs VMs), registered as
	// NodeName, heartbeating every NodeHeartbeat; NodeGrace is how long
	// any node may go without a heartbeat before it is marked dead.
	Node          bool
	NodeName      string
	NodeHeartbeat time.Duration
	NodeGrace     time.Duration
	// AdvertiseURL is where the other servers sharing the store reach
	// this one, to route calls about its node's sessions here; "":
	// http:// and --listen when that names a host.
	AdvertiseURL string

	// SecretKey is the file of the key that seals secrets; "":
	// Home/secret.key, made at the first start. COVE_SECRET_KEY, when
	// set, wins over either.
	SecretKey string
	// JoinTokenFile is the file of the secret nodes join with; "":
	// joining is disabled (nodes that joined before still connect).
	JoinTokenFile string

	// E2BListen is the address of the E2B-compatible API (package e2b);
	// "": not served. E2BBaseImage is the image of its template "base"
	// where no cove template has that name.
	E2BListen string
	// E2BAdvertiseURL is where the other servers sharing the store reach
	// this one's E2B API ("": http:// and --e2b-listen when that names a
	// host).
	E2BAdvertiseURL string
	E2BBaseImage    string
	// E2BMaxUpload limits one upload to envd's /files; 0: the API's
	// default (4 GiB).
	E2BMaxUpload sizeFlag
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// envInt reads an integer from the environment, or def.
func envInt(key string, def int) int {
	if v := os.Getenv(key); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// envDuration reads a duration from the environment, or def.
func envDuration(key string, def time.Duration) time.Duration {
	if v := os.Getenv(key); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// envList reads a comma-separated list from the environment; nil if unset.
func envList(key string) []string {
	if v := os.Getenv(key); v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// envFloat reads a number from the environment, or def.
func envFloat(key string, def float64) float64 {
	if v := os.Getenv(key); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return f
		}
	}
	return def
}

// envCacheSize sets size from COVE_CACHE_SIZE unless --cache-size was
// given; a value that does not parse stops the server.
func envCacheSize(cmd *cobra.Command, size *sizeFlag) error {
	v := os.Getenv("COVE_CACHE_SIZE")
	if v == "" || cmd.Flags().Changed("cache-size") {
		return nil
	}
	if err := size.Set(v); err != nil {
		return fmt.Errorf("server: COVE_CACHE_SIZE: %w", err)
	}
	return nil
}

func newServerCmd() *cobra.Command {
	cfg := serverConfig{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the API server and the local node (one host, SQLite or PostgreSQL, local snapshots)",
		Long: `Run the cove API server on this host: sessions are QEMU microVMs started
here, state is kept in SQLite under COVE_HOME (or in PostgreSQL: --db).

QEMU processes outlive the server on purpose: a restarted server re-adopts
the running sessions. Use --stop-on-exit to stop every VM when the server
exits.

A Cedar policy decides every API action (--policy; the built-in one lets
each engineer see and control its own sessions and templates, and admins
everything). A policy file that does not check stops the server from
starting; SIGHUP reloads it, and a file that does not check then leaves
the policy in force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := envCacheSize(cmd, &cfg.CacheSize); err != nil {
				return err
			}
			if err := checkGuestLimits(cfg); err != nil {
				return err
			}
			if v := os.Getenv("COVE_E2B_MAX_UPLOAD"); v != "" && !cmd.Flags().Changed("e2b-max-upload") {
				if err := cfg.E2BMaxUpload.Set(v); err != nil {
					return fmt.Errorf("server: COVE_E2B_MAX_UPLOAD: %w", err)
				}
			}
			return runServer(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	addSessionFlags(cmd, &cfg)
	f.StringVar(&cfg.Listen, "listen", envOr("COVE_LISTEN", "127.0.0.1:7070"), "address to listen on (COVE_LISTEN)")
	f.BoolVar(&cfg.Node, "node", envOr("COVE_NODE", "true") != "false", "run the embedded node: this server runs sessions' VMs on this host; --node=false runs none: an API server only, which routes every call about a session, and every create, to the server of a node that advertises a URL (--advertise-url) (COVE_NODE)")
	f.StringVar(&cfg.NodeName, "node-name", envOr("COVE_NODE_NAME", hostname()), "name of the embedded node, unique among the nodes sharing the store; a restarted server with the same name keeps its node (COVE_NODE_NAME; default: the host name)")
	f.DurationVar(&cfg.NodeHeartbeat, "node-heartbeat", envDuration("COVE_NODE_HEARTBEAT", 10*time.Second), "how often the embedded node heartbeats, with a fresh probe of its capacity (COVE_NODE_HEARTBEAT)")
	f.StringVar(&cfg.AdvertiseURL, "advertise-url", os.Getenv("COVE_ADVERTISE_URL"), "URL the other servers sharing the store reach this one at (http:// or https://HOST:PORT): any server answers any call, and routes a call about a session to the server whose node holds it (default: http:// and --listen when that names a host; with 0.0.0.0 or none, set it, or this node's sessions are reached only through this server); the 'cove node' agents that connect here running sessions are reached through this server at it too (COVE_ADVERTISE_URL)")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", os.Getenv("COVE_JOIN_TOKEN_FILE"), "file that holds the secret 'cove node' agents join with (mode 0600; a trailing newline is not part of it); without it, joining is disabled, while nodes that joined before still connect (COVE_JOIN_TOKEN_FILE)")
	f.StringVar(&cfg.E2BListen, "e2b-listen", os.Getenv("COVE_E2B_LISTEN"), "address of the E2B-compatible API, control plane and envd on one port (the official E2B SDKs run against it: 'cove e2b env' prints their settings); default: not served (COVE_E2B_LISTEN)")
	f.StringVar(&cfg.E2BAdvertiseURL, "e2b-advertise-url", os.Getenv("COVE_E2B_ADVERTISE_URL"), "URL the other servers sharing the store reach this one's E2B API at (http:// or https://HOST:PORT): they route the E2B calls about this node's sandboxes, and the E2B creates placed on it, here (default: http:// and --e2b-listen when that names a host) (COVE_E2B_ADVERTISE_URL)")
	f.Var(&cfg.E2BMaxUpload, "e2b-max-upload", "the largest upload to the E2B API's /files: 4GiB, 500MiB or a byte count; larger ones are 413 and write nothing (COVE_E2B_MAX_UPLOAD; default 4GiB)")
	f.StringVar(&cfg.E2BBaseImage, "e2b-base-image", envOr("COVE_E2B_BASE_IMAGE", "debian"), "image of the E2B template 'base' (the SDK's default; it needs bash) where no cove template is named base (COVE_E2B_BASE_IMAGE)")
	return cmd
}

// addSessionFlags registers the flags of the session side
// (openSessionSide) on cmd: those 'cove server' and a session-serving
// 'cove node' share.
func addSessionFlags(cmd *cobra.Command, cfg *serverConfig) {
	f := cmd.Flags()
	f.StringVar(&cfg.Home, "home", envOr("COVE_HOME", defaultHome), "data directory (COVE_HOME)")
	f.StringVar(&cfg.DB, "db", envOr("COVE_DB", "sqlite"), "state store: sqlite (HOME/state.db, this server's) or a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL that servers share (COVE_DB; prefer it, or PGPASSWORD, to keep the password out of ps)")
	f.StringVar(&cfg.Objects, "objects", os.Getenv("COVE_OBJECTS"), "object store that parked sessions' snapshots are uploaded to: file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R (credentials from AWS_* or ~/.aws/credentials, never the URL) (COVE_OBJECTS; default: file://HOME/objects)")
	f.Var(&cfg.CacheSize, "cache-size", "node cache: the most bytes that parked sessions' snapshot files (RAM file, device state, disk overlay; allocated blocks) may take on this host, e.g. 2GiB, 500MiB or a byte count; past it, the files of parked sessions stored in --objects are removed, least recently parked first, and a wake fetches them back (COVE_CACHE_SIZE; default 0: no bound)")
	f.DurationVar(&cfg.GCInterval, "gc-interval", envDuration("COVE_GC_INTERVAL", time.Hour), "how often the object store's garbage is collected: manifests and chunks no session, template version or image record names (nor what they rest on), once older than --gc-grace; 0 never (COVE_GC_INTERVAL)")
	f.DurationVar(&cfg.GCGrace, "gc-grace", envDuration("COVE_GC_GRACE", session.DefaultGCGrace), "how old an object no record names must be before a GC deletes it; uploads under way are safe as long as they take less than half of it (at least 1h) (COVE_GC_GRACE)")
	f.DurationVar(&cfg.KeyTTL, "idempotency-ttl", envDuration("COVE_IDEMPOTENCY_TTL", session.DefaultIdempotencyTTL), "how long a create's Idempotency-Key is kept: a retry with an older key makes a new session; 0 keeps keys for ever (COVE_IDEMPOTENCY_TTL)")
	f.StringVar(&cfg.Accel, "accel", envOr("COVE_ACCEL", "auto"), "accelerator: auto, kvm or tcg (COVE_ACCEL)")
	f.StringVar(&cfg.AgentPath, "agent", os.Getenv("COVE_AGENT"), "static cove-agent binary (COVE_AGENT; default: next to this binary)")
	f.StringVar(&cfg.QEMUUser, "qemu-user", envOr("COVE_QEMU_USER", "cove-vm"), "unprivileged user QEMU runs as when the server is root (COVE_QEMU_USER)")
	f.BoolVar(&cfg.AllowRootVMs, "allow-root-vms", os.Getenv("COVE_ALLOW_ROOT_VMS") == "1", "run QEMU as root when the server is root and has no unprivileged user to run it as (--qemu-user empty, missing or root), instead of refusing to start (COVE_ALLOW_ROOT_VMS=1)")
	f.StringVar(&cfg.GuestCmdline, "guest-cmdline", os.Getenv("COVE_GUEST_CMDLINE"), "added to the kernel command line of every guest booted; 'loglevel=7 cove.debug' puts the kernel's messages and the agent's boot progress marks on each guest's console (COVE_GUEST_CMDLINE)")
	f.StringSliceVar(&cfg.Images, "build-images", nil, "images to build at start if missing (e.g. tiny,debian)")
	f.StringVar(&cfg.DefaultImage, "default-image", "tiny", "image for sessions that name none")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", envDuration("COVE_IDLE_TIMEOUT", 30*time.Minute), "park sessions idle this long (no API call, nothing attached); 0 never; a session's own --idle-timeout wins (COVE_IDLE_TIMEOUT)")
	f.IntVar(&cfg.Spares, "spares", envInt("COVE_SPARES", 1), "QEMU processes kept started ahead for each machine shape woken lately, so a wake or a create from a template skips QEMU's start; 0 none (COVE_SPARES)")
	f.IntVar(&cfg.CloneFiles, "clone-files", envInt("COVE_CLONE_FILES", 1), "sets of a clone's files (a copy of the template's RAM file, a disk overlay) kept made ahead for each ready template, so a create from an empty pool does not copy; 0 none (COVE_CLONE_FILES)")
	f.IntVar(&cfg.WebhookMemory, "webhook-memory", envInt("COVE_WEBHOOK_MEMORY", trigger.DefaultMaxPendingMemory>>20), "MiB of memory all webhook bodies not yet authenticated may hold together (at most 64 KiB each; the rest waits in COVE_HOME/tmp, 1 GiB at most); more deliveries are answered 503 (COVE_WEBHOOK_MEMORY)")
	f.StringVar(&cfg.CgroupRoot, "cgroup-root", envOr("COVE_CGROUP_ROOT", "/sys/fs/cgroup"), "where each VM's cgroup limits are set: the cgroup v1 mount root, or a cgroup v2 directory with memory, cpu and pids delegated (COVE_CGROUP_ROOT)")
	f.BoolVar(&cfg.AllowNoCgroups, "allow-no-cgroups", os.Getenv("COVE_ALLOW_NO_CGROUPS") == "1", "run VMs without the cgroup limits this host cannot apply, instead of refusing to start (COVE_ALLOW_NO_CGROUPS=1)")
	f.Float64Var(&cfg.MemoryOvercommit, "memory-overcommit", envFloat("COVE_MEMORY_OVERCOMMIT", session.DefaultMemoryOvercommit), "MiB of VM memory admitted per MiB of host memory (COVE_MEMORY_OVERCOMMIT)")
	f.Float64Var(&cfg.CPUOvercommit, "cpu-overcommit", envFloat("COVE_CPU_OVERCOMMIT", session.DefaultCPUOvercommit), "vCPUs admitted per host CPU (COVE_CPU_OVERCOMMIT)")
	f.IntVar(&cfg.MaxCheckpoints, "max-checkpoints", envInt("COVE_MAX_CHECKPOINTS", session.DefaultMaxCheckpoints), "the most checkpoints one session holds, its guest's and the API's together; one more is refused (COVE_MAX_CHECKPOINTS)")
	f.IntVar(&cfg.GuestCheckpointBurst, "guest-checkpoint-burst", envInt("COVE_GUEST_CHECKPOINT_BURST", session.DefaultGuestCheckpointBurst), "checkpoint and rollback requests a session's guest may make at once ('cove-agent checkpoint', 'cove-agent rollback'), then one per --guest-checkpoint-every; the rest are refused with nothing done (COVE_GUEST_CHECKPOINT_BURST)")
	f.DurationVar(&cfg.GuestCheckpointEvery, "guest-checkpoint-every", envDuration("COVE_GUEST_CHECKPOINT_EVERY", session.DefaultGuestCheckpointEvery), "how often a session's guest may make one more checkpoint or rollback request once its burst is spent (COVE_GUEST_CHECKPOINT_EVERY)")
	f.IntVar(&cfg.GuestCheckpointsAtOnce, "guest-checkpoints-at-once", envInt("COVE_GUEST_CHECKPOINTS_AT_ONCE", session.DefaultGuestCheckpointsAtOnce), "guests' checkpoints and rollbacks under way on this host at once, all sessions together; the others wait their turn (COVE_GUEST_CHECKPOINTS_AT_ONCE)")
	f.BoolVar(&cfg.StopOnExit, "stop-on-exit", false, "stop every VM when the server exits (default: leave them for the next server to adopt)")
	f.StringVar(&cfg.IssuerURL, "issuer-url", os.Getenv("COVE_ISSUER_URL"), "URL of cove as the OpenID issuer of the sessions' identity tokens (https, served at its root; verifiers fetch /.well-known/openid-configuration from it); default: http:// and --listen when that is a loopback address, else no session tokens (COVE_ISSUER_URL)")
	f.StringArrayVar(&cfg.OIDCIssuers, "oidc-issuer", envList("COVE_OIDC_ISSUERS"), "accept the ID tokens of an OpenID Connect issuer as bearer tokens: ISSUER_URL=CLIENT_ID (https, or http on loopback; the client id is the audience its tokens carry, and the client 'cove login' signs in as); repeat for more; a user is made at its first sign-in, and the groups claim sets its teams (COVE_OIDC_ISSUERS, comma-separated)")
	f.StringArrayVar(&cfg.EgressAllow, "egress-allow", envList("COVE_EGRESS_ALLOW"), "egress every session may use, on top of its own --allow and its template's: '[METHOD,…] HOST[:PORT,…][/PATH]' (repeatable; COVE_EGRESS_ALLOW, comma-separated)")
	f.StringArrayVar(&cfg.EgressResolve, "egress-resolve", envList("COVE_EGRESS_RESOLVE"), "HOST=IP: the egress proxy reaches HOST at IP instead of asking DNS, as curl's --resolve does (split-horizon names, internal services); repeatable (COVE_EGRESS_RESOLVE, comma-separated)")
	f.StringVar(&cfg.UpstreamCA, "upstream-ca", os.Getenv("COVE_UPSTREAM_CA"), "PEM file of CAs that upstreams reached through the egress proxy may also be signed by, besides the system's roots: internal services with a private CA (COVE_UPSTREAM_CA)")
	f.StringVar(&cfg.SecretKey, "secret-key", os.Getenv("COVE_SECRET_KEY_FILE"), "file of the key that encrypts secrets at rest: base64 of 32 bytes, mode 0600, best kept apart from --home's database (default: HOME/secret.key, made at the first start; the environment variable "+secret.EnvKey+", base64 of 32 bytes, wins over the file) (COVE_SECRET_KEY_FILE)")
	f.DurationVar(&cfg.NodeGrace, "node-grace", envDuration("COVE_NODE_GRACE", 30*time.Second), "how long a node may go without a heartbeat before it is marked dead (its running sessions lost), counting only time the sweeping server could reach the store; one server sharing the store sweeps, every third of it. With PostgreSQL, a node whose heartbeats fail for half of it freezes its VMs until it heartbeats again, and is not marked dead before twice that span, as it reports it: give nodes and servers the same (COVE_NODE_GRACE)")
	f.StringVar(&cfg.Policy, "policy", os.Getenv("COVE_POLICY"), "Cedar policy file that decides every API action (default: the built-in policy: engineers see and control their own sessions, admins everything); check it with 'cove policy check'; SIGHUP reloads it, keeping the policy in force if the file does not check (COVE_POLICY)")
}

// checkGuestLimits refuses bounds on guests' requests that would bound
// nothing or refuse everything: each at least 1 (a period, 1s).
func checkGuestLimits(cfg serverConfig) error {
	for _, c := range []struct {
		flag string
		n    int
	}{{"--max-checkpoints", cfg.MaxCheckpoints}, {"--guest-checkpoint-burst", cfg.GuestCheckpointBurst},
		{"--guest-checkpoints-at-once", cfg.GuestCheckpointsAtOnce}} {
		if c.n < 1 {
			return fmt.Errorf("server: %s is %d: it must be at least 1", c.flag, c.n)
		}
	}
	if cfg.GuestCheckpointEvery < time.Second {
		return fmt.Errorf("server: --guest-checkpoint-every is %v: it must be at least 1s", cfg.GuestCheckpointEvery)
	}
	return nil
}

func runServer(ctx context.Context, cfg serverConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	var joinToken string
	if cfg.JoinTokenFile != "" {
		var err error
		if joinToken, err = readJoinTokenFile(cfg.JoinTokenFile); err != nil {
			return fmt.Errorf("server: --join-token-file: %w", err)
		}
	}
	side, err := openSessionSide(ctx, cfg, sessionSideOptions{
		Node: func(ctx context.Context, st store.Store, accel string) (string, error) {
			return embeddedNode(ctx, cfg, st, accel, log)
		}}, log)
	if err != nil {
		return err
	}
	st, node, auditLog := side.st, side.node, side.audit
	hub := nodelink.NewHub(nodelink.HubConfig{Store: st, JoinToken: joinToken, Local: node, Log: log,
		Announce: func(ctx context.Context, name string) error {
			// The node has no identity yet: it holds the join token.
			_, err := auditLog.Append(ctx, audit.Entry{Actor: audit.Actor{Kind: audit.ActorAnonymous, Issuer: "join-token"},
				Action: "node.join", Target: audit.Target{Node: name}, Decision: audit.Allow})
			return err
		}})
	defer func() {
		hub.Close()
		side.stop(cfg.StopOnExit)
	}()
	if joinToken == "" {
		log.Info("nodes: joining is disabled (no --join-token-file); nodes that joined before still connect")
	}
	acfg := side.api
	acfg.NodeLink = hub
	srv := apiserver.New(acfg)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: listen: %w", err)
	}
	advertised, err := advertiseURL(cfg.AdvertiseURL, cfg.Listen, ln.Addr())
	if err == nil {
		err = advertise(ctx, st, node, advertised, log)
	}
	if err != nil {
		ln.Close()
		return err
	}
	// The nodes that connect here to serve sessions are reached through
	// this server: their URL is this one's.
	hub.SetURL(advertised)
	hs := srv.HTTPServer() // the timeouts: apiserver.Timeouts
	if hs.Handler, err = newDashboard(cfg.Home, hs.Handler, side.oidcIssuers, log); err != nil {
		ln.Close()
		return err
	}
	log.Info("cove server listening", "addr", "http://"+ln.Addr().String(), "home", cfg.Home, "accel", side.driver.Accel(), "policy", side.policy, "node", node)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	if cfg.E2BListen != "" {
		e2bSrv, err := serveE2B(ctx, cfg, side.serverID, node, side.mgr, st, side.authn, side.authorize, auditLog, hub, log, errc)
		if err != nil {
			return err
		}
		defer e2bSrv.Close()
	}

	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	hub.Close() // the nodes' connections, which Shutdown does not track
	log.Info("stopped: API")
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// secretBox is the Box that seals secrets, with the key of
// secret.EnvKey, else of --secret-key, which must exist, else of
// HOME/secret.key, made at the first start.
func secretBox(cfg serverConfig) (*secret.Box, error) {
	load, path := secret.LoadKey, cfg.SecretKey
	if path == "" {
		load, path = secret.LoadOrCreateKey, filepath.Join(cfg.Home, "secret.key")
	}
	key, err := load(path)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	box, err := secret.NewBox(key)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return box, nil
}

// loadPolicy makes the policy engine the server starts with: the policy
// in the file at path, or the built-in default when path is "". A file
// that cannot be read or does not check is an error, each problem at its
// line and column: the server does not start with another policy than
// the one it was given.
func loadPolicy(ctx context.Context, path string) (*policy.Engine, error) {
	eng := policy.New()
	if path == "" {
		return eng, nil
	}
	if err := eng.Load(ctx, path); err != nil {
		if pe, ok := errors.AsType[*policy.Error](err); ok {
			return nil, fmt.Errorf("server: --policy %s does not check, so the server does not start:\n%w", path, pe)
		}
		return nil, fmt.Errorf("server: --policy: %w", err)
	}
	return eng, nil
}

// reloadPolicy loads the policy file at path into eng again, as SIGHUP
// asks. A file that cannot be read or does not check changes nothing: the
// policy in force stays, and the error, each problem at its line, is
// logged and returned.
func reloadPolicy(ctx context.Context, eng *policy.Engine, path string, log *slog.Logger) error {
	if path == "" {
		log.Info("policy: SIGHUP, but the server has no --policy file; the built-in policy stays")
		return nil
	}
	if err := eng.Load(ctx, path); err != nil {
		log.Error("policy: reload refused; the policy in force stays", "file", path, "err", err)
		return err
	}
	log.Info("policy reloaded", "file", path)
	return nil
}

// watchPolicy reloads the policy on every SIGHUP until ctx is done. The
// signal is caught from the return on (unhandled, SIGHUP ends a process).
func watchPolicy(ctx context.Context, eng *policy.Engine, path string, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = reloadPolicy(ctx, eng, path, log)
			}
		}
	}()
}

// openAuditLog opens the audit log at HOME/audit, its key at
// audit.DefaultKeyPath, made at the first start. It is always on: a server
// that cannot open it does not start. tessera logs through klog, which is
// sent to log.
func openAuditLog(ctx context.Context, home string, log *slog.Logger, crash func(string)) (*audit.Log, error) {
	klog.SetSlogLogger(log.With("from", "tessera"))
	dir := filepath.Join(home, "audit")
	l, err := audit.Open(ctx, dir, audit.Options{Log: log, CrashPoint: crash})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	log.Info("audit log open", "dir", dir, "key", audit.DefaultKeyPath(dir), "verifier_key", l.VerifierKey())
	return l, nil
}

// closeAuditLog publishes the last checkpoint and closes the log, waiting
// at most 15 s.
func closeAuditLog(l *audit.Log, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		log.Error("audit log: close", "err", err)
		return
	}
	log.Info("stopped: audit log")
}

// crashPointEnv names the step at which the server kills itself with
// SIGKILL, for the crash-safety tests: only tests set it.
const crashPointEnv = "COVE_TEST_CRASH_AT"

// crashPoint returns the hook that kills the server at the step named by
// COVE_TEST_CRASH_AT, or nil when it is unset.
func crashPoint(log *slog.Logger) func(string) {
	at := os.Getenv(crashPointEnv)
	if at == "" {
		return nil
	}
	log.Warn("test crash point armed: the server kills itself there", "env", crashPointEnv, "step", at)
	return func(name string) {
		if name != at {
			return
		}
		fmt.Fprintf(os.Stderr, "crash point %s: SIGKILL\n", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered at once to every thread
	}
}

// qemuAccess checks that QEMU's user can reach paths (see
// qemu.Driver.CheckAccess). Where a directory above home blocks it, another
// --home is offered besides the chmod.
func qemuAccess(d *qemu.Driver, home string, paths ...string) error {
	err := d.CheckAccess(paths...)
	if err == nil {
		return nil
	}
	if ae, ok := errors.AsType[*qemu.AccessError](err); ok && ae.Op == "enter" {
		if real, rerr := filepath.EvalSymlinks(home); rerr == nil && strings.HasPrefix(real, strings.TrimSuffix(ae.Path, "/")+"/") {
			return fmt.Errorf("server: %w, or choose a --home outside %s", err, ae.Path)
		}
	}
	return fmt.Errorf("server: %w", err)
}

// hookSecrets gives the webhook receiver the secrets kept in the store.
type hookSecrets struct{ st store.Store }

func (h hookSecrets) Secret(ctx context.Context, hook string) ([]byte, bool, error) {
	b, err := h.st.GetHookSecret(ctx, hook)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// firstAdmin makes the server's first admin user (named admin) while no
// user is an admin: the admin token only bootstraps, and the CLI on this
// host signs in as this user (bootstrapSignIn). A name taken by a user of
// another kind is logged with how to make an admin, and the server starts
// regardless: the admin token can.
func firstAdmin(ctx context.Context, dir *identity.Directory, log *slog.Logger) error {
	u, made, err := dir.FirstAdmin(ctx)
	switch {
	case api.IsCode(err, api.CodeConflict):
		log.Warn("no admin user", "err", err)
		return nil
	case err != nil:
		return fmt.Errorf("server: %w", err)
	case made:
		log.Info("made the first admin user", "user", u.Name, "id", u.ID)
	}
	return nil
}

// adminToken reads the admin token, creating it (0600) on first start.
func adminToken(path string) (string, error) {
	for range 2 {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			if tok := strings.TrimSpace(string(b)); tok != "" {
				return tok, nil
			}
			// Empty: left by a server killed between its create and its
			// write (before the file was written whole): made anew.
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("server: admin token: %w", err)
			}
		case !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("server: admin token: %w", err)
		}
		r := make([]byte, 32)
		if _, err := rand.Read(r); err != nil {
			return "", err
		}
		tok := hex.EncodeToString(r)
		// Whole or not at all, 0600, durable; never over another's.
		if err := keyfile.Create(path, []byte(tok+"\n")); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue // another server on this home made it first: its token
			}
			return "", fmt.Errorf("server: admin token: %w", err)
		}
		return tok, nil
	}
	return "", fmt.Errorf("server: admin token: %s is empty", path)
}

// homeServerID is the id the server on home goes by in its store: the
// owner of the work it claims there (session.Config.ServerID). It is made
// once and kept in HOME/server-id, so that a server restarted on the same
// home, after a crash too, still owns the claims its last run held (a
// template build cut short is its own to settle, not another server's to
// wait for until the lease expires).
func homeServerID(home string) (string, error) {
	p := filepath.Join(home, "server-id")
	for range 2 {
		id, err := keyfile.Read(p)
		if err == nil && id != "" {
			return id, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("server id: %w", err)
		}
		err = keyfile.Create(p, []byte("srv-"+rand.Text()[:12]+"\n"))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("server id: %w", err)
		}
	}
	return "", fmt.Errorf("server id: %s is empty", p)
}

// hostname is this host's name, the embedded node's default name; "cove"
// if it has none.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "cove"
}

// embeddedNode registers the server's embedded node (--node) with a
// probe of this host and returns its id; "" with --node=false.
func embeddedNode(ctx context.Context, cfg serverConfig, st store.Store, accel string, log *slog.Logger) (string, error) {
	if !cfg.Node {
		log.Info("no embedded node (--node=false): this server runs no VMs")
		return "", nil
	}
	if cfg.NodeHeartbeat <= 0 || cfg.NodeGrace <= cfg.NodeHeartbeat {
		return "", fmt.Errorf("server: --node-grace (%v) must be longer than --node-heartbeat (%v), which must be positive", cfg.NodeGrace, cfg.NodeHeartbeat)
	}
	if f := fenceAfter(cfg.DB, cfg.NodeGrace); f > 0 && f <= cfg.NodeHeartbeat {
		return "", fmt.Errorf("server: --node-grace (%v) must be more than twice --node-heartbeat (%v) with a shared store: a node that goes half the grace without a heartbeat freezes its VMs", cfg.NodeGrace, cfg.NodeHeartbeat)
	}
	c, err := probeNode(ctx, cfg.Home, accel, fenceAfter(cfg.DB, cfg.NodeGrace))
	if err != nil {
		return "", fmt.Errorf("server: %w", err)
	}
	n, err := session.RegisterEmbeddedNode(ctx, st, cfg.NodeName, c)
	if err != nil {
		return "", fmt.Errorf("server: %w", err)
	}
	log.Info("embedded node registered", "node", n.ID, "name", n.Name, "vcpus", c.VCPUs, "memory_mib", c.MemoryMiB, "accel", c.Accel)
	return n.ID, nil
}
