package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
)

// Hostile neighbours (issue 13): a quiet session A and a hostile session B
// on the same server, both tiny with 256 MiB. A's exec round trip is
// measured while B is idle, then while B runs each attack, one at a time.
// An attack holds when A's p50 stays within hostileBound × the quiet p50.

const hostileBound = 2.0

// hostileConfig sizes the section.
type hostileConfig struct {
	execs  int           // A's execs per phase
	every  time.Duration // spacing of A's execs
	ramp   time.Duration // from an attack's start to A's first exec
	attack time.Duration // an attack's own bound in B's guest
}

// attack is one thing B does to its neighbour.
type attack struct {
	name string
	// script runs in B's guest (busybox sh), in a session of its own that
	// kills itself after the attack's bound; nil for attacks made from
	// outside the guest.
	script string
	// cleanup runs in B's guest after the process group is killed.
	cleanup string
	// outside, if set, runs alongside A's execs until stop is closed and
	// says what it saw.
	outside func(ctx context.Context, stop <-chan struct{}) (string, error)
}

// hostileRows measures A's exec round trip while quiet and under each of
// B's attacks.
func hostileRows(ctx context.Context, c *api.Client, base string, hc hostileConfig) ([]row, error) {
	create := func() (api.Session, error) {
		return c.CreateSession(ctx, api.CreateSessionRequest{Image: "tiny", MemoryMiB: 256, IdleTimeout: "0s"})
	}
	a, err := create()
	if err != nil {
		return nil, err
	}
	defer c.DeleteSession(context.Background(), a.ID)
	b, err := create()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.DeleteSession(context.Background(), b.ID) }()
	for _, id := range []string{a.ID, b.ID} { // warm each guest's page cache and TCG
		for i := 0; i < 5; i++ {
			if _, err := c.Exec(ctx, id, api.ExecRequest{Argv: []string{"true"}}); err != nil {
				return nil, err
			}
		}
	}

	quiet := row{name: "neighbour exec (true), B quiet (tiny, 256 MiB each)", unit: "ms"}
	quiet.samples, _ = neighbourExecs(ctx, c, a.ID, hc)
	q50 := pct(quiet.samples, 0.5)
	fmt.Fprintf(os.Stderr, "bench: hostile: quiet p50 %.1f ms p95 %.1f ms\n", q50, pct(quiet.samples, 0.95))
	rows := []row{quiet}

	var peak peakRSS
	secs := strconv.Itoa(int((hc.ramp + hc.attack).Seconds()) + 5)
	attacks := []attack{
		{name: "CPU spin (4 processes)",
			script: "for i in 1 2 3 4; do (while :; do :; done) & done; wait"},
		{name: "fork bomb (a loop of sleep & until the bound)",
			script: "while :; do sleep 600 & done"},
		{name: "memory hog (200 MiB in /dev/shm, held)",
			script:  "mount -o remount,size=90% /dev/shm; dd if=/dev/zero of=/dev/shm/fill bs=1M count=200; sleep 600",
			cleanup: "rm -f /dev/shm/fill; mount -o remount,size=50% /dev/shm"},
		{name: "disk fill (dd to /root until ENOSPC)",
			script:  "dd if=/dev/zero of=/root/fill bs=1M; sync; sleep 600",
			cleanup: "rm -f /root/fill; sync; fstrim / 2>/dev/null; true"},
		{name: "console flood (yes > /dev/ttyS0)",
			script: "yes 'hostile console flood 0123456789abcdefghijklmnopqrstuvwxyz' > /dev/ttyS0"},
		{name: "output flood (yes on an exec stream, read and discarded)",
			outside: func(ctx context.Context, stop <-chan struct{}) (string, error) {
				return outputFlood(ctx, c, b.ID, hc.ramp+hc.attack, stop)
			}},
		{name: "webhook flood (20 × 24 MiB POSTs, bad signature)",
			outside: func(ctx context.Context, stop <-chan struct{}) (string, error) {
				return webhookFlood(ctx, base, stop, &peak)
			}},
	}
	held := 0
	for _, at := range attacks {
		fmt.Fprintf(os.Stderr, "bench: hostile: %s\n", at.name)
		actx, cancel := context.WithCancel(ctx)
		stop := make(chan struct{})
		seen := make(chan string, 1)
		if at.script != "" {
			// In a session of its own, so that one kill of the group ends
			// it; it kills itself after its bound should the bench not.
			launch := "setsid sh -c 'echo $$ > /tmp/attack.pid; (sleep " + secs + "; kill -9 -$$) & " +
				strings.ReplaceAll(at.script, "'", `'\''`) + "' </dev/null >/dev/null 2>&1 &"
			if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"sh", "-c", launch}}); err != nil {
				cancel()
				return nil, fmt.Errorf("hostile: start %s: %w", at.name, err)
			}
			close(seen)
		} else {
			go func() {
				s, err := at.outside(actx, stop)
				if err != nil {
					s = "error: " + err.Error()
				}
				seen <- s
			}()
		}
		time.Sleep(hc.ramp)
		r := row{name: "neighbour exec while B: " + at.name, unit: "ms"}
		var failed int
		r.samples, failed = neighbourExecs(ctx, c, a.ID, hc)
		close(stop)
		if note, ok := <-seen; ok {
			fmt.Fprintf(os.Stderr, "bench: hostile: %s: %s\n", at.name, note)
		}
		cancel()
		if at.script != "" {
			fmt.Fprintf(os.Stderr, "bench: hostile: B during %s: %s\n", at.name, probeB(ctx, c, b.ID))
		}
		p50 := pct(r.samples, 0.5)
		r.targetText = fmt.Sprintf("≤ %.1f ms (%.0f× quiet)", hostileBound*q50, hostileBound)
		ok := failed == 0 && p50 <= hostileBound*q50
		verdict := "held"
		if !ok {
			verdict = "not held"
		} else {
			held++
		}
		if failed > 0 {
			verdict += fmt.Sprintf(", %d execs failed", failed)
		}
		r.note = fmt.Sprintf("%.2f× quiet, %s", p50/q50, verdict)
		rows = append(rows, r)
		fmt.Fprintf(os.Stderr, "bench: hostile: %s: p50 %.1f ms p95 %.1f ms (%s)\n", at.name, p50, pct(r.samples, 0.95), r.note)

		// Stop and clean, then make sure B is still there for the next
		// attack; one that took B down is replaced.
		if at.script != "" {
			clean := "kill -9 -$(cat /tmp/attack.pid) 2>/dev/null; sleep 0.2; kill -9 -$(cat /tmp/attack.pid) 2>/dev/null; "
			if at.cleanup != "" {
				clean += at.cleanup + "; "
			}
			clean += "rm -f /tmp/attack.pid; true"
			if err := execWithin(ctx, c, b.ID, 60*time.Second, clean); err != nil {
				fmt.Fprintf(os.Stderr, "bench: hostile: cleaning after %s: %v\n", at.name, err)
			}
		}
		if err := execWithin(ctx, c, b.ID, 30*time.Second, "true"); err != nil {
			fmt.Fprintf(os.Stderr, "bench: hostile: B does not answer after %s (%v): replacing it\n", at.name, err)
			_ = c.DeleteSession(ctx, b.ID)
			if b, err = create(); err != nil {
				return nil, err
			}
		}
	}
	if peak.peak > 0 {
		rows = append(rows, row{name: "server peak RSS during the webhook flood (the bench process, which serves)", cells: []string{
			strconv.Itoa(peak.posts), fmt.Sprintf("%.1f MiB", peak.peak), "–", "–",
			fmt.Sprintf("from %.1f MiB, +%.1f MiB", peak.before, peak.peak-peak.before)}})
	}
	verdict := "met"
	if held < len(attacks) {
		verdict = "not met"
	}
	rows = append(rows, row{name: fmt.Sprintf("attacks held (neighbour p50 ≤ %.0f× quiet p50)", hostileBound), cells: []string{
		strconv.Itoa(len(attacks)), fmt.Sprintf("%d/%d", held, len(attacks)), "–", fmt.Sprintf("%d/%d", len(attacks), len(attacks)), verdict}})
	return rows, nil
}

