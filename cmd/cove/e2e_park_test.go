package main_test

// The end-to-end test's park and wake subtests: the README's promises of
// park, wake, auto-wake, --no-auto-wake and park --until, through the CLI,
// a real server and real VMs.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// machine is what a guest holds only in its memory and process tree: a
// file in tmpfs (RAM), and a process that hands out, through a FIFO, a
// token it holds in its own memory. A reboot or a restore that lost
// memory changes what probe prints.
type machine struct {
	id    string
	token string
	setup string // what probe printed right after the setup
}

// probeScript prints the tmpfs file's checksum, the token read from the
// process (a reader waits for it: a lost process hangs the read, which
// 'timeout' ends), that process's PID and start time (in clock ticks since
// boot) and the kernel's boot id.
//
// The token is read by the shell's read builtin, which takes a pipe one
// byte at a time and so never more than its line: the holder opens the
// FIFO again as soon as it has written, and may write its next line while
// the reader still holds it open. A reader that read ahead (head reads a
// block) left the start of that next line consumed and its rest in the
// FIFO for the next probe, which then printed a token cut short (CI saw
// it once after a wake).
const probeScript = `set -e
sha256sum /dev/shm/blob | cut -d' ' -f1
timeout 30 sh -c 'read -r line < /run/holder.fifo && echo "$line"'
pid=$(cat /run/holder.pid)
echo "$pid $(cut -d' ' -f22 /proc/$pid/stat)"
cat /proc/sys/kernel/random/boot_id`

// newMachine sets up the memory-only state in a running session.
func newMachine(e *e2e, id string) *machine {
	e.t.Helper()
	m := &machine{id: id, token: hex.EncodeToString(randomBytes(e.t, 16))}
	// The holder keeps the token in its memory (an argument) and writes it
	// to each reader of the FIFO. It ignores SIGPIPE: its next write may
	// find the reader gone, having taken its line. All its descriptors
	// are detached from the exec, so that the exec ends.
	e.ok(nil, "exec", id, "--", "sh", "-c", `set -e
head -c 1048576 /dev/urandom > /dev/shm/blob
rm -f /run/holder.fifo; mkfifo /run/holder.fifo
sh -c 'trap "" PIPE; while :; do echo "$1" > /run/holder.fifo; done' holder "$0" </dev/null >/dev/null 2>&1 &
echo $! > /run/holder.pid`, m.token)
	m.setup = m.probe(e)
	if !strings.Contains(m.setup, "\n"+m.token+"\n") {
		e.t.Fatalf("probe right after the setup:\n%s\nwant the token %s in it", m.setup, m.token)
	}
	return m
}

func (m *machine) probe(e *e2e) string {
	e.t.Helper()
	return e.ok(nil, "exec", m.id, "--", "sh", "-c", probeScript)
}

// wantIntact checks that the guest's memory, processes and boot are the
// ones the setup saw.
func (m *machine) wantIntact(e *e2e, when string) {
	e.t.Helper()
	if got := m.probe(e); got != m.setup {
		e.t.Fatalf("%s: the guest's memory and processes changed:\n%s\nwant, as before the park:\n%s", when, got, m.setup)
	}
}

