// Command covebench measures cove end to end — real QEMU microVMs behind the
// real HTTP API — and prints a table of p50/p95 latencies with the ratio to
// each target. It is what 'make bench' runs.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/e2b/sdktest"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

func main() {
	home := flag.String("home", envOr("COVE_BENCH_HOME", "/var/tmp/cove-bench"), "data dir (images are cached here between runs)")
	agent := flag.String("agent", "bin/cove-agent", "cove-agent binary")
	boots := flag.Int("boots", 10, "cold boots of tiny")
	debianBoots := flag.Int("debian-boots", 3, "cold boots of debian (0 skips the debian image)")
	execs := flag.Int("execs", 100, "exec round trips")
	files := flag.Int("files", 30, "1 MiB write+read round trips")
	idle := flag.Int("idle-vms", 3, "idle VMs measured for RSS")
	parks := flag.Int("parks", 20, "park/wake cycles")
	clones := flag.Int("clones", 10, "clones of one template (create from template, PSS)")
	rebuilds := flag.Int("rebuilds", 3, "pushes to a template that follows a repo, each timed until its new version is live (needs debian)")
	wakeOnly := flag.Bool("wake-only", false, "after the cold boots and execs, measure park and wake only (no raw QEMU, templates or triggers)")
	egressSamples := flag.Int("egress-samples", 20, "samples of the egress figures' small requests (0 skips them; the rest: 3 each; needs debian)")
	only := flag.String("only", "", "run one section alone: audit (an audited exec against a plain one, audited calls/s, inclusion proofs, verify), checkpoint (a running session's checkpoint pause, bytes added, rollback → exec, fork -forks → all answering), egress (HTTPS through the proxy: host and guest, download, git clone), hostile (a quiet session's execs while its neighbour attacks), safety (the crash, fault and load figures of the last make test), store (snapshots in a loopback S3 store: bytes a parked clone adds, a second park adds, wake with the local files gone, upload throughput), scale (make bench-scale: -storm clones parked and woken at once, then -scale-clones parked and stored under -cache-size-mib), identity (policy decisions, authentication, session-token minting; no VM), placement (placement decisions over 1,000 simulated nodes holding 100,000 sessions; no VM), e2b (the official E2B SDK: create → first run with and without a warm pool, pause, connect → run, a command round trip against cove's own exec; needs debian and node), nodelink (what a node's control connection adds to a server → node call, and to a call of the node's driver and a guest agent round trip over it; the fake VMM, no VM), dashboard (the web dashboard in headless chromium: first load, terminal keystroke → echo against the exec WebSocket's, then the list of -dashboard-sessions sessions; needs chromium and make build), dashboard-list (that list alone: -dashboard-sessions sessions on the fake VMM, load, render, update latency; no VM), route (what routing through another server adds to an exec round trip, and relaying over a session-serving node's link; in-process servers and node, the fake VMM, no VM), nodeloss (from a node's last heartbeat until its parked session runs on another node; in-process servers, the fake VMM), apiload (inspect, list and exec under -apiload-clients concurrent clients across two in-process servers, the fake VMM), crosswake (-parks cross-host wakes: a session parked and stored in S3 on node B, B dead, woken through A from S3 → first exec; two in-process servers, real VMs)")
	placementSamples := flag.Int("placement-samples", 5000, "-only placement: decisions timed")
	nodelinkSamples := flag.Int("nodelink-samples", 2000, "-only nodelink: round trips timed each way")
	routeSamples := flag.Int("route-samples", 1000, "-only route: exec round trips timed each way")
	routeProcs := flag.Bool("route-procs", true, "-only route: measure again with client, servers and node in separate processes")
	routeServe := flag.String("route-serve", "", "internal (-only route's separate processes): serve this role (embedded, link, node)")
	routeDir := flag.String("route-dir", "", "internal: -route-serve's fleet directory")
	routeName := flag.String("route-name", "", "internal: -route-serve's server or node name")
	routeVia := flag.String("route-via", "", "internal: -route-serve node's server URL")
	nodelossSamples := flag.Int("nodeloss-samples", 10, "-only nodeloss: node losses timed")
	nodelossGrace := flag.Duration("nodeloss-grace", 2*time.Second, "-only nodeloss: the node grace (heartbeats every fifth of it)")
	apiloadClients := flag.Int("apiload-clients", 200, "-only apiload: concurrent clients, half through each server")
	apiloadRounds := flag.Int("apiload-rounds", 20, "-only apiload: rounds (inspect, list, exec) per client")
	apiloadSessions := flag.Int("apiload-sessions", 100, "-only apiload: sessions, spread over both nodes")
	identitySamples := flag.Int("identity-samples", 2000, "samples of each identity figure")
	testJSON := flag.String("test-json", envOr("TESTJSON", filepath.Join(os.TempDir(), "cove-test.json")), "the go test -json record of the last make test, for the safety figures (TESTJSON)")
	hostileExecs := flag.Int("hostile-execs", 30, "neighbour execs per phase of the hostile section (0 skips it)")
	hostileEvery := flag.Duration("hostile-every", 500*time.Millisecond, "spacing of the neighbour's execs in the hostile section")
	storm := flag.Int("storm", 64, "-only scale: clones parked at once, then woken at once")
	scaleClones := flag.Int("scale-clones", 1000, "-only scale: clones made and parked in the long run")
	scaleParallel := flag.Int("scale-parallel", 4, "-only scale: clones made and parked at once in the long run")
	cacheSize := flag.Int64("cache-size-mib", 2048, "-only scale: the node cache bound for session files, MiB (0: none)")
	checkpoints := flag.Int("checkpoints", 10, "checkpoint → rollback cycles (0 skips the checkpoint rows)")
	forks := flag.Int("forks", 8, "forks made at once from a checkpoint")
	e2bSandboxes := flag.Int("e2b-sandboxes", 3, "E2B SDK sandboxes made each way, with no pool and with a warm one (0 skips the E2B rows; needs debian, node)")
	e2bRuns := flag.Int("e2b-runs", 20, "E2B SDK commands.run round trips in each sandbox")
	dashLoads := flag.Int("dashboard-loads", 10, "-only dashboard: page loads timed")
	dashKeys := flag.Int("dashboard-keys", 100, "-only dashboard: keystrokes timed each way")
	dashSessions := flag.Int("dashboard-sessions", 1000, "-only dashboard, dashboard-list: sessions in the timed list (fake VMM)")
	verbose := flag.Bool("v", false, "log at info level (the session manager's timings: restore spawn_ms, agent_ms, …)")
	flag.Parse()
	if *routeServe != "" {
		if err := serveRouteRole(*routeServe, *routeDir, *routeName, *routeVia); err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		return
	}
	cfg := config{boots: *boots, debianBoots: *debianBoots, execs: *execs, files: *files, idle: *idle, parks: *parks, clones: *clones}
	cfg.verbose, cfg.wakeOnly, cfg.rebuilds = *verbose, *wakeOnly, *rebuilds
	cfg.dashLoads, cfg.dashKeys, cfg.dashSessions = max(*dashLoads, 1), max(*dashKeys, 1), max(*dashSessions, 1)
	cfg.only, cfg.testJSON = *only, *testJSON
	cfg.hostile = hostileConfig{execs: *hostileExecs, every: *hostileEvery, ramp: 2 * time.Second, attack: 20 * time.Second}
	cfg.identitySamples, cfg.egressSamples = *identitySamples, *egressSamples
	cfg.checkpoints, cfg.forks = *checkpoints, *forks
	cfg.e2bSandboxes, cfg.e2bRuns = *e2bSandboxes, *e2bRuns
	cfg.scale = scaleConfig{storm: *storm, clones: *scaleClones, parallel: *scaleParallel, cacheSize: *cacheSize << 20}
	switch cfg.only {
	case "":
	case "identity":
		rows, err := identityRows(context.Background(), cfg.identitySamples)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "in-process", rows)
		return
	case "placement":
		rows, err := placementRows(*placementSamples, 1000, 100000)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		usage, err := storeUsageRows(context.Background(), 20, 1000, 100000)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		rows = append(rows, usage...)
		printTable(os.Stdout, "in-process", rows)
		return
	case "dashboard-list":
		rows, err := dashboardListRows(context.Background(), max(*dashSessions, 1), cfg.dashLoads, 10)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "in-process", rows)
		return
	case "route":
		rows, err := routeRows(*routeSamples)
		if err == nil {
			var linked []row
			linked, err = linkRouteRows(*routeSamples)
			rows = append(rows, linked...)
		}
		if err == nil && *routeProcs {
			var procs []row
			procs, err = routeProcRows(*routeSamples)
			rows = append(rows, procs...)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "in-process", rows)
		return
	case "nodeloss", "apiload":
		var rows []row
		var err error
		if cfg.only == "nodeloss" {
			rows, err = nodeLossRows(*nodelossSamples, *nodelossGrace/5, *nodelossGrace)
		} else {
			rows, err = apiLoadRows(*apiloadClients, *apiloadRounds, *apiloadSessions)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "in-process", rows)
		return
	case "nodelink":
		rows, err := nodelinkRows(*nodelinkSamples)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "in-process", rows)
		return
	case "safety":
		rows, err := safetyRows(*testJSON)
		if err != nil {
			fmt.Fprintln(os.Stderr, "covebench:", err)
			os.Exit(1)
		}
		printTable(os.Stdout, "tests", rows)
		return
	case "audit", "store", "scale", "checkpoint", "dashboard", "crosswake":
		cfg.debianBoots = 0
	case "e2b":
		if cfg.e2bSandboxes <= 0 {
			fmt.Fprintln(os.Stderr, "covebench: -only e2b needs -e2b-sandboxes > 0")
			os.Exit(2)
		}
		cfg.debianBoots = 1 // builds the image; no cold boots are timed
	case "egress":
		if cfg.egressSamples <= 0 {
			fmt.Fprintln(os.Stderr, "covebench: -only egress needs -egress-samples > 0")
			os.Exit(2)
		}
		cfg.debianBoots = 1 // builds the image; no cold boots are timed
	case "hostile":
		if cfg.hostile.execs <= 0 {
			fmt.Fprintln(os.Stderr, "covebench: -only hostile needs -hostile-execs > 0")
			os.Exit(2)
		}
		cfg.debianBoots = 0
	default:
		fmt.Fprintf(os.Stderr, "covebench: -only %q: the sections that run alone are: audit, checkpoint, e2b, egress, hostile, safety, store, scale, identity, placement, nodelink, route, nodeloss, apiload, crosswake, dashboard, dashboard-list\n", cfg.only)
		os.Exit(2)
	}
	if err := run(*home, *agent, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "covebench:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// row is one line of the table.
type row struct {
	name    string
	samples []float64 // ms, or MiB for memory rows
	unit    string
	target  float64 // 0: none
	// targetText and note, when set, replace the target and p50/target
	// columns; cells, when set, replaces every column after the name.
	targetText, note string
	cells            []string
}

func pct(s []float64, p float64) float64 {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	if len(c) == 0 {
		return 0
	}
	i := int(float64(len(c)-1)*p + 0.5)
	return c[i]
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

type config struct {
	boots, debianBoots, execs, files, idle, parks, clones int
	rebuilds, cloneFiles                                  int
	verbose, wakeOnly                                     bool
	only                                                  string // a section run alone
	testJSON                                              string // make test's go test -json record
	hostile                                               hostileConfig
	identitySamples                                       int // samples of each identity figure
	scale                                                 scaleConfig
	egressSamples                                         int // samples of the egress figures' small requests
	checkpoints, forks                                    int // checkpoint → rollback cycles; forks at once
	e2bSandboxes, e2bRuns                                 int // E2B SDK sandboxes each way; round trips in each
	dashLoads, dashKeys                                   int // dashboard page loads; keystrokes each way
	dashSessions                                          int // sessions in the dashboard's timed list
}

func run(home, agent string, cfg config) error {
	boots, debianBoots, execs, files, idle := cfg.boots, cfg.debianBoots, cfg.execs, cfg.files, cfg.idle
	ctx := context.Background()
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := os.MkdirAll(home, 0o711); err != nil {
		return err
	}
	agentPath, err := filepath.Abs(agent)
	if err != nil {
		return err
	}
	b := &image.Builder{Home: home, AgentPath: agentPath}
	progress := func(msg string) { fmt.Fprintln(os.Stderr, "bench:", msg) }
	if _, err := b.Kernel(ctx, progress); err != nil {
		return err
	}
	images := []string{"tiny"}
	if debianBoots > 0 {
		images = append(images, "debian")
	}
	for _, name := range images {
		if _, err := b.BuildImage(ctx, name, progress); err != nil {
			return err
		}
	}
	dbPath := filepath.Join(home, "bench.db")
	os.Remove(dbPath)
	st, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		return err
	}
	defer st.Close()
	sessDir := filepath.Join(home, "sessions")
	os.RemoveAll(sessDir)
	// Wired as 'cove server' wires it: one spare QEMU process per shape
	// unless COVE_SPARES says otherwise (0: none, for comparison).
	qcfg := qemu.Config{Accel: envOr("COVE_ACCEL", "auto"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", Log: log}
	if n, err := strconv.Atoi(envOr("COVE_SPARES", "1")); err != nil || n > 0 {
		qcfg.SpareDir, qcfg.Spares = filepath.Join(sessDir, ".spares"), max(n, 1)
	}
	driver, err := qemu.New(qcfg)
	if err != nil {
		return err
	}
	defer driver.Close()
	// And one set of clone files made ahead per template unless
	// COVE_CLONE_FILES says otherwise.
	if cfg.cloneFiles, err = strconv.Atoi(envOr("COVE_CLONE_FILES", "1")); err != nil {
		return fmt.Errorf("COVE_CLONE_FILES: %w", err)
	}
	eb, err := newEgressBench(home, st, log)
	if err != nil {
		return err
	}
	defer eb.close()
	scfg := session.Config{Store: st, Driver: driver, Images: b, Dir: sessDir, Log: log, CloneFiles: cfg.cloneFiles, Egress: eb.broker}
	if cfg.only == "scale" {
		// A storm runs more tiny VMs at once than the default overcommit
		// admits on a small host (16 vCPUs per core, 1.5× memory); a
		// tiny guest touches about a fifth of its 512 MiB.
		scfg.Admission = session.Admission{CPUOvercommit: 64, MemoryOvercommit: 3}
		scfg.CacheSize = cfg.scale.cacheSize
	}
	var objects *benchObjects
	if cfg.only == "store" || cfg.only == "scale" || cfg.only == "crosswake" {
		if objects, err = storeObjects(ctx); err != nil {
			return err
		}
		defer objects.stop()
		scfg.Objects = objects.cas
	}
	if cfg.only == "crosswake" {
		// A stored snapshot names the image it rests on, stored first.
		b.Objects, b.Records = objects.cas, st
		rows, err := crossWakeRows(ctx, home, driver, b, objects.cas, log, cfg.parks)
		if err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	mgr, err := session.New(scfg)
	if err != nil {
		return err
	}
	defer mgr.StopAll(context.Background())
	if err := mgr.Recover(ctx); err != nil { // starts the trigger deliverer
		return err
	}
	if err := st.PutHookSecret(ctx, "bench", []byte(hookSecret)); err != nil {
		return err
	}
	hooks := &trigger.Receiver{Secrets: benchSecrets{}, Sink: mgr}
	apiCfg := apiserver.Config{Sessions: mgr, Images: b, Token: "bench", Hooks: hooks,
		Identities: &identity.Directory{Store: st}, Authenticator: identity.NewAuthenticator(identity.AuthConfig{Store: st})}
	srv := httptest.NewServer(apiserver.New(apiCfg).Handler())
	defer srv.Close()
	c, token, err := benchClient(ctx, srv.URL, "bench")
	if err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "bench: accelerator %s\n", driver.Accel())
	var rows []row
	if cfg.only == "audit" {
		if rows, err = auditRows(ctx, home, c, token, apiCfg, cfg.execs); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "egress" {
		if rows, err = egressRows(ctx, c, eb, cfg.egressSamples); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "scale" {
		if rows, err = scaleRows(ctx, c, objects.objs, sessDir, cfg.scale); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "store" {
		if rows, err = storeRows(ctx, c, sessDir, cfg.clones, objects.fresh); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "e2b" {
		if rows, err = e2bRows(ctx, home, mgr, st, c, token, cfg.e2bSandboxes, max(cfg.e2bRuns, 1), log); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "dashboard" {
		if rows, err = dashboardRows(ctx, c, token, apiCfg, cfg.dashLoads, cfg.dashKeys); err != nil {
			return err
		}
		list, err := dashboardListRows(ctx, cfg.dashSessions, cfg.dashLoads, 10)
		if err != nil {
			return err
		}
		rows = append(rows, list...)
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "checkpoint" {
		if rows, err = checkpointRows(ctx, c, max(cfg.checkpoints, 1), max(cfg.forks, 1)); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}
	if cfg.only == "hostile" {
		if rows, err = hostileRows(ctx, c, srv.URL, cfg.hostile); err != nil {
			return err
		}
		printTable(os.Stdout, driver.Accel(), rows)
		return nil
	}

	coldBoot := func(name string, n int, target float64) error {
		r := row{name: "cold boot → first exec (" + name + ")", unit: "ms", target: target}
		for i := 0; i < n; i++ {
			t0 := time.Now()
			s, err := c.CreateSession(ctx, api.CreateSessionRequest{Image: name})
			if err != nil {
				return err
			}
			res, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}})
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("true exited %d", res.ExitCode)
			}
			r.samples = append(r.samples, ms(time.Since(t0)))
			if err := c.DeleteSession(ctx, s.ID); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench: boot %s %d/%d %.0f ms\n", name, i+1, n, r.samples[len(r.samples)-1])
		}
		rows = append(rows, r)
		return nil
	}
	if err := coldBoot("tiny", boots, 3000); err != nil {
		return err
	}
	if debianBoots > 0 {
		if err := coldBoot("debian", debianBoots, 0); err != nil {
			return err
		}
	}

	s, err := c.CreateSession(ctx, api.CreateSessionRequest{})
	if err != nil {
		return err
	}
	r := row{name: "exec round trip (true)", unit: "ms", target: 20}
	for i := 0; i < execs+5; i++ {
		t0 := time.Now()
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
			return err
		}
		if i >= 5 { // the first execs warm the guest's page cache and TCG
			r.samples = append(r.samples, ms(time.Since(t0)))
		}
	}
	rows = append(rows, r)

	blob := make([]byte, 1<<20)
	_, _ = rand.Read(blob)
	r = row{name: "1 MiB file write + read", unit: "ms"}
	for i := 0; i < files; i++ {
		t0 := time.Now()
		if err := c.WriteFile(ctx, s.ID, "/tmp/bench.bin", 0o644, bytes.NewReader(blob)); err != nil {
			return err
		}
		rc, err := c.ReadFile(ctx, s.ID, "/tmp/bench.bin")
		if err != nil {
			return err
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if !bytes.Equal(got, blob) {
			return fmt.Errorf("file round trip: content differs")
		}
		r.samples = append(r.samples, ms(time.Since(t0)))
	}
	rows = append(rows, r)
	if err := c.DeleteSession(ctx, s.ID); err != nil {
		return err
	}

	// Idle VMs: peak RSS (VmHWM) and PSS of each QEMU process.
	var ids []string
	for i := 0; i < idle; i++ {
		s, err := c.CreateSession(ctx, api.CreateSessionRequest{})
		if err != nil {
			return err
		}
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
			return err
		}
		ids = append(ids, s.ID)
	}
	time.Sleep(2 * time.Second)
	rss := row{name: "peak RSS per idle VM (512 MiB guest)", unit: "MiB"}
	pss := row{name: "PSS per idle VM", unit: "MiB"}
	for _, id := range ids {
		pid := qemu.PIDOf(sessDir, id)
		if pid == 0 {
			return fmt.Errorf("no QEMU process for %s", id)
		}
		rss.samples = append(rss.samples, procKiB(pid, "status", "VmHWM:")/1024)
		pss.samples = append(pss.samples, procKiB(pid, "smaps_rollup", "Pss:")/1024)
	}
	rows = append(rows, rss, pss)
	for _, id := range ids {
		_ = c.DeleteSession(ctx, id)
	}

	more, err := parkRows(ctx, c, driver, b, sessDir, cfg, pct(rows[0].samples, 0.5))
	if err != nil {
		return err
	}
	rows = append(rows, more...)
	if !cfg.wakeOnly {
		trig, err := triggerRows(ctx, c, srv.URL)
		if err != nil {
			return err
		}
		rows = append(rows, trig...)
		if cfg.checkpoints > 0 {
			ck, err := checkpointRows(ctx, c, cfg.checkpoints, max(cfg.forks, 1))
			if err != nil {
				return err
			}
			rows = append(rows, ck...)
		}
		if debianBoots > 0 && cfg.e2bSandboxes > 0 {
			e, err := e2bRows(ctx, home, mgr, st, c, token, cfg.e2bSandboxes, max(cfg.e2bRuns, 1), log)
			switch {
			case errors.Is(err, sdktest.ErrNoNode):
				fmt.Fprintln(os.Stderr, "bench: the E2B rows are skipped:", err)
			case err != nil:
				return err
			}
			rows = append(rows, e...)
		}
		if debianBoots > 0 && cfg.rebuilds > 0 {
			reb, err := rebuildRows(ctx, c, srv.URL, cfg.rebuilds)
			if err != nil {
				return err
			}
			rows = append(rows, reb...)
		}
	}
	if cfg.hostile.execs > 0 {
		hos, err := hostileRows(ctx, c, srv.URL, cfg.hostile)
		if err != nil {
			return err
		}
		rows = append(rows, hos...)
	}
	if aud, err := auditRows(ctx, home, c, token, apiCfg, cfg.execs); err != nil {
		return err
	} else {
		rows = append(rows, aud...)
	}
	if debianBoots > 0 && cfg.egressSamples > 0 {
		egr, err := egressRows(ctx, c, eb, cfg.egressSamples)
		if err != nil {
			return err
		}
		rows = append(rows, egr...)
	}
	if idr, err := identityRows(ctx, cfg.identitySamples); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	} else {
		rows = append(rows, idr...)
	}
	if saf, err := safetyRows(cfg.testJSON); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	} else {
		rows = append(rows, saf...)
	}
	printTable(os.Stdout, driver.Accel(), rows)
	return nil
}

// parkRows measures park, wake, clones and the raw QEMU save/restore.
func parkRows(ctx context.Context, c *api.Client, driver *qemu.Driver, b *image.Builder, sessDir string, cfg config, coldBootP50 float64) ([]row, error) {
	var rows []row
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
	if err != nil {
		return nil, err
	}
	park := row{name: "park (durable)", unit: "ms", target: 150}
	wakeRead := row{name: "wake → agent answers (file read)", unit: "ms", target: 200}
	wakeExec := row{name: "wake → first exec result", unit: "ms", target: 300}
	snapMiB := row{name: "snapshot on disk per parked session (512 MiB RAM)", unit: "MiB"}
	if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", "echo x > /tmp/x"}}); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.parks; i++ {
		t0 := time.Now()
		p, err := c.ParkSession(ctx, s.ID)
		if err != nil {
			return nil, err
		}
		park.samples = append(park.samples, ms(time.Since(t0)))
		if p.Snapshot != nil {
			snapMiB.samples = append(snapMiB.samples, float64(p.Snapshot.DiskBytes)/(1<<20))
		}
		t0 = time.Now()
		if i%2 == 0 { // auto-wake by a file read
			rc, err := c.ReadFile(ctx, s.ID, "/tmp/x")
			if err != nil {
				return nil, err
			}
			_, _ = io.Copy(io.Discard, rc)
			rc.Close()
			wakeRead.samples = append(wakeRead.samples, ms(time.Since(t0)))
		} else { // auto-wake by an exec
			if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
				return nil, err
			}
			wakeExec.samples = append(wakeExec.samples, ms(time.Since(t0)))
		}
		fmt.Fprintf(os.Stderr, "bench: park/wake %d/%d\n", i+1, cfg.parks)
	}
	_ = c.DeleteSession(ctx, s.ID)
	rows = append(rows, park, wakeRead, wakeExec, snapMiB)
	if p50 := pct(wakeExec.samples, 0.5); p50 > 0 {
		rows = append(rows, row{name: "cold boot p50 / wake→exec p50 (×, target ≥ 15)", unit: "×", samples: []float64{coldBootP50 / p50}})
	}
	if cfg.wakeOnly {
		return rows, nil
	}

	// Raw QEMU: save and restore through the driver alone, no cove.
	rawSave, rawRestore, rawSpare, err := rawSnapshot(ctx, driver, b, sessDir, c, cfg.parks)
	if err != nil {
		return nil, err
	}
	rows = append(rows, rawSave, rawRestore)
	if len(rawSpare.samples) > 0 {
		rows = append(rows, rawSpare)
	}

	// Templates: create from template with the pool empty, then warm.
	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bench", Setup: []string{"echo ready > /tmp/ready"}}); err != nil {
		return nil, err
	}
	cold := row{name: "create from template → first exec (pool empty)", unit: "ms", target: 350}
	if cfg.cloneFiles > 0 {
		cold.name = "create from template → first exec (pool empty, clone files made ahead)"
	}
	var ids []string
	for i := 0; i < cfg.clones; i++ {
		// As for the warm pool below: each create finds what the server
		// keeps made ahead, here the clone files, ready.
		if err := waitTemplate(ctx, c, "bench", "clone files", func(t api.Template) bool { return t.CloneFilesReady >= cfg.cloneFiles }); err != nil {
			return nil, err
		}
		t0 := time.Now()
		cs, err := c.CreateSession(ctx, api.CreateSessionRequest{Template: "bench"})
		if err != nil {
			return nil, err
		}
		if _, err := c.Exec(ctx, cs.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
			return nil, err
		}
		cold.samples = append(cold.samples, ms(time.Since(t0)))
		ids = append(ids, cs.ID)
	}
	time.Sleep(2 * time.Second)
	pss := row{name: fmt.Sprintf("PSS per idle clone (%d clones of one template)", len(ids)), unit: "MiB"}
	for _, id := range ids {
		if pid := qemu.PIDOf(sessDir, id); pid != 0 {
			pss.samples = append(pss.samples, procKiB(pid, "smaps_rollup", "Pss:")/1024)
		}
	}
	for _, id := range ids {
		_ = c.DeleteSession(ctx, id)
	}
	_ = c.DeleteTemplate(ctx, "bench")
	rows = append(rows, cold, pss)

	if _, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bench-pool", Pool: 2}); err != nil {
		return nil, err
	}
	warm := row{name: "create from template → first exec (warm pool)", unit: "ms", target: 20}
	for i := 0; i < 5; i++ {
		if err := waitTemplate(ctx, c, "bench-pool", "pool", func(t api.Template) bool { return t.PoolReady >= 2 }); err != nil {
			return nil, err
		}
		t0 := time.Now()
		cs, err := c.CreateSession(ctx, api.CreateSessionRequest{Template: "bench-pool"})
		if err != nil {
			return nil, err
		}
		if _, err := c.Exec(ctx, cs.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
			return nil, err
		}
		warm.samples = append(warm.samples, ms(time.Since(t0)))
		_ = c.DeleteSession(ctx, cs.ID)
	}
	_ = c.DeleteTemplate(ctx, "bench-pool")
	rows = append(rows, warm)
	return rows, nil
}

