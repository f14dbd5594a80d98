// Command covebench measures cove end to end — real QEMU microVMs behind the
// real HTTP API — and prints a table of p50/p95 latencies with the ratio to
// each target. It is what 'make bench' runs.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store/sqlite"
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
	flag.Parse()
	if err := run(*home, *agent, *boots, *debianBoots, *execs, *files, *idle); err != nil {
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

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func run(home, agent string, boots, debianBoots, execs, files, idle int) error {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
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
	driver, err := qemu.New(qemu.Config{Accel: envOr("COVE_ACCEL", "auto"), User: "cove-vm", CgroupRoot: "/sys/fs/cgroup", Log: log})
	if err != nil {
		return err
	}
	sessDir := filepath.Join(home, "sessions")
	os.RemoveAll(sessDir)
	mgr, err := session.New(session.Config{Store: st, Driver: driver, Images: b, Dir: sessDir, Log: log})
	if err != nil {
		return err
	}
	defer mgr.StopAll(context.Background())
	srv := httptest.NewServer(apiserver.New(apiserver.Config{Sessions: mgr, Images: b, Token: "bench"}).Handler())
	defer srv.Close()
	c := api.NewClient(srv.URL, "bench")

	fmt.Fprintf(os.Stderr, "bench: accelerator %s\n", driver.Accel())
	var rows []row

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
		pid := qemuPID(sessDir, id)
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

	printTable(os.Stdout, driver.Accel(), rows)
	return nil
}

// qemuPID finds the QEMU process of a session from its command line.
func qemuPID(sessDir, id string) int {
	for _, pid := range qemu.Orphans(sessDir, func(got string) bool { return got != id }) {
		return pid
	}
	return 0
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
		p50, p95 := pct(r.samples, 0.5), pct(r.samples, 0.95)
		target, ratio := "–", "–"
		if r.target > 0 {
			target = fmt.Sprintf("≤ %.0f %s", r.target, r.unit)
			ratio = fmt.Sprintf("%.2f", p50/r.target)
		}
		fmt.Fprintf(tw, "| %s\t| %d\t| %.1f %s\t| %.1f %s\t| %s\t| %s\t|\n", r.name, len(r.samples), p50, r.unit, p95, r.unit, target, ratio)
	}
	tw.Flush()
}