// testParkWake parks and wakes a running session through the CLI: the park
// ends its QEMU process and shows the snapshot; a second park leaves it as
// it is; the wake restores the same machine (tmpfs, a process and what it
// holds in memory, the boot); an exec on a parked session wakes it; and
// /metrics follows: sessions by state, the park and wake histograms.
func testParkWake(t *testing.T, e *e2e, id string) {
	defer e.in(t)()
	m := newMachine(e, id)
	before := e.metrics()
	parks, wakes := before["cove_park_seconds_count"], before["cove_wake_seconds_count"]
	e.wantMetrics(before, map[string]float64{`cove_sessions{state="running"}`: 1, `cove_sessions{state="parked"}`: 0})

	if got := e.ok(nil, "park", id); got != id+" parked\n" {
		t.Fatalf("park printed %q", got)
	}
	parked := e.inspect(id)
	if parked.State != api.StateParked || parked.Snapshot == nil || parked.Snapshot.DiskBytes <= 0 || parked.Snapshot.MemoryBytes != 512<<20 {
		t.Fatalf("session inspect after park: %+v (snapshot %+v)", parked, parked.Snapshot)
	}
	if pid := qemu.PIDOf(e.home, id); pid != 0 {
		t.Fatalf("QEMU %d of %s runs on after the park", pid, id)
	}
	table := e.ok(nil, "ls")
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `\s+parked\s+tiny\s+\S+\s+\S+\s+\S+\s+[0-9.]+[KMG]iB$`).MatchString(table) {
		t.Errorf("ls does not show %s parked with its snapshot's size:\n%s", id, table)
	}
	e.wantMetrics(e.metrics(), map[string]float64{
		`cove_sessions{state="running"}`: 0, `cove_sessions{state="parked"}`: 1,
		"cove_park_seconds_count": parks + 1, "cove_wake_seconds_count": wakes,
	})

	if got := e.ok(nil, "wake", id); got != id+" running\n" {
		t.Fatalf("wake printed %q", got)
	}
	if s := e.inspect(id); s.State != api.StateRunning || s.Snapshot != nil || qemu.PIDOf(e.home, id) == 0 {
		t.Fatalf("after wake: %+v, QEMU %d", s, qemu.PIDOf(e.home, id))
	}
	m.wantIntact(e, "after park and wake")
	e.wantMetrics(e.metrics(), map[string]float64{
		`cove_sessions{state="running"}`: 1, `cove_sessions{state="parked"}`: 0,
		"cove_park_seconds_count": parks + 1, "cove_wake_seconds_count": wakes + 1,
	})

	// A parked session is left as it is by a park, a running one by a
	// wake; neither is counted. The wake an exec does (auto-wake) is.
	e.ok(nil, "park", id)
	parked = e.inspect(id)
	if parked.State != api.StateParked || !parked.AutoWake {
		t.Fatalf("parked again: %+v, want parked with auto-wake on", parked)
	}
	if got := e.ok(nil, "park", id); got != id+" parked\n" {
		t.Fatalf("a park of a parked session printed %q", got)
	}
	if again := e.inspect(id); !again.UpdatedAt.Equal(parked.UpdatedAt) || again.Snapshot == nil || *again.Snapshot != *parked.Snapshot {
		t.Fatalf("a park of a parked session changed it: %+v, was %+v", again, parked)
	}

	// Any call wakes a parked session first (auto-wake is on by default).
	m.wantIntact(e, "after a park and an exec that woke it")
	if s := e.inspect(id); s.State != api.StateRunning {
		t.Fatalf("after an exec on the parked session: %s, want running", s.State)
	}
	if got := e.ok(nil, "wake", id); got != id+" running\n" {
		t.Fatalf("a wake of a running session printed %q", got)
	}
	after := e.metrics()
	e.wantMetrics(after, map[string]float64{
		"cove_park_seconds_count": parks + 2, "cove_wake_seconds_count": wakes + 2,
	})
	if after["cove_exec_seconds_count"] <= before["cove_exec_seconds_count"] {
		t.Errorf("/metrics: cove_exec_seconds_count %v after the execs, was %v", after["cove_exec_seconds_count"], before["cove_exec_seconds_count"])
	}
	if after[`cove_http_requests_total{code="200",method="POST"}`] < before[`cove_http_requests_total{code="200",method="POST"}`]+4 {
		t.Errorf("/metrics: the parks and wakes are not counted in cove_http_requests_total: %v, was %v",
			after[`cove_http_requests_total{code="200",method="POST"}`], before[`cove_http_requests_total{code="200",method="POST"}`])
	}
	if after["cove_boot_seconds_count"] < 1 {
		t.Errorf("/metrics: cove_boot_seconds_count %v after a create", after["cove_boot_seconds_count"])
	}
}