// neighbourExecs times hc.execs execs of true in session id, one every
// hc.every; a failed exec counts with the time it took.
func neighbourExecs(ctx context.Context, c *api.Client, id string, hc hostileConfig) ([]float64, int) {
	var samples []float64
	failed := 0
	for i := 0; i < hc.execs; i++ {
		t0 := time.Now()
		ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := c.Exec(ectx, id, api.ExecRequest{Argv: []string{"true"}})
		cancel()
		d := time.Since(t0)
		if err != nil || res.ExitCode != 0 {
			failed++
		}
		samples = append(samples, ms(d))
		if d < hc.every {
			time.Sleep(hc.every - d)
		}
	}
	return samples, failed
}

// execWithin runs sh -c script in session id, bounded by limit.
func execWithin(ctx context.Context, c *api.Client, id string, limit time.Duration, script string) error {
	ectx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	res, err := c.Exec(ectx, id, api.ExecRequest{Argv: []string{"sh", "-c", script}, Timeout: limit.String()})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	return nil
}

// probeB says what the attack left in B's guest: processes, memory, disk.
func probeB(ctx context.Context, c *api.Client, id string) string {
	ectx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	res, err := c.Exec(ectx, id, api.ExecRequest{Timeout: "15s", Argv: []string{"sh", "-c",
		`echo "procs $(ls -d /proc/[0-9]* | wc -l), mem free $(free -m | awk '/Mem/ {print $4}') MiB, /root free $(df -m /root | awk 'NR==2 {print $4}') MiB, load $(cut -d' ' -f1-3 /proc/loadavg)"`}})
	if err != nil {
		return "no answer: " + err.Error()
	}
	return strings.TrimSpace(string(res.Stdout) + string(res.Stderr))
}

