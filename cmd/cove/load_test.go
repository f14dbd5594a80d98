package main_test

// The load test: many clients at once on one real server, doing what
// users do to sessions (exec in its three forms, file writes and reads,
// tar in and out, park, wake, rm and create), each checking that the
// answer is right; then every session is removed and nothing may be left:
// no QEMU process, file, socket or cgroup of a removed session, no
// goroutine or file descriptor of the server beyond its idle count, and
// its RSS no larger than at the start.
//
// COVE_LOAD_DURATION (default 1m) is how long the clients run,
// COVE_LOAD_SESSIONS (default 10) how many sessions they share and
// COVE_LOAD_CLIENTS (default 32) how many clients there are. 'make test'
// runs the defaults, about two minutes (creating the pool takes a few
// seconds a session under TCG on two cores); 'make soak' runs 20 sessions
// for 10 minutes.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm/qemu"
	"github.com/cove-dev/cove/internal/vmtest"
)

// The ops a client picks from, with their weights.
const (
	opExec    = "exec"    // buffered exec: the session's marker and a token
	opStdin   = "stdin"   // NDJSON exec of cat with stdin
	opWS      = "ws"      // WebSocket exec of cat, stdin streamed
	opFile    = "file"    // write, read back, remove a file
	opTar     = "tar"     // a small tree in as tar and out again
	opPark    = "park"    // park
	opWake    = "wake"    // wake
	opReplace = "replace" // rm a session, create another
)

var loadOps = []struct {
	name   string
	weight int
}{
	{opExec, 30}, {opStdin, 12}, {opWS, 8}, {opFile, 15}, {opTar, 5},
	{opPark, 10}, {opWake, 10}, {opReplace, 10},
}

// loadMemMiB is each session's memory: the smallest a tiny guest runs in
// comfortably, so that 20 fit beside other tests' VMs.
const loadMemMiB = 256

// opTimeout bounds one op. Under TCG with 20 guests on two cores an op
// takes seconds; one that takes minutes hangs.
const opTimeout = 5 * time.Minute

// markerPath holds each session's own id, written right after its create:
// an exec that reads another session's id ran in the wrong VM.
const markerPath = "/root/cove-load-id"

func envOrDuration(t *testing.T, key string, def time.Duration) time.Duration {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration like 10m", key, v)
	}
	return d
}

func envOrInt(t *testing.T, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}

// load is one load run against e's server.
type load struct {
	t      *testing.T
	e      *e2e
	c      *api.Client
	tr     *http.Transport
	target int // sessions kept alive

	mu       sync.Mutex
	pool     []string            // guarded by mu: sessions clients pick from
	created  []string            // guarded by mu: every session created
	removing map[string]bool     // guarded by mu: rm sent (or done)
	parks    map[string]int      // guarded by mu: parks started per session
	parking  map[string]int      // guarded by mu: parks in flight per session
	kinds    map[string]int      // guarded by mu: failures by kind (op, code, race)
	examples map[string]string   // guarded by mu: the first failure of each kind
	ops      map[string]*opTally // guarded by mu
	failures []string            // guarded by mu
	fiveXX   int                 // guarded by mu
	cgroups  map[string]bool     // guarded by mu: cgroups seen holding a QEMU of this home

	diagnosing int             // guarded by mu: diagnoses begun (see diagnose)
	diagnosed  map[string]bool // guarded by mu: sessions diagnosed
	diagnoses  []string        // guarded by mu: their reports
	diagWG     sync.WaitGroup
}

// opTally counts one kind of op's outcomes.
type opTally struct {
	ok, conflict, notFound, failed int
}