// waitTemplate waits until ready(template name); what names it in the error.
func waitTemplate(ctx context.Context, c *api.Client, name, what string, ready func(api.Template) bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		t, err := c.GetTemplate(ctx, name)
		if err != nil {
			return err
		}
		if ready(t) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s of template %s not ready after 2 minutes", what, name)
}

// rawSnapshot boots a session, then saves and restores its VM through the
// QEMU driver directly: QEMU's own time, without cove's bookkeeping, agent
// or API. Restores alternate between a new QEMU process (a driver without
// spares) and a spare of the bench's driver.
func rawSnapshot(ctx context.Context, spares *qemu.Driver, b *image.Builder, sessDir string, c *api.Client, n int) (row, row, row, error) {
	save := row{name: "raw QEMU save (migrate + fsync + quit)", unit: "ms"}
	restore := row{name: "raw QEMU restore (spawn → running)", unit: "ms"}
	spare := row{name: "raw QEMU restore into a spare process (claim → running)", unit: "ms"}
	plain, err := qemu.New(qemu.Config{Accel: spares.Accel(), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup"})
	if err != nil {
		return save, restore, spare, err
	}
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
	if err != nil {
		return save, restore, spare, err
	}
	defer c.DeleteSession(context.Background(), s.ID)
	// Take the VM over from the session manager by parking through the
	// API once, then restore and save with the drivers alone.
	if _, err := c.ParkSession(ctx, s.ID); err != nil {
		return save, restore, spare, err
	}
	dir := filepath.Join(sessDir, s.ID)
	k, err := b.Kernel(ctx, func(string) {})
	if err != nil {
		return save, restore, spare, err
	}
	initrd, err := b.Initramfs(k)
	if err != nil {
		return save, restore, spare, err
	}
	spec := vmm.Spec{ID: s.ID, Dir: dir, Kernel: k.Vmlinux, Initrd: initrd, Disk: filepath.Join(dir, "disk.qcow2"),
		MemoryMiB: s.MemoryMiB, CPUs: s.CPUs}
	state := filepath.Join(dir, "state")
	for i := 0; i < 2*n; i++ {
		intoSpare := i%2 == 1
		if intoSpare && !spares.HasSpares() {
			continue
		}
		d, into := plain, &restore
		if intoSpare {
			d, into = spares, &spare
			for t0 := time.Now(); spares.ReadySpares(spec.MemoryMiB, spec.CPUs) == 0; time.Sleep(10 * time.Millisecond) {
				if time.Since(t0) > 2*time.Minute {
					return save, restore, spare, errors.New("no spare QEMU process ready after 2 minutes")
				}
			}
		}
		vm, st, err := d.Restore(ctx, spec, state)
		if err != nil {
			return save, restore, spare, err
		}
		if intoSpare && !st.Spare {
			return save, restore, spare, errors.New("a spare was ready but the restore did not use it")
		}
		into.samples = append(into.samples, ms(st.Total))
		time.Sleep(50 * time.Millisecond)
		sst, err := d.Save(ctx, vm, state)
		if err != nil {
			return save, restore, spare, err
		}
		save.samples = append(save.samples, ms(sst.Total))
	}
	return save, restore, spare, nil
}

func procKiB(pid int, file, key string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseFloat(f[0], 64)
				return n
			}
		}
	}
	return 0
}

