package e2b

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
)

// Metrics: GET /sandboxes/{id}/metrics answers the sandbox's resource
// samples, which the SDK's getMetrics parses. A sample is taken in the
// guest when asked for (cove samples no VM in the background: under TCG
// that would cost every sandbox a command every few seconds): CPU use
// over metricsSpan from two reads of /proc/stat, memory from
// /proc/meminfo (both read by the agent, no process started), the root
// filesystem's use from df. The samples taken are kept in this server's
// memory, at most maxSamples a sandbox, and the answer is those within
// ?start= and ?end= (unix seconds), oldest first: a series of the times
// someone asked. A paused sandbox takes no new sample.

// metricsSpan is the interval CPU use is measured over.
const metricsSpan = 250 * time.Millisecond

// maxSamples bounds the samples kept of one sandbox (the oldest go).
const maxSamples = 720

// sample is E2B's SandboxMetric.
type sample struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// samples are the kept samples of each sandbox.
type samples struct {
	mu sync.Mutex
	m  map[string][]sample // by session id; guarded by mu
}

func (ss *samples) add(id string, x sample) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string][]sample{}
	}
	l := append(ss.m[id], x)
	if len(l) > maxSamples {
		l = l[len(l)-maxSamples:]
	}
	ss.m[id] = l
}

// within returns the samples of id taken from start to end (zero: no
// bound).
func (ss *samples) within(id string, start, end time.Time) []sample {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := []sample{}
	for _, x := range ss.m[id] {
		if (start.IsZero() || !x.Timestamp.Before(start)) && (end.IsZero() || !x.Timestamp.After(end)) {
			out = append(out, x)
		}
	}
	return out
}

func (ss *samples) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// unixParam reads an optional unix-seconds query parameter.
func unixParam(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("%s %q: want unix seconds", name, v)
	}
	return time.Unix(n, 0), nil
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	ctx, ok := s.principal(w, r)
	if !ok {
		return
	}
	start, err := unixParam(r, "start")
	var end time.Time
	if err == nil {
		end, err = unixParam(r, "end")
	}
	if err == nil && !start.IsZero() && !end.IsZero() && end.Before(start) {
		err = fmt.Errorf("end %d is before start %d", end.Unix(), start.Unix())
	}
	if err != nil {
		writeControlError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ss, _, ok := s.lookup(ctx, w, r, "session.get")
	if !ok {
		return
	}
	if ss.State == api.StateRunning {
		x, err := s.sample(ctx, ss)
		if err != nil {
			// The samples kept are still an answer.
			s.log.WarnContext(ctx, "e2b: metrics sample", "session", ss.ID, "err", err)
		} else {
			s.samples.add(ss.ID, x)
		}
	}
	writeJSON(w, http.StatusOK, s.samples.within(ss.ID, start, end))
}

// sample takes one sample in the running sandbox ss.
func (s *Server) sample(ctx context.Context, ss api.Session) (sample, error) {
	first, err := s.guestFile(ctx, ss.ID, "/proc/stat")
	if err != nil {
		return sample{}, err
	}
	select {
	case <-time.After(metricsSpan):
	case <-ctx.Done():
		return sample{}, ctx.Err()
	}
	second, err := s.guestFile(ctx, ss.ID, "/proc/stat")
	if err != nil {
		return sample{}, err
	}
	meminfo, err := s.guestFile(ctx, ss.ID, "/proc/meminfo")
	if err != nil {
		return sample{}, err
	}
	now := s.cfg.Now().UTC()
	x := sample{Timestamp: now, TimestampUnix: now.Unix(), CPUCount: ss.CPUs}
	busy1, total1, n := cpuTimes(first)
	busy2, total2, _ := cpuTimes(second)
	if n > 0 {
		x.CPUCount = n
	}
	if total2 > total1 {
		x.CPUUsedPct = math.Round(10000*float64(busy2-busy1)/float64(total2-total1)) / 100
	}
	mem := meminfoBytes(meminfo)
	x.MemTotal = mem["MemTotal"]
	x.MemUsed = mem["MemTotal"] - mem["MemAvailable"]
	x.MemCache = mem["Cached"] + mem["Buffers"]
	// The disk's use needs statfs, which only a command gives. A guest
	// without df answers no disk figures, not an error.
	if used, total, err := s.diskUse(ctx, ss.ID); err == nil {
		x.DiskUsed, x.DiskTotal = used, total
	} else {
		s.log.DebugContext(ctx, "e2b: metrics: disk use", "session", ss.ID, "err", err)
	}
	return x, nil
}