func TestLoad(t *testing.T) {
	dur := envOrDuration(t, "COVE_LOAD_DURATION", time.Minute)
	nSessions := envOrInt(t, "COVE_LOAD_SESSIONS", 10)
	nClients := envOrInt(t, "COVE_LOAD_CLIENTS", 32)

	e := newE2E(t)
	e.startServer()
	tr := &http.Transport{MaxIdleConnsPerHost: nClients * 2}
	c := api.NewClient("http://"+e.addr, e.userToken())
	c.HTTP = &http.Client{Transport: tr}
	l := &load{t: t, e: e, c: c, tr: tr, target: nSessions,
		removing: map[string]bool{}, parks: map[string]int{}, parking: map[string]int{}, kinds: map[string]int{}, examples: map[string]string{}, ops: map[string]*opTally{}, cgroups: map[string]bool{},
		diagnosed: map[string]bool{}}
	pid := e.srv.cmd.Process.Pid

	watchDone := make(chan struct{})
	watchStop := l.watchCgroups(watchDone)

	// Warm-up: one session through every op, so the server's lazy state
	// (spares of this shape, the image's first use, pools of buffers)
	// exists before the idle baseline is taken.
	start := time.Now()
	id := l.create(context.Background())
	if id == "" {
		t.Fatalf("warm-up create failed: %s", strings.Join(l.failures, "\n"))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, op := range []string{opExec, opStdin, opWS, opFile, opTar, opPark, opWake, opExec} {
		l.do(rng, op, id)
	}
	l.mu.Lock()
	l.pool = slices.DeleteFunc(l.pool, func(s string) bool { return s == id })
	l.mu.Unlock()
	l.remove(context.Background(), id, "warm-up")
	if l.failed() {
		t.Fatalf("warm-up failed:\n%s%s", strings.Join(l.failures, "\n"), e.serverLog())
	}
	tr.CloseIdleConnections()
	base := sampleServer(t, e, pid)
	t.Logf("warm-up in %s; idle server: %s", time.Since(start).Round(time.Millisecond), base)

	// The pool, four creates at a time.
	start = time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for range nSessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			l.create(context.Background())
		}()
	}
	wg.Wait()
	if l.failed() {
		t.Fatalf("creating the pool failed:\n%s", strings.Join(l.failures, "\n"))
	}
	rssStart := rssOf(t, pid)
	t.Logf("%d sessions created in %s; server RSS %s", nSessions, time.Since(start).Round(time.Millisecond), mib(rssStart))

	// The load.
	start = time.Now()
	runCtx, stopRun := context.WithTimeout(context.Background(), dur)
	defer stopRun()
	clientsDone := make(chan struct{})
	rssMax := atomic.Int64{}
	rssMax.Store(rssStart)
	go func() {
		defer close(clientsDone)
		var wg sync.WaitGroup
		for i := range nClients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
				for runCtx.Err() == nil {
					l.do(rng, pickOp(rng), "")
				}
			}()
		}
		wg.Wait()
	}()
	l.drain(runCtx, clientsDone, pid, &rssMax)
	rssEnd := rssOf(t, pid)
	elapsed := time.Since(start)

	// The sessions' states: none may have failed.
	list, err := c.ListSessions(context.Background())
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	states := map[string]int{}
	for _, s := range list {
		states[s.State]++
		if s.State == api.StateFailed {
			l.fail("session %s failed during the load: %s", s.ID, s.Error)
		}
	}

	// Remove everything.
	for _, s := range list {
		if err := c.DeleteSession(context.Background(), s.ID); err != nil {
			l.fail("rm %s (%s) after the load: %v", s.ID, s.State, err)
		}
	}
	if left, err := c.ListSessions(context.Background()); err != nil || len(left) != 0 {
		l.fail("sessions after removing all: %v (%v)", left, err)
	}
	leaks := l.checkLeaks(base, pid)
	rssAfterRm := rssOf(t, pid)

	// Then a clean stop, which ends the spares.
	close(watchStop)
	<-watchDone
	srv := e.srv
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		l.fail("server on SIGTERM: %v", err)
	}
	serverLogText := srv.log.String()
	leaks += l.checkStopped()

	// The summary, and the bound on RSS: a leak grows with the ops served
	// (thousands a minute), while the heap of one moment is bounded by the
	// clients in flight; Go's collector lets the heap reach twice the live
	// data before it collects and returns memory to the OS only gradually,
	// so the end may sit above the start by a share of the peak's
	// buffers. Start + 50% or + 64 MiB, whichever is larger, allows that
	// and no steady growth.
	bound := max(rssStart*3/2, rssStart+64<<20)
	if rssEnd > bound {
		l.fail("server RSS grew from %s to %s (peak %s), over the bound %s", mib(rssStart), mib(rssEnd), mib(rssMax.Load()), mib(bound))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var kinds []string
	total := 0
	for _, op := range loadOps {
		n := l.ops[op.name]
		if n == nil {
			n = &opTally{}
		}
		sum := n.ok + n.conflict + n.notFound + n.failed
		total += sum
		kinds = append(kinds, fmt.Sprintf("%s %d/%d", op.name, n.ok, sum))
	}
	var c409, c404 int
	for _, n := range l.ops {
		c409 += n.conflict
		c404 += n.notFound
	}
	t.Logf("load summary: %d clients, %d sessions, %s: %d ops (%.1f/s), ok/all by kind: %s; expected 409s %d, 404s %d; failures %d (5xx %d); leaked objects %d (of %d cgroups watched); "+
		"sessions created %d, states at the end %v; server RSS %s at start, %s at end (peak %s, bound %s), %s after rm of all",
		nClients, nSessions, dur, total, float64(total)/elapsed.Seconds(), strings.Join(kinds, ", "), c409, c404,
		len(l.failures), l.fiveXX, leaks, len(l.cgroups), len(l.created), states, mib(rssStart), mib(rssEnd), mib(rssMax.Load()), mib(bound), mib(rssAfterRm))
	l.diagWG.Wait()
	for _, d := range l.diagnoses {
		t.Log(d)
	}
	// One error per kind of failure, with its first occurrence.
	var kindList []string
	for k := range l.kinds {
		kindList = append(kindList, k)
	}
	slices.Sort(kindList)
	for _, k := range kindList {
		report := t.Errorf
		if l.kinds[k] == 1 && l.examples[k] == k {
			report("%s", k)
			continue
		}
		report("%d× %s; the first: %s", l.kinds[k], k, l.examples[k])
	}
	if p := os.Getenv("COVE_LOAD_SERVER_LOG"); p != "" {
		if err := os.WriteFile(p, []byte(serverLogText), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func pickOp(rng *rand.Rand) string {
	total := 0
	for _, op := range loadOps {
		total += op.weight
	}
	n := rng.IntN(total)
	for _, op := range loadOps {
		if n < op.weight {
			return op.name
		}
		n -= op.weight
	}
	panic("unreachable")
}

// drain waits for the clients to finish their last ops once runCtx ends.
// An exec that a park caught waits for the next wake, which on a busy
// server another client's op brings; at the end no op may come, so drain
// wakes the parked sessions while it waits. It samples RSS meanwhile.
func (l *load) drain(runCtx context.Context, clientsDone chan struct{}, pid int, rssMax *atomic.Int64) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	var deadline <-chan time.Time
	runDone := runCtx.Done()
	for {
		select {
		case <-clientsDone:
			return
		case <-runDone:
			runDone = nil // once
			deadline = time.After(opTimeout + time.Minute)
		case <-deadline:
			l.t.Fatalf("clients still busy %s after the end of the load%s", opTimeout+time.Minute, l.e.serverLog())
		case <-tick.C:
		}
		if rss := rssOf(l.t, pid); rss > rssMax.Load() {
			rssMax.Store(rss)
		}
		if runCtx.Err() != nil {
			ss, _ := l.c.ListSessions(context.Background())
			for _, s := range ss {
				if s.State == api.StateParked {
					_, _ = l.c.WakeSession(context.Background(), s.ID)
				}
			}
		}
	}
}

// pick returns a random session of the pool, or "".
func (l *load) pick(rng *rand.Rand) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pool) == 0 {
		return ""
	}
	return l.pool[rng.IntN(len(l.pool))]
}

