package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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

	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// serverConfig is everything 'cove server' is configured with.
type serverConfig struct {
	Listen       string
	Home         string
	Accel        string
	AgentPath    string
	QEMUUser     string
	Images       []string // built at start when missing
	DefaultImage string
	StopOnExit   bool
	IdleTimeout  time.Duration
	Spares       int // spare QEMU processes per machine shape; 0: none
	CloneFiles   int // clone files made ahead per template; 0: none
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

func newServerCmd() *cobra.Command {
	cfg := serverConfig{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the API server and the local node (one host, SQLite, local snapshots)",
		Long: `Run the cove API server on this host: sessions are QEMU microVMs started
here, state is kept in SQLite under COVE_HOME.

QEMU processes outlive the server on purpose: a restarted server re-adopts
the running sessions. Use --stop-on-exit to stop every VM when the server
exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServer(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", envOr("COVE_LISTEN", "127.0.0.1:7070"), "address to listen on (COVE_LISTEN)")
	f.StringVar(&cfg.Home, "home", envOr("COVE_HOME", defaultHome), "data directory (COVE_HOME)")
	f.StringVar(&cfg.Accel, "accel", envOr("COVE_ACCEL", "auto"), "accelerator: auto, kvm or tcg (COVE_ACCEL)")
	f.StringVar(&cfg.AgentPath, "agent", os.Getenv("COVE_AGENT"), "static cove-agent binary (COVE_AGENT; default: next to this binary)")
	f.StringVar(&cfg.QEMUUser, "qemu-user", envOr("COVE_QEMU_USER", "cove-vm"), "unprivileged user QEMU runs as when the server is root (COVE_QEMU_USER)")
	f.StringSliceVar(&cfg.Images, "build-images", nil, "images to build at start if missing (e.g. tiny,debian)")
	f.StringVar(&cfg.DefaultImage, "default-image", "tiny", "image for sessions that name none")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", envDuration("COVE_IDLE_TIMEOUT", 30*time.Minute), "park sessions idle this long (no API call, nothing attached); 0 never; a session's own --idle-timeout wins (COVE_IDLE_TIMEOUT)")
	f.IntVar(&cfg.Spares, "spares", envInt("COVE_SPARES", 1), "QEMU processes kept started ahead for each machine shape woken lately, so a wake or a create from a template skips QEMU's start; 0 none (COVE_SPARES)")
	f.IntVar(&cfg.CloneFiles, "clone-files", envInt("COVE_CLONE_FILES", 1), "sets of a clone's files (a copy of the template's RAM file, a disk overlay) kept made ahead for each ready template, so a create from an empty pool does not copy; 0 none (COVE_CLONE_FILES)")
	f.BoolVar(&cfg.StopOnExit, "stop-on-exit", false, "stop every VM when the server exits (default: leave them for the next server to adopt)")
	return cmd
}

func runServer(ctx context.Context, cfg serverConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(cfg.Home, 0o711); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	token, err := adminToken(filepath.Join(cfg.Home, "admin.token"))
	if err != nil {
		return err
	}
	if cfg.AgentPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		cfg.AgentPath = filepath.Join(filepath.Dir(exe), "cove-agent")
	}
	if _, err := os.Stat(cfg.AgentPath); err != nil {
		return fmt.Errorf("server: guest agent binary: %w (build it with 'make build' or pass --agent)", err)
	}

	st, err := sqlite.Open(ctx, filepath.Join(cfg.Home, "state.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	builder := &image.Builder{Home: cfg.Home, AgentPath: cfg.AgentPath, Records: st}
	progress := func(msg string) { log.Info(msg) }
	if _, err := builder.Kernel(ctx, progress); err != nil {
		return err
	}
	for _, name := range append([]string{cfg.DefaultImage}, cfg.Images...) {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if _, err := builder.BuildImage(ctx, name, progress); err != nil {
			return err
		}
	}

	sessions := filepath.Join(cfg.Home, "sessions")
	qcfg := qemu.Config{Accel: cfg.Accel, User: cfg.QEMUUser, CgroupRoot: "/sys/fs/cgroup", Log: log}
	if cfg.Spares > 0 {
		// Beside the sessions: a claimed spare's sockets are renamed into
		// its session's directory.
		qcfg.SpareDir, qcfg.Spares = filepath.Join(sessions, ".spares"), cfg.Spares
	}
	driver, err := qemu.New(qcfg)
	if err != nil {
		return err
	}
	defer driver.Close()
	metrics := apiserver.NewMetrics()
	mgr, err := session.New(session.Config{
		Store: st, Driver: driver, Images: builder, Dir: sessions, Log: log,
		DefaultImage: cfg.DefaultImage, DefaultIdleTimeout: cfg.IdleTimeout, CloneFiles: cfg.CloneFiles,
	})
	if err != nil {
		return err
	}
	if err := mgr.Recover(ctx); err != nil {
		return err
	}

	if secret := os.Getenv("COVE_GITHUB_WEBHOOK_SECRET"); secret != "" {
		if err := st.PutHookSecret(ctx, trigger.GitHubHook, []byte(secret)); err != nil {
			return err
		}
	}
	hooks := &trigger.Receiver{Secrets: hookSecrets{st}, Sink: mgr, Log: log,
		OnReject: func(source, reason string, status int) {
			log.Warn("webhook rejected", "hook", source, "status", status, "reason", reason)
		}}
	srv := apiserver.New(apiserver.Config{Sessions: mgr, Images: builder, Token: token, Log: log, Metrics: metrics,
		Hooks: hooks, HookSecrets: st})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: listen: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("cove server listening", "addr", "http://"+ln.Addr().String(), "home", cfg.Home, "accel", driver.Accel())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	if cfg.StopOnExit {
		mgr.StopAll(sctx)
	} else {
		mgr.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// hookSecrets gives the webhook receiver the secrets kept in the store.
type hookSecrets struct{ st *sqlite.Store }

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

// adminToken reads the admin token, creating it (0600) on first start.
func adminToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("server: admin token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return tok, nil
}