// testNoAutoWake parks a session created with --no-auto-wake: exec and file
// calls on it are 409 and leave it parked, through the CLI and over HTTP,
// until 'cove wake'. (testParkWake is the positive control: there the same
// exec wakes an auto-wake session.)
func testNoAutoWake(t *testing.T, e *e2e, id string) {
	defer e.in(t)()
	if s := e.inspect(id); s.State != api.StateRunning || s.AutoWake {
		t.Fatalf("session created with --no-auto-wake: %+v, want running with auto_wake false", s)
	}
	e.ok(nil, "park", id)
	parked := e.inspect(id)
	if parked.State != api.StateParked {
		t.Fatalf("after park: %s", parked.State)
	}

	msg := "session " + id + " is parked"
	e.wantCLIError(nil, []string{"exec", id, "--", "true"}, msg)
	e.wantCLIError([]byte("x"), []string{"exec", "-t", id, "--", "true"}, msg)
	e.wantCLIError(nil, []string{"cp", id + ":/root/state", "-"}, msg)
	e.wantCLIError([]byte("x"), []string{"cp", "-", id + ":/root/x"}, msg)
	sid := "/v1/sessions/" + id
	e.wantAPIError("POST", sid+"/exec", []byte(`{"argv":["true"]}`), http.StatusConflict, api.CodeConflict, msg)
	e.wantAPIError("GET", sid+"/files?path=/root/state", nil, http.StatusConflict, api.CodeConflict, msg)
	e.wantAPIError("GET", sid+"/files/stat?path=/root/state", nil, http.StatusConflict, api.CodeConflict, msg)

	if s := e.inspect(id); s.State != api.StateParked || !s.UpdatedAt.Equal(parked.UpdatedAt) {
		t.Fatalf("after the refused calls: %+v, want it parked as it was", s)
	}
	if pid := qemu.PIDOf(e.home, id); pid != 0 {
		t.Fatalf("QEMU %d runs for %s, which should be parked", pid, id)
	}
	if got := e.ok(nil, "wake", id); got != id+" running\n" {
		t.Fatalf("wake printed %q", got)
	}
	if got := e.ok(nil, "exec", id, "--", "cat", "/root/state"); got != "kept\n" {
		t.Fatalf("after wake: %q", got)
	}
}

// checkSuiteFixture is a real GitHub check_suite delivery (from
// internal/trigger's fixtures), its repository and head commit.
const (
	checkSuiteFixture = "../../internal/trigger/testdata/webhook-github-check-suite.json"
	checkSuiteRepo    = "cove-dev/widgets"
	checkSuiteSHA     = "4f3c2a1b9e8d7c6b5a49382716f5e4d3c2b1a098"
)