// race is what was happening to a session at one moment.
type race struct {
	removed bool // an rm was sent
	parks   int  // parks started so far
	parking bool // a park was in flight
}

func (l *load) state(id string) race {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stateLocked(id)
}

func (l *load) stateLocked(id string) race {
	return race{l.removing[id], l.parks[id], l.parking[id] > 0}
}

func (l *load) tally(op string) *opTally {
	n := l.ops[op]
	if n == nil {
		n = &opTally{}
		l.ops[op] = n
	}
	return n
}

func (l *load) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	l.failures = append(l.failures, msg)
	l.kinds[msg]++
	l.examples[msg] = msg
}

func (l *load) failed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.failures) > 0
}

// judge records the outcome of op on session id, begun when the session's
// state was before: 409 is a correct answer while other clients park,
// wake or remove it, 404 once it is being removed; any other error is a
// failure, and a 5xx comes with the server log's tail of that moment.
func (l *load) judge(op, id string, before race, err error) {
	now := l.state(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.tally(op)
	var ae *api.Error
	switch {
	case err == nil:
		n.ok++
		return
	case api.IsCode(err, api.CodeConflict):
		n.conflict++
		return
	case api.IsCode(err, api.CodeNotFound) && now.removed:
		n.notFound++
		return
	case now.removed && !errors.As(err, new(*api.Error)):
		// A download whose answer had begun when the session was
		// removed can only be cut: the client sees the stream break.
		n.notFound++
		return
	case errors.As(err, &ae) && api.Status(ae.Code) >= 500:
		l.fiveXX++
	}
	n.failed++
	what := ""
	switch {
	case now.removed && !before.removed:
		what = "an rm of the session began meanwhile"
	case now.removed:
		what = "on a session being removed"
	case before.parking || now.parking || now.parks != before.parks:
		what = "a park of the session was in flight"
	}
	code := api.CodeOf(err)
	var ae2 *api.Error
	if !errors.As(err, &ae2) {
		code = "client-side"
	}
	kind := fmt.Sprintf("%s → %s, %s", op, code, cmp.Or(what, "no rm or park in flight"))
	l.kinds[kind]++
	if what != "" {
		what = " (" + what + ")"
	}
	if (api.IsCode(err, api.CodeTimeout) || strings.Contains(err.Error(), "has not answered yet")) && !now.removed {
		l.diagWG.Add(1)
		go func() {
			defer l.diagWG.Done()
			l.diagnose(id)
		}()
	}
	msg := fmt.Sprintf("%s %s: %v [code %s]%s", op, id, err, api.CodeOf(err), what)
	if api.Status(api.CodeOf(err)) >= 500 && l.fiveXX <= 10 && l.e.srv != nil {
		log := l.e.srv.log.String()
		if len(log) > 3000 {
			log = log[len(log)-3000:]
		}
		msg += "\nserver log (tail) then:\n" + log
	}
	l.failures = append(l.failures, msg)
	if _, ok := l.examples[kind]; !ok {
		l.examples[kind] = msg
	}
}

// do runs one op; id "" picks a session from the pool.
func (l *load) do(rng *rand.Rand, op, id string) {
	if op == opReplace {
		l.replace(rng)
		return
	}
	if id == "" {
		if id = l.pick(rng); id == "" {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	before := l.state(id)
	if op == opPark {
		l.mu.Lock()
		l.parks[id]++
		l.parking[id]++
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			l.parking[id]--
			l.mu.Unlock()
		}()
	}
	var err error
	switch op {
	case opExec:
		err = l.exec(ctx, rng, id)
	case opStdin:
		err = l.stdin(ctx, rng, id)
	case opWS:
		err = l.ws(ctx, rng, id)
	case opFile:
		err = l.file(ctx, rng, id)
	case opTar:
		err = l.tar(ctx, rng, id)
	case opPark:
		var s api.Session
		if s, err = l.c.ParkSession(ctx, id); err == nil && s.State != api.StateParked {
			err = fmt.Errorf("park answered state %s", s.State)
		}
	case opWake:
		var s api.Session
		if s, err = l.c.WakeSession(ctx, id); err == nil && s.State != api.StateRunning {
			err = fmt.Errorf("wake answered state %s", s.State)
		}
	}
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("no answer within %s: %w", opTimeout, err)
	}
	l.judge(op, id, before, err)
}

func token(rng *rand.Rand) string {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return hex.EncodeToString(b)
}

func randomData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// exec runs, buffered, a command that prints the session's marker and a
// token.
func (l *load) exec(ctx context.Context, rng *rand.Rand, id string) error {
	tok := token(rng)
	res, err := l.c.Exec(ctx, id, api.ExecRequest{Argv: []string{"sh", "-c", `cat ` + markerPath + ` && echo " $1"`, "sh", tok}})
	if err != nil {
		return err
	}
	if want := id + " " + tok + "\n"; string(res.Stdout) != want || len(res.Stderr) != 0 || res.ExitCode != 0 {
		return fmt.Errorf("exec: stdout %q stderr %q exit %d, want %q", res.Stdout, res.Stderr, res.ExitCode, want)
	}
	return nil
}

// stdin runs cat with stdin through the NDJSON stream.
func (l *load) stdin(ctx context.Context, rng *rand.Rand, id string) error {
	in := randomData(rng, 1+rng.IntN(64<<10))
	var out, errOut bytes.Buffer
	code := -1
	err := l.c.ExecStream(ctx, id, api.ExecRequest{Argv: []string{"cat"}, Stdin: in}, func(ev api.ExecEvent) {
		switch ev.Type {
		case api.EventStdout:
			out.Write(ev.Data)
		case api.EventStderr:
			errOut.Write(ev.Data)
		case api.EventExit:
			code = ev.ExitCode
		}
	})
	if err != nil {
		return err
	}
	if !bytes.Equal(out.Bytes(), in) || errOut.Len() != 0 || code != 0 {
		return fmt.Errorf("stream exec cat: %d bytes out (stdin %d, equal %v), stderr %q, exit %d", out.Len(), len(in), bytes.Equal(out.Bytes(), in), errOut.Bytes(), code)
	}
	return nil
}

// ws runs cat behind the WebSocket, stdin sent in chunks.
func (l *load) ws(ctx context.Context, rng *rand.Rand, id string) error {
	in := randomData(rng, 1+rng.IntN(32<<10))
	conn, err := l.c.ExecInteractive(ctx, id, api.ExecRequest{Argv: []string{"cat"}})
	if err != nil {
		return err
	}
	defer conn.Close()
	var chunks [][]byte
	for rest := in; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(8<<10))
		chunks, rest = append(chunks, rest[:n]), rest[n:]
	}
	sendErr := make(chan error, 1)
	go func() {
		for _, c := range chunks {
			if err := conn.Send(api.ExecEvent{Type: api.EventStdin, Data: c}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- conn.Send(api.ExecEvent{Type: api.EventStdinClose})
	}()
	var out bytes.Buffer
	for {
		ev, err := conn.Recv()
		if err != nil {
			return fmt.Errorf("ws exec: %w (before the exit event)", err)
		}
		switch ev.Type {
		case api.EventStdout:
			out.Write(ev.Data)
		case api.EventStderr:
			return fmt.Errorf("ws exec cat: stderr %q", ev.Data)
		case api.EventError:
			if ev.Error == nil {
				return errors.New("ws exec: error event without an error")
			}
			return &api.Error{Code: ev.Error.Code, Message: ev.Error.Message}
		case api.EventExit:
			if err := <-sendErr; err != nil {
				return err
			}
			if !bytes.Equal(out.Bytes(), in) || ev.ExitCode != 0 {
				return fmt.Errorf("ws exec cat: %d bytes out (stdin %d, equal %v), exit %d", out.Len(), len(in), bytes.Equal(out.Bytes(), in), ev.ExitCode)
			}
			return nil
		}
	}
}

// file writes a file, reads it back and removes it.
func (l *load) file(ctx context.Context, rng *rand.Rand, id string) error {
	p := "/root/f-" + token(rng)
	data := randomData(rng, rng.IntN(256<<10))
	if err := l.c.WriteFile(ctx, id, p, 0o600, bytes.NewReader(data)); err != nil {
		return err
	}
	rc, err := l.c.ReadFile(ctx, id, p)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("read %s: %d bytes, want the %d written", p, len(got), len(data))
	}
	return l.c.Remove(ctx, id, p)
}