func printTable(w io.Writer, accel string, rows []row) {
	fmt.Fprintf(w, "\ncove bench (accel %s, %s)\n\n", accel, time.Now().UTC().Format("2006-01-02"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "| what\t| n\t| p50\t| p95\t| target\t| p50/target\t|")
	fmt.Fprintln(tw, "| ---\t| ---\t| ---\t| ---\t| ---\t| ---\t|")
	for _, r := range rows {
		if r.cells != nil {
			fmt.Fprintf(tw, "| %s\t| %s\t|\n", r.name, strings.Join(r.cells, "\t| "))
			continue
		}
		p50, p95 := pct(r.samples, 0.5), pct(r.samples, 0.95)
		target, ratio := "–", "–"
		if r.target > 0 {
			target = fmt.Sprintf("≤ %.0f %s", r.target, r.unit)
			ratio = fmt.Sprintf("%.2f", p50/r.target)
		}
		if r.targetText != "" {
			target = r.targetText
		}
		if r.note != "" {
			ratio = r.note
		}
		if r.unit == "/s" {
			fmt.Fprintf(tw, "| %s\t| 1\t| %.0f/s\t| –\t| ≥ 2000/s\t| %.2f\t|\n", r.name, p50, 2000/p50)
			continue
		}
		if r.unit == "×" {
			fmt.Fprintf(tw, "| %s\t| –\t| %.1f×\t| –\t| ≥ 15×\t| %.2f\t|\n", r.name, p50, 15/p50)
			continue
		}
		prec := 1
		if p95 < 1 {
			prec = 4
		}
		fmt.Fprintf(tw, "| %s\t| %d\t| %.*f %s\t| %.*f %s\t| %s\t| %s\t|\n", r.name, len(r.samples), prec, p50, r.unit, prec, p95, r.unit, target, ratio)
	}
	tw.Flush()
}

const hookSecret = "bench-secret"

type benchSecrets struct{}

func (benchSecrets) Secret(ctx context.Context, hook string) ([]byte, bool, error) {
	return []byte(hookSecret), hook == "bench" || hook == "github", nil
}

// postHook sends one signed generic delivery.
func postHook(client *http.Client, base, id string, body []byte) (int, error) {
	req, err := http.NewRequest("POST", base+"/v1/hooks/bench", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(trigger.HeaderSignature, trigger.Sign([]byte(hookSecret), body))
	req.Header.Set("X-Cove-Delivery", id)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// triggerRows measures webhook → event in the guest, matching with 10,000
// subscriptions, and accepted webhooks per second.
func triggerRows(ctx context.Context, c *api.Client, base string) ([]row, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	lat := row{name: "webhook accepted → event readable in the guest (wake included)", unit: "ms", target: 400}
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
	if err != nil {
		return nil, err
	}
	defer c.DeleteSession(context.Background(), s.ID)
	for i := 0; i < 10; i++ {
		expr := fmt.Sprintf("bench:ping n=%d", i)
		if _, err := c.ParkSessionUntil(ctx, s.ID, api.ParkRequest{Until: []string{expr}}); err != nil {
			return nil, err
		}
		t0 := time.Now()
		code, err := postHook(client, base, fmt.Sprintf("lat-%d", i), []byte(fmt.Sprintf(`{"event":"ping","n":%d}`, i)))
		if err != nil || code != http.StatusAccepted {
			return nil, fmt.Errorf("webhook: status %d, %v", code, err)
		}
		for {
			files, err := c.ListDir(ctx, s.ID, "/run/cove/events")
			if err != nil {
				return nil, err
			}
			if n := countJSON(files); n > 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		lat.samples = append(lat.samples, ms(time.Since(t0)))
		// Take the event so the next round waits for a new one.
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"cove-agent", "event", "wait", "--timeout", "10s"}}); err != nil {
			return nil, err
		}
	}

	// Matching with 10,000 waiting subscriptions over 1,000 repos.
	var idx trigger.Index
	for i := 0; i < 10000; i++ {
		e := trigger.MustParse(fmt.Sprintf("github:check_suite.completed repo=org/repo-%d head_sha=%040d", i%1000, i))
		idx.Add(trigger.Subscription{ID: fmt.Sprintf("s-%d", i), Exprs: []trigger.Expr{e}})
	}
	match := row{name: "match one event against 10,000 waiting subscriptions", unit: "ms", target: 1}
	for i := 0; i < 2000; i++ {
		ev := trigger.Event{Source: "github", Name: "check_suite.completed",
			Fields: map[string]string{"repo": fmt.Sprintf("org/repo-%d", i%1000), "head_sha": fmt.Sprintf("%040d", i)}}
		t0 := time.Now()
		_ = idx.Match(ev)
		match.samples = append(match.samples, ms(time.Since(t0)))
	}

	// Accepted webhooks per second, no session to wake.
	const n, workers = 4000, 32
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > n {
					return
				}
				code, err := postHook(client, base, fmt.Sprintf("rate-%d", i), []byte(fmt.Sprintf(`{"event":"load","i":%d}`, i)))
				if err == nil && code != http.StatusAccepted {
					err = fmt.Errorf("status %d", code)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("webhook load: %w", err)
	}
	rate := row{name: "webhooks accepted per second (32 senders, no wake)", unit: "/s", target: 0,
		samples: []float64{float64(n) / time.Since(t0).Seconds()}}
	return []row{lat, match, rate}, nil
}

func countJSON(files []api.FileInfo) int {
	n := 0
	for _, f := range files {
		if !f.IsDir && strings.HasSuffix(f.Name, ".json") && !strings.HasPrefix(f.Name, ".") {
			n++
		}
	}
	return n
}

// benchClient is a client of the server at url that acts as an admin
// user, made with the admin token through the API: the admin token only
// bootstraps (users, teams, tokens), so the benchmark runs as an operator
// would.
func benchClient(ctx context.Context, url, adminToken string) (*api.Client, string, error) {
	admin := api.NewClient(url, adminToken)
	if _, err := admin.AddUser(ctx, api.CreateUserRequest{Name: "bench", Kind: api.UserAdmin}); err != nil {
		return nil, "", fmt.Errorf("bench: add the admin user: %w", err)
	}
	tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{Name: "bench", User: "bench"})
	if err != nil {
		return nil, "", fmt.Errorf("bench: mint its token: %w", err)
	}
	return api.NewClient(url, tok.Secret), tok.Secret, nil
}