// outputFlood streams yes from session id, reading and discarding, until
// stop is closed or the command's bound passes.
func outputFlood(ctx context.Context, c *api.Client, id string, bound time.Duration, stop <-chan struct{}) (string, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
		case <-sctx.Done():
		}
		cancel()
	}()
	var n int64
	t0 := time.Now()
	err := c.ExecStream(sctx, id, api.ExecRequest{Argv: []string{"yes", strings.Repeat("0123456789abcdef", 8)}, Timeout: bound.String()},
		func(ev api.ExecEvent) { n += int64(len(ev.Data)) })
	if err != nil && sctx.Err() != nil {
		err = nil // stopped by the bench
	}
	return fmt.Sprintf("%.1f MiB read in %v (%.1f MiB/s)", float64(n)/(1<<20), time.Since(t0).Round(time.Millisecond),
		float64(n)/(1<<20)/time.Since(t0).Seconds()), err
}

// peakRSS is what the webhook flood did to the process's memory.
type peakRSS struct {
	before, peak float64 // MiB
	posts        int
}

// webhookFlood sends rounds of 20 parallel 24 MiB GitHub deliveries signed
// with a wrong secret, each sender on its own loopback address, until
// stop is closed, and records this process's peak RSS: the server runs
// in it.
func webhookFlood(ctx context.Context, base string, stop <-chan struct{}, peak *peakRSS) (string, error) {
	const senders, size = 20, 24 << 20
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	runtime.GC()
	debug.FreeOSMemory()
	peak.before = procKiB(os.Getpid(), "status", "VmRSS:") / 1024
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // resets VmHWM
	var sampled atomic.Int64                                  // KiB
	sampleDone := make(chan struct{})
	sampler := make(chan struct{})
	go func() {
		defer close(sampler)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if v := int64(procKiB(os.Getpid(), "status", "VmRSS:")); v > sampled.Load() {
				sampled.Store(v)
			}
			select {
			case <-tick.C:
			case <-sampleDone:
				return
			}
		}
	}()
	header := "POST /v1/hooks/github HTTP/1.1\r\nHost: cove\r\nContent-Type: application/json\r\n" +
		trigger.HeaderGitHubEvent + ": push\r\n" + trigger.HeaderGitHubDelivery + ": d-flood\r\n" +
		trigger.HeaderSignature + ": " + trigger.Sign([]byte("not the secret"), nil) + "\r\n" +
		"Content-Length: " + strconv.Itoa(size) + "\r\n\r\n"
	chunk := make([]byte, 64<<10)
	statuses := map[int]int{}
	var mu sync.Mutex
	rounds := 0
	t0 := time.Now()
	var ferr error
flood:
	for {
		select {
		case <-stop:
			break flood
		case <-ctx.Done():
			break flood
		default:
		}
		var wg sync.WaitGroup
		for i := 0; i < senders; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, err := floodOne(ctx, u.Host, fmt.Sprintf("127.0.0.%d", i+2), header, chunk, size)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if ferr == nil {
						ferr = err
					}
					return
				}
				statuses[code]++
			}()
		}
		wg.Wait()
		rounds++
		peak.posts += senders
		if ferr != nil {
			break
		}
	}
	took := time.Since(t0)
	close(sampleDone)
	<-sampler
	peak.peak = max(procKiB(os.Getpid(), "status", "VmHWM:"), float64(sampled.Load())) / 1024
	var codes []string
	for code, n := range statuses {
		codes = append(codes, fmt.Sprintf("%d×%d", n, code))
	}
	return fmt.Sprintf("%d rounds, %d posts in %v, answers %s; RSS %.1f MiB before, peak %.1f MiB",
		rounds, peak.posts, took.Round(time.Millisecond), strings.Join(codes, " "), peak.before, peak.peak), ferr
}

// floodOne posts one size-byte body from the local address from and
// returns the status the server answered.
func floodOne(ctx context.Context, host, from, header string, chunk []byte, size int) (int, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	go func() { // the sender: header and the whole body; the server may answer first
		if _, err := io.WriteString(conn, header); err != nil {
			return
		}
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("webhook flood from %s: connection closed without an answer", from)
		}
		return 0, fmt.Errorf("webhook flood from %s: %w", from, err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