// tar puts a small tree in as tar, takes it out again and compares.
func (l *load) tar(ctx context.Context, rng *rand.Rand, id string) error {
	dir := "t-" + token(rng)
	files := map[string][]byte{}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755})
	for i := range 1 + rng.IntN(4) {
		name := fmt.Sprintf("%s/%d.bin", dir, i)
		files[name] = randomData(rng, rng.IntN(16<<10))
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(files[name]))})
		tw.Write(files[name])
	}
	tw.Close()
	if err := l.c.PutTar(ctx, id, "/root", &buf); err != nil {
		return err
	}
	rc, err := l.c.GetTar(ctx, id, "/root/"+dir)
	if err != nil {
		return err
	}
	defer rc.Close()
	got := map[string][]byte{}
	tr := tar.NewReader(bufio.NewReader(rc))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("get tar: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("get tar: %w", err)
			}
			got[h.Name] = b
		}
	}
	if len(got) != len(files) {
		return fmt.Errorf("tar out of /root/%s: %d files, want %d", dir, len(got), len(files))
	}
	for name, b := range files {
		if !bytes.Equal(got[name], b) {
			return fmt.Errorf("tar out of /root/%s: %s differs (%d bytes, want %d)", dir, name, len(got[name]), len(b))
		}
	}
	return l.c.Remove(ctx, id, "/root/"+dir)
}