// guestFile reads a small guest file whole (at most 1 MiB).
func (s *Server) guestFile(ctx context.Context, id, p string) ([]byte, error) {
	rc, err := s.cfg.Sessions.Open(ctx, id, p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return b, nil
}

// cpuTimes reads /proc/stat: the busy and total jiffies of all CPUs
// (idle and iowait are not busy), and how many CPUs it lists.
func cpuTimes(stat []byte) (busy, total uint64, cpus int) {
	sc := bufio.NewScanner(bytes.NewReader(stat))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) > 4 && f[0] == "cpu":
			for i, v := range f[1:] {
				n, _ := strconv.ParseUint(v, 10, 64)
				if i >= 8 { // guest and guest_nice are within user and nice
					break
				}
				total += n
				if i != 3 && i != 4 {
					busy += n
				}
			}
		case len(f) > 0 && strings.HasPrefix(f[0], "cpu"):
			cpus++
		}
	}
	return busy, total, cpus
}

// meminfoBytes reads /proc/meminfo's "Key: N kB" lines, in bytes.
func meminfoBytes(b []byte) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out
}

// diskUse runs df on the guest's root filesystem: used and total bytes.
func (s *Server) diskUse(ctx context.Context, id string) (used, total int64, err error) {
	out, err := s.output(ctx, id, []string{"df", "-P", "-k", "/"}, nil)
	if err != nil {
		return 0, 0, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(lines) < 2 || len(f) < 4 {
		return 0, 0, fmt.Errorf("df: unexpected output %q", out)
	}
	t, err1 := strconv.ParseInt(f[1], 10, 64)
	u, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("df: unexpected output %q", out)
	}
	return u * 1024, t * 1024, nil
}

// output runs argv in the guest as root and returns its stdout (at most
// 64 KiB); a command that fails is an api.CodeInvalid error with its
// stderr. A command without stdin (nil: it reads EOF) runs 60 s at most;
// one with lasts as ctx does.
func (s *Server) output(ctx context.Context, id string, argv []string, stdin io.Reader) (string, error) {
	return s.outputAs(ctx, id, rootUser, argv, stdin)
}

// outputAs is output run as u (the guest agent sets its credentials).
func (s *Server) outputAs(ctx context.Context, id string, u guestUser, argv []string, stdin io.Reader) (string, error) {
	req := api.ExecRequest{Argv: argv, User: execUser(u)}
	if stdin == nil {
		req.Timeout = "60s"
	}
	p, err := s.cfg.Sessions.Exec(ctx, id, req)
	if err != nil {
		return "", err
	}
	if stdin == nil {
		_ = p.Stdin().Close()
	} else {
		go func() {
			_, err := io.Copy(p.Stdin(), stdin)
			if err != nil {
				// The command must not take a cut body for a
				// whole one: it dies, and its exit says why.
				_ = p.Signal("KILL")
			}
			_ = p.Stdin().Close()
		}()
	}
	errOut := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(p.Stderr(), 4096))
		_, _ = io.Copy(io.Discard, p.Stderr())
		errOut <- b
	}()
	out, _ := io.ReadAll(io.LimitReader(p.Stdout(), 64<<10))
	_, _ = io.Copy(io.Discard, p.Stdout())
	msg := <-errOut
	st, err := p.Wait()
	if err != nil {
		return "", err
	}
	if st.Code != 0 || st.Signal != "" {
		return "", api.Errorf(api.CodeInvalid, "%s: %s", strings.Join(argv, " "), strings.TrimSpace(string(msg)))
	}
	return string(out), nil
}