// testParkUntilDelivery parks a session until a GitHub check suite of one
// commit completes, restarts the server with GitHub's hook secret in
// COVE_GITHUB_WEBHOOK_SECRET, and sends signed deliveries: only the
// matching one wakes the session, and its event reaches the guest once.
// The session has auto-wake off, so nothing but the delivery can wake it.
func testParkUntilDelivery(t *testing.T, e *e2e, id string) {
	defer e.in(t)()
	body, err := os.ReadFile(checkSuiteFixture)
	if err != nil {
		t.Fatalf("the check_suite fixture: %v", err)
	}
	other := bytes.ReplaceAll(body, []byte(checkSuiteSHA), []byte("0000000000000000000000000000000000000001"))
	if bytes.Equal(other, body) || !bytes.Contains(body, []byte(`"full_name":"`+checkSuiteRepo+`"`)) {
		t.Fatalf("the fixture does not name %s and commit %s", checkSuiteRepo, checkSuiteSHA)
	}
	expr := "github:check_suite.completed repo=" + checkSuiteRepo + " head_sha=" + checkSuiteSHA

	// A bad expression is refused with a caret under the fault, and parks
	// nothing.
	_, errOut, code := e.run(nil, "park", id, "--until", "github:check_suite repo")
	if code != 1 || !strings.Contains(errOut, "github:check_suite repo\n") || !strings.Contains(errOut, "^") {
		t.Errorf("park --until with a bad expression: exit %d, stderr %q; want 1 and a caret", code, errOut)
	}
	if s := e.inspect(id); s.State != api.StateRunning {
		t.Fatalf("after a refused park --until: %s, want running", s.State)
	}

	start := time.Now()
	if got := e.ok(nil, "park", id, "--until", expr, "--timeout", "1h"); got != id+" parked\n" {
		t.Fatalf("park --until printed %q", got)
	}
	end := time.Now()
	s := e.inspect(id)
	if s.State != api.StateParked || s.Waiting == nil || !slices.Equal(s.Waiting.Until, []string{expr}) || s.Waiting.Deadline == nil {
		t.Fatalf("session inspect after park --until: %+v (waiting %+v)", s, s.Waiting)
	}
	// The store may keep whole seconds.
	if d := *s.Waiting.Deadline; d.Before(start.Add(time.Hour-time.Second)) || d.After(end.Add(time.Hour+time.Second)) {
		t.Errorf("deadline %s, want an hour after the park (%s to %s)", d, start, end)
	}

	// The subscription outlives a restart; GitHub's secret is set the
	// README's way.
	const secret = "e2e-check-suite-secret"
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server on SIGTERM: %v", err)
	}
	e.startServer("COVE_GITHUB_WEBHOOK_SECRET=" + secret)
	if s := e.inspect(id); s.State != api.StateParked || s.Waiting == nil || !slices.Equal(s.Waiting.Until, []string{expr}) {
		t.Fatalf("after a server restart: %+v (waiting %+v), want parked and waiting", s, s.Waiting)
	}

	send := func(b []byte, key, delivery string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+e.addr+"/v1/hooks/github", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "check_suite")
		req.Header.Set("X-GitHub-Delivery", delivery)
		req.Header.Set("X-Hub-Signature-256", trigger.Sign([]byte(key), b))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, d := range []struct {
		body    []byte
		key, id string
		want    int
		what    string
	}{
		{body, "not the secret", "e2e-cs-forged", http.StatusUnauthorized, "signed with another secret"},
		{other, secret, "e2e-cs-other", http.StatusAccepted, "of another commit"},
		{body, secret, "e2e-cs-match", http.StatusAccepted, "that matches"},
		{body, secret, "e2e-cs-match", http.StatusOK, "sent again (a duplicate)"},
	} {
		if got := send(d.body, d.key, d.id); got != d.want {
			t.Fatalf("a delivery %s answered %d, want %d", d.what, got, d.want)
		}
	}

	s = e.waitState(id, api.StateRunning, 3*time.Minute)
	if s.Waiting != nil {
		t.Errorf("still waiting after the event: %+v", s.Waiting)
	}
	// The oldest event first: had the other commit's delivery matched, it
	// would be this one (and would have used up the subscription).
	out := e.ok(nil, "exec", id, "--", "cove-agent", "event", "wait", "--timeout", "2m")
	var ev struct {
		Source, Name, ID string
		Fields           map[string]string
		Body             struct {
			CheckSuite struct {
				HeadSHA string `json:"head_sha"`
			} `json:"check_suite"`
		}
	}
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatalf("event wait printed %q: %v", out, err)
	}
	if ev.Source != "github" || ev.Name != "check_suite.completed" || ev.ID != "e2e-cs-match" ||
		ev.Fields["repo"] != checkSuiteRepo || ev.Body.CheckSuite.HeadSHA != checkSuiteSHA {
		t.Fatalf("the event in the guest: %+v\n%s", ev, out)
	}
	// Once: the duplicate was not delivered again (the same wait saw the
	// first event above).
	if out, _, code := e.run(nil, "exec", id, "--", "cove-agent", "event", "wait", "--timeout", "3s"); code != 124 {
		t.Fatalf("a second event wait: exit %d, %q; want 124 (nothing more)", code, out)
	}
	if got := e.ok(nil, "exec", id, "--", "cat", "/root/state"); got != "kept\n" {
		t.Fatalf("after the wake by the event: %q", got)
	}
	// Counted since the restart.
	e.wantMetrics(e.metrics(), map[string]float64{
		`cove_webhooks_total{code="202"}`: 2, `cove_webhooks_total{code="401"}`: 1, `cove_webhooks_total{code="200"}`: 1,
	})
}