// replace removes a random session of the pool and creates another.
func (l *load) replace(rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	l.mu.Lock()
	if len(l.pool) == 0 {
		l.mu.Unlock()
		return
	}
	i := rng.IntN(len(l.pool))
	id := l.pool[i]
	l.pool = slices.Delete(l.pool, i, i+1)
	l.mu.Unlock()
	if !l.remove(ctx, id, opReplace) {
		return
	}
	l.mu.Lock()
	short := len(l.pool) < l.target
	l.mu.Unlock()
	if short {
		l.create(ctx)
	}
}

// remove removes session id (already out of the pool) and checks it is
// gone. On a 409 (it is parking or waking) it goes back to the pool.
func (l *load) remove(ctx context.Context, id, op string) bool {
	l.mu.Lock()
	before := l.stateLocked(id)
	l.removing[id] = true
	l.mu.Unlock()
	err := l.c.DeleteSession(ctx, id)
	if api.IsCode(err, api.CodeConflict) {
		l.mu.Lock()
		l.removing[id] = false
		l.pool = append(l.pool, id)
		l.mu.Unlock()
	}
	if err == nil {
		if _, gerr := l.c.GetSession(ctx, id); !api.IsCode(gerr, api.CodeNotFound) {
			err = fmt.Errorf("get after rm: %v, want not found", gerr)
		}
	}
	l.judge(op, id, before, err)
	return err == nil
}

