package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/routing"
	"github.com/cove-dev/cove/internal/secret"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// sessionSide is what runs sessions in a cove process: 'cove server' for
// its embedded node, and 'cove node' with a shared store for the node it
// joined. Both build it with openSessionSide, so that a node runs its
// sessions exactly as a server does.
type sessionSide struct {
	log         *slog.Logger
	st          store.Store
	audit       *audit.Log
	driver      *qemu.Driver
	mgr         *session.Manager
	serverID    string
	node        string
	oidcIssuers []identity.OIDCIssuer
	authn       *identity.Authenticator
	authorize   func(context.Context, apiserver.Action) error
	policy      string // the policy's source, for the start's log line
	// api is the configuration of cove's API handler, all but what only
	// a server has (NodeLink: the hub the nodes connect to).
	api     apiserver.Config
	closers []func() // run in reverse by close
}

// sessionSideOptions is what differs between the processes that run
// sessions.
type sessionSideOptions struct {
	// Node gives the id of the node this process runs sessions for, once
	// the store is open; "" runs none (an API server only).
	Node func(ctx context.Context, st store.Store, accel string) (string, error)
	// Linked: that node is a joined one, heartbeating over its control
	// connection (session.Config.Linked).
	Linked bool
}

// close closes what openSessionSide opened, last first. The manager is
// the caller's to stop (Close or StopAll) before.
func (s *sessionSide) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// openSessionSide opens the store, the object store, the secret key, the
// audit log, the QEMU driver, the kernel and images, the issuer, egress,
// the session manager (recovered) and the API's authentication and
// policy, as cfg says. The policy is reloaded on SIGHUP until ctx ends.
// On an error, what was opened is closed.
func openSessionSide(ctx context.Context, cfg serverConfig, opts sessionSideOptions, log *slog.Logger) (side *sessionSide, err error) {
	s := &sessionSide{log: log}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	// First: a policy that does not check stops the process before it
	// touches anything.
	policies, err := loadPolicy(ctx, cfg.Policy)
	if err != nil {
		return nil, err
	}
	watchPolicy(ctx, policies, cfg.Policy, log)
	if s.oidcIssuers, err = parseOIDCIssuers(cfg.OIDCIssuers); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Home, 0o711); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	token, err := adminToken(filepath.Join(cfg.Home, "admin.token"))
	if err != nil {
		return nil, err
	}
	secrets, err := secretBox(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.AgentPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		cfg.AgentPath = filepath.Join(filepath.Dir(exe), "cove-agent")
	}
	if _, err := os.Stat(cfg.AgentPath); err != nil {
		return nil, fmt.Errorf("server: guest agent binary: %w (build it with 'make build' or pass --agent)", err)
	}

	st, err := openStore(ctx, cfg.DB, cfg.Home, log)
	if err != nil {
		return nil, err
	}
	s.st = st
	s.closers = append(s.closers, func() { st.Close() })
	objects, err := openObjectStore(ctx, cfg.Objects, cfg.Home, cfg.GCGrace, log)
	if err != nil {
		return nil, err
	}
	// A lost or replaced key leaves secrets no one can open: say so now,
	// not at a session's first request.
	if n, err := (&secret.Resolver{Store: st, Box: secrets}).Check(ctx); err != nil {
		log.Error("secrets: stored secrets do not open with this key; sessions' requests go without them until the key they were sealed with is back (--secret-key, "+secret.EnvKey+")", "secrets", n, "err", err)
	}

	sessions := filepath.Join(cfg.Home, "sessions")
	crash := crashPoint(log)
	auditLog, err := openAuditLog(ctx, cfg.Home, log, crash)
	if err != nil {
		return nil, err
	}
	s.audit = auditLog
	s.closers = append(s.closers, func() { closeAuditLog(auditLog, log) })
	qcfg := qemu.Config{Accel: cfg.Accel, User: cfg.QEMUUser, AllowRootVMs: cfg.AllowRootVMs, GuestCmdline: cfg.GuestCmdline,
		CgroupRoot: cfg.CgroupRoot, CgroupTag: qemu.CgroupTag(cfg.Home), AllowNoCgroups: cfg.AllowNoCgroups, Log: log, CrashPoint: crash}
	if cfg.Spares > 0 {
		// Beside the sessions: a claimed spare's sockets are renamed into
		// its session's directory.
		qcfg.SpareDir, qcfg.Spares = filepath.Join(sessions, ".spares"), cfg.Spares
	}
	driver, err := qemu.New(qcfg)
	if err != nil {
		return nil, err
	}
	s.driver = driver
	s.closers = append(s.closers, func() {
		driver.Close()
		log.Info("stopped: spare QEMU processes")
	})
	// QEMU runs as cfg.QEMUUser; a home it cannot reach would fail only
	// at the first create. Checked before the kernel is fetched.
	if err := qemuAccess(driver, cfg.Home, cfg.Home, sessions); err != nil {
		return nil, err
	}

	builder := &image.Builder{Home: cfg.Home, AgentPath: cfg.AgentPath, Records: st, Objects: objects, Log: log}
	progress := func(msg string) { log.Info(msg) }
	k, err := builder.Kernel(ctx, progress)
	if err != nil {
		return nil, err
	}
	vmFiles := []string{k.Vmlinux} // what QEMU reads: its kernel, the images' root file systems
	for _, name := range append([]string{cfg.DefaultImage}, cfg.Images...) {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		im, err := builder.BuildImage(ctx, name, progress)
		if err != nil {
			return nil, err
		}
		vmFiles = append(vmFiles, im.RootFS)
	}
	if err := qemuAccess(driver, cfg.Home, vmFiles...); err != nil {
		return nil, err
	}

	tokens, err := newSessionTokens(cfg, st, log)
	if err != nil {
		return nil, err
	}
	oidc, err := newServerOIDC(ctx, s.oidcIssuers, st, log)
	if err != nil {
		return nil, err
	}
	dir := &identity.Directory{Store: st}
	if err := firstAdmin(ctx, dir, log); err != nil {
		return nil, err
	}
	egressBroker, err := newEgress(cfg, st, secretCredentials{&secret.Resolver{Store: st, Box: secrets}}, policies, auditLog, log)
	if err != nil {
		return nil, err
	}
	metrics := apiserver.NewMetrics()
	if s.serverID, err = homeServerID(cfg.Home); err != nil {
		return nil, err
	}
	if s.node, err = opts.Node(ctx, st, driver.Accel()); err != nil {
		return nil, err
	}
	mgr, err := session.New(session.Config{Tokens: tokens.minter, Egress: egressBroker, ServerID: s.serverID,
		Node: s.node, NoNode: s.node == "", Linked: opts.Linked, Route: true,
		NodeHeartbeat: cfg.NodeHeartbeat, NodeGrace: cfg.NodeGrace, FenceAfter: fenceAfter(cfg.DB, cfg.NodeGrace),
		NodeProbe: func(ctx context.Context) (store.NodeCapacity, error) {
			return probeNode(ctx, cfg.Home, driver.Accel(), fenceAfter(cfg.DB, cfg.NodeGrace))
		},
		Store: st, Driver: driver, Images: builder, Dir: sessions, Log: log,
		DefaultImage: cfg.DefaultImage, DefaultIdleTimeout: cfg.IdleTimeout, CloneFiles: cfg.CloneFiles,
		CrashPoint: crash, Objects: objects, CacheSize: int64(cfg.CacheSize), GCInterval: cfg.GCInterval, GCGrace: cfg.GCGrace,
		IdempotencyTTL: cfg.KeyTTL,
		OnEvent: session.Hooks(session.AuditEvents(auditLog), session.ObserveDurations(metrics.ObservePark, metrics.ObserveWake),
			session.ObserveStores(metrics.ObserveStore), session.ObserveEvictions(metrics.ObserveEviction)),
		Admission:      session.Admission{MemoryOvercommit: cfg.MemoryOvercommit, CPUOvercommit: cfg.CPUOvercommit},
		MaxCheckpoints: cfg.MaxCheckpoints, GuestCheckpointBurst: cfg.GuestCheckpointBurst,
		GuestCheckpointEvery: cfg.GuestCheckpointEvery, GuestCheckpointsAtOnce: cfg.GuestCheckpointsAtOnce,
	})
	if err != nil {
		return nil, err
	}
	if err := mgr.Recover(ctx); err != nil {
		return nil, err
	}
	s.mgr = mgr
	if cfg.CacheSize > 0 {
		metrics.WatchCache(func() (int64, int64) {
			u := mgr.CacheUsage()
			return u.Bytes, u.Limit
		})
		log.Info("node cache: stored parked sessions' files are evicted past its bound", "cache_size", int64(cfg.CacheSize))
	}

	if secret := os.Getenv("COVE_GITHUB_WEBHOOK_SECRET"); secret != "" {
		if err := st.PutHookSecret(ctx, trigger.GitHubHook, []byte(secret)); err != nil {
			return nil, err
		}
	}
	hooks := &trigger.Receiver{Secrets: hookSecrets{st}, Sink: mgr, Log: log,
		SpoolDir: filepath.Join(cfg.Home, "tmp"), MaxPendingMemory: int64(cfg.WebhookMemory) << 20,
		OnReject: func(source, reason string, status int) {
			log.Warn("webhook rejected", "hook", source, "status", status, "reason", reason)
		}}
	s.authn = identity.NewAuthenticator(identity.AuthConfig{AdminToken: token, Store: st, Log: log, JWT: append(oidc.verifiers, tokens.verifiers...)})
	s.authorize = (&apiserver.PolicyGate{Policy: policies, Records: st}).Authorize
	s.api = apiserver.Config{Sessions: mgr, Images: builder, Token: token, Log: log, Metrics: metrics,
		Hooks: hooks, HookSecrets: st,
		Issuer:        tokens.handler,
		Authenticator: s.authn,
		SignIn:        oidc.signIn,
		Identities:    dir,
		Secrets:       &secret.Keeper{Store: st, Box: secrets},
		GC:            mgr.GC,
		Nodes:         mgr,
		Audit:         auditLog,
		AuditLog:      auditLog,
		Router:        routing.New(st, s.node),
		Authorize:     s.authorize}
	s.policy, _ = policies.Source()
	return s, nil
}

// stop stops the session side: with stopVMs every VM (--stop-on-exit),
// else the manager alone, leaving the VMs for the next process on this
// home to adopt; then what openSessionSide opened.
func (s *sessionSide) stop(stopVMs bool) {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if stopVMs {
		s.mgr.StopAll(sctx)
		s.log.Info("stopped: sessions and their VMs")
	} else {
		s.mgr.Close()
		s.log.Info("stopped: sessions (their VMs run on, for the next process to adopt)")
	}
	s.close()
}