// create creates a session, writes its marker and adds it to the pool; it
// returns its id, or "" after recording the failure.
func (l *load) create(ctx context.Context) string {
	s, err := l.c.CreateSession(ctx, api.CreateSessionRequest{MemoryMiB: loadMemMiB, BootTimeout: "3m"})
	if err == nil {
		l.mu.Lock()
		l.created = append(l.created, s.ID)
		l.mu.Unlock()
		if s.State != api.StateRunning {
			err = fmt.Errorf("create answered state %s", s.State)
		}
	}
	if err == nil {
		// Nobody else knows the session yet: any error here is a failure.
		err = l.c.WriteFile(ctx, s.ID, markerPath, 0o644, strings.NewReader(s.ID))
	}
	l.judge("create", s.ID, race{}, err)
	if err != nil {
		return ""
	}
	l.mu.Lock()
	l.pool = append(l.pool, s.ID)
	l.mu.Unlock()
	return s.ID
}

// watchCgroups records, every second until stop closes, the cgroups that
// hold a QEMU process of this home (sessions' and spares'), so that the
// end can check each is gone; done closes when it returns.
func (l *load) watchCgroups(done chan struct{}) chan struct{} {
	stop := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			for name := range qemuCgroups(l.e.home) {
				l.mu.Lock()
				l.cgroups[name] = true
				l.mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return stop
}

// qemuCgroups returns the VM ids of the per-VM memory cgroups
// (/sys/fs/cgroup/memory/cove/TAG.ID, TAG the server's tag for home) of
// the QEMU processes of home.
func qemuCgroups(home string) map[string]bool {
	out := map[string]bool{}
	for pid := range vmtest.QEMUProcs(home) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			// hierarchy-ID:controllers:path
			f := strings.SplitN(line, ":", 3)
			if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
				if name, ok := strings.CutPrefix(f[2], "/cove/"); ok {
					if id, ok := qemu.CgroupID(home, name); ok {
						out[id] = true
					}
				}
			}
		}
	}
	return out
}

// vmCgroupDir is the v1 cgroup of VM id of the server on home, in the
// hierarchy of ctrl.
func vmCgroupDir(home, ctrl, id string) string {
	return filepath.Join("/sys/fs/cgroup", ctrl, "cove", qemu.CgroupName(home, id))
}

// serverSample is what the server holds at one moment.
type serverSample struct {
	goroutines, fds int
	rss             int64
}

func (s serverSample) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, RSS %s", s.goroutines, s.fds, mib(s.rss))
}

func sampleServer(t *testing.T, e *e2e, pid int) serverSample {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return serverSample{goroutines: goroutines(t, e), fds: len(fds), rss: rssOf(t, pid)}
}

// goroutines reads go_goroutines from the server's /metrics.
func goroutines(t *testing.T, e *e2e) int {
	t.Helper()
	resp, err := http.Get("http://" + e.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("/metrics: %q", sc.Text())
			}
			return int(n)
		}
	}
	t.Fatalf("/metrics has no go_goroutines (%v)", sc.Err())
	return 0
}

// rssOf returns VmRSS of pid in bytes.
func rssOf(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS: %q", line)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// Slack over the idle baseline once every session is gone: the server's
// side of HTTP connections that the client closed a moment ago may still
// be winding down when a sample is taken, and a spare may be starting.
const (
	goroutineSlack = 10
	fdSlack        = 4
)

// checkLeaks checks, with the server still up and every session removed,
// that nothing of a removed session is left and that the server is back
// to its idle counts. Spares of the sessions' shape may run. It returns
// the number of leaked objects.
func (l *load) checkLeaks(base serverSample, pid int) int {
	t := l.t
	leaks := 0
	leak := func(format string, args ...any) {
		leaks++
		l.fail("leak: "+format, args...)
	}
	// rm returns once QEMU has exited; a VM process still here leaked.
	for pid, cmd := range vmtest.VMProcs(l.e.home) {
		leak("QEMU %d runs after every session was removed: %.200s", pid, cmd)
	}
	live := qemuCgroups(l.e.home) // spares, by their names
	l.mu.Lock()
	created := slices.Clone(l.created)
	seen := make([]string, 0, len(l.cgroups))
	for name := range l.cgroups {
		seen = append(seen, name)
	}
	l.mu.Unlock()
	for _, id := range created {
		if _, err := os.Lstat(filepath.Join(l.e.home, "sessions", id)); !errors.Is(err, fs.ErrNotExist) {
			leak("session dir of removed %s: %v", id, err)
		}
	}
	for _, name := range append(created, seen...) {
		if live[name] {
			continue
		}
		for _, ctrl := range []string{"memory", "cpu"} {
			if _, err := os.Stat(vmCgroupDir(l.e.home, ctrl, name)); err == nil {
				leak("cgroup %s of a VM that is gone", vmCgroupDir(l.e.home, ctrl, name))
			}
		}
	}
	leaks += l.checkFiles(live)

	// The server's counts: closed client connections end their server
	// goroutines a moment later, so wait (bounded) for them to settle.
	l.tr.CloseIdleConnections()
	var now serverSample
	deadline := time.Now().Add(time.Minute)
	for {
		now = sampleServer(t, l.e, pid)
		if now.goroutines <= base.goroutines+goroutineSlack && now.fds <= base.fds+fdSlack {
			break
		}
		if time.Now().After(deadline) {
			leak("server after the load: %s; idle before: %s (slack %d goroutines, %d fds)", now, base, goroutineSlack, fdSlack)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("server after removing all: %s; idle before: %s; spares running: %d", now, base, len(live))
	return leaks
}

// checkFiles checks that under home/sessions only the spares' and clone
// files' directories are left, holding only the live spares' files, and
// that no socket is left anywhere in home outside a live spare's dir.
func (l *load) checkFiles(live map[string]bool) int {
	leaks := 0
	sessions := filepath.Join(l.e.home, "sessions")
	err := filepath.WalkDir(l.e.home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(sessions, p)
		inSessions := !strings.HasPrefix(rel, "..")
		parts := strings.Split(rel, string(filepath.Separator))
		inLiveSpare := inSessions && len(parts) >= 2 && parts[0] == ".spares" && live[parts[1]]
		switch {
		case inLiveSpare:
			return nil
		case d.Type()&fs.ModeSocket != 0:
			leaks++
			l.fail("leak: socket %s", p)
		case !inSessions || rel == "." || rel == ".spares" || rel == ".clone-files":
		default:
			leaks++
			l.fail("leak: %s under sessions after every session was removed", p)
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		l.fail("walk %s: %v", l.e.home, err)
	}
	return leaks
}

// checkStopped checks, after the server's clean stop, that no QEMU
// process, spare directory, socket or cgroup of this home is left.
func (l *load) checkStopped() int {
	leaks := 0
	// The spares were sent SIGKILL; wait (bounded) for them to be gone.
	deadline := time.Now().Add(30 * time.Second)
	for len(vmtest.QEMUProcs(l.e.home)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for pid, cmd := range vmtest.QEMUProcs(l.e.home) {
		leaks++
		l.fail("leak: QEMU %d runs 30s after the server's clean stop: %.200s", pid, cmd)
	}
	leaks += l.checkFiles(nil)
	l.mu.Lock()
	defer l.mu.Unlock()
	for name := range l.cgroups {
		for _, ctrl := range []string{"memory", "cpu"} {
			if _, err := os.Stat(vmCgroupDir(l.e.home, ctrl, name)); err == nil {
				leaks++
				msg := fmt.Sprintf("leak: cgroup %s after the server's clean stop", vmCgroupDir(l.e.home, ctrl, name))
				l.failures = append(l.failures, msg)
				l.kinds[msg]++
				l.examples[msg] = msg
			}
		}
	}
	return leaks
}
