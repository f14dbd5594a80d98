package main_test

// The E2B-compatible API (package e2b) against a real 'cove server'
// booting real VMs: the official E2B SDK (npm e2b, pinned in
// internal/e2b/sdktest) driven by a Node script, and bad input over real
// HTTP.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/e2b/sdktest"
	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmtest"
)

// sdkDir is a directory holding the SDK test's script beside the SDK,
// installed by npm ci from its package-lock.json once per lock file under
// the test cache (package sdktest).
func sdkDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := sdktest.Prepare(vmtest.CacheDir(), dir, func(msg string) { t.Log(msg) })
	if errors.Is(err, sdktest.ErrNoNode) {
		testenv.Skipf(t, "%v (make deps installs them)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// e2bEnv parses the export line of 'cove e2b env'.
func e2bEnv(t *testing.T, line string) map[string]string {
	t.Helper()
	env := map[string]string{}
	fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "export "))
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("cove e2b env: %q is no NAME=VALUE in %q", f, line)
		}
		env[k] = strings.Trim(v, "'")
	}
	for _, k := range []string{"E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"} {
		if env[k] == "" {
			t.Fatalf("cove e2b env printed no %s: %q", k, line)
		}
	}
	return env
}

// e2bCall makes one request to the E2B API and returns its status and body.
func e2bCall(t *testing.T, method, url string, hdr map[string]string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, b
}

// wantCode checks an answer's status and the {code} of its JSON body (a
// number on the control plane and envd's HTTP routes, a string in Connect
// errors).
func wantCode(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode any) {
	t.Helper()
	var e struct {
		Code    any    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Errorf("%s: status %d, body %q: %v", what, status, body, err)
		return
	}
	if n, ok := e.Code.(float64); ok {
		e.Code = int(n)
	}
	if status != wantStatus || e.Code != wantCode || e.Message == "" {
		t.Errorf("%s: status %d, body %s; want %d with code %v and a message", what, status, body, wantStatus, wantCode)
	}
}

// envelopes splits a Connect stream's body into its envelopes, each
// JSON message compacted (protojson's spacing varies from build to build).
func envelopes(t *testing.T, body []byte) (flags []byte, msgs []string) {
	t.Helper()
	for len(body) > 0 {
		if len(body) < 5 {
			t.Fatalf("stream: %d bytes left, no whole envelope prefix", len(body))
		}
		n := binary.BigEndian.Uint32(body[1:5])
		if uint32(len(body)-5) < n {
			t.Fatalf("stream: envelope of %d bytes, %d left", n, len(body)-5)
		}
		flags = append(flags, body[0])
		msg := body[5 : 5+n]
		var c bytes.Buffer
		if json.Compact(&c, msg) == nil {
			msg = c.Bytes()
		}
		msgs = append(msgs, string(msg))
		body = body[5+n:]
	}
	return flags, msgs
}

func envelope(flags byte, msg string) []byte {
	b := []byte{flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

func TestE2BSDK(t *testing.T) {
	t.Parallel()
	dir := sdkDir(t)
	e := newE2E(t)
	e2bAddr := freeAddr(t)
	e.startServer("COVE_E2B_LISTEN="+e2bAddr, "COVE_E2B_MAX_UPLOAD=1MiB")
	e.ok(nil, "image", "build", "debian") // the template base's image; cached across runs
	env := e2bEnv(t, e.ok(nil, "e2b", "env", "--url", "http://"+e2bAddr))
	api := env["E2B_API_URL"]
	key := map[string]string{"X-API-KEY": env["E2B_API_KEY"]}

	t.Run("BadInput", func(t *testing.T) {
		// Two sessions made through cove's own API, which the E2B API
		// sees as sandboxes too.
		a, b := e.create(), e.create()
		defer e.ok(nil, "rm", a, b)
		token := func(id string) string {
			status, _, body := e2bCall(t, "GET", api+"/sandboxes/"+id, key, nil)
			var d struct {
				EnvdAccessToken string `json:"envdAccessToken"`
				State           string `json:"state"`
			}
			if err := json.Unmarshal(body, &d); status != http.StatusOK || err != nil || d.EnvdAccessToken == "" || d.State != "running" {
				t.Fatalf("GET /sandboxes/%s: %d %s (%v)", id, status, body, err)
			}
			return d.EnvdAccessToken
		}
		ta, tb := token(a), token(b)
		if ta == tb {
			t.Fatalf("two sandboxes have one access token")
		}

		for name, k := range map[string]string{"missing": "", "wrong": "cove_" + strings.Repeat("x", 40), "garbage": "nope"} {
			status, _, body := e2bCall(t, "GET", api+"/v2/sandboxes", map[string]string{"X-API-KEY": k}, nil)
			wantCode(t, name+" API key", status, body, http.StatusUnauthorized, 401)
		}
		before := len(e.sessions())
		status, _, body := e2bCall(t, "POST", api+"/v2/sandboxes", map[string]string{"X-API-KEY": key["X-API-KEY"], "Content-Type": "application/json"},
			[]byte(`{"templateID":"no-such-template","timeout":60}`))
		wantCode(t, "unknown template", status, body, http.StatusNotFound, 404)
		status, _, body = e2bCall(t, "POST", api+"/sandboxes/no-such-sandbox/pause", key, nil)
		wantCode(t, "pause of an unknown sandbox", status, body, http.StatusNotFound, 404)
		status, _, body = e2bCall(t, "DELETE", api+"/sandboxes/no-such-sandbox", key, nil)
		wantCode(t, "kill of an unknown sandbox", status, body, http.StatusNotFound, 404)
		// Snapshots and forks: unknown ids, bad bodies, a bad count.
		jsonKey := map[string]string{"X-API-KEY": key["X-API-KEY"], "Content-Type": "application/json"}
		for name, c := range map[string]struct {
			method, path, body string
			status             int
		}{
			"snapshot of an unknown sandbox":   {"POST", "/sandboxes/no-such-sandbox/snapshots", `{}`, 404},
			"fork of an unknown sandbox":       {"POST", "/sandboxes/no-such-sandbox/fork", `{}`, 404},
			"create from an unknown snapshot":  {"POST", "/v2/sandboxes", `{"templateID":"no-such-sandbox:ckpt-1"}`, 404},
			"create from a missing checkpoint": {"POST", "/v2/sandboxes", `{"templateID":"` + a + `:no-such"}`, 404},
			"delete of an unknown snapshot":    {"DELETE", "/templates/" + a + ":no-such", ``, 404},
			"delete of a template id":          {"DELETE", "/templates/base", ``, 404},
			"snapshot with broken JSON":        {"POST", "/sandboxes/" + a + "/snapshots", `{"name":`, 400},
			"snapshot with a bad name":         {"POST", "/sandboxes/" + a + "/snapshots", `{"name":"Not A Name"}`, 400},
			"fork with broken JSON":            {"POST", "/sandboxes/" + a + "/fork", `{"count":`, 400},
			"fork of no sandboxes":             {"POST", "/sandboxes/" + a + "/fork", `{"count":0}`, 400},
			"fork of too many":                 {"POST", "/sandboxes/" + a + "/fork", `{"count":17}`, 400},
			"fork with a negative timeout":     {"POST", "/sandboxes/" + a + "/fork", `{"timeout":-1}`, 400},
			"snapshot with an oversized body":  {"POST", "/sandboxes/" + a + "/snapshots", `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 400},
			"snapshot list with a bad limit":   {"GET", "/snapshots?limit=0", ``, 400},
		} {
			status, _, body := e2bCall(t, c.method, api+c.path, jsonKey, []byte(c.body))
			wantCode(t, name, status, body, c.status, c.status)
		}
		status, _, body = e2bCall(t, "GET", api+"/snapshots", key, nil)
		if status != http.StatusOK || string(body) != "[]" {
			t.Errorf("snapshots after refused requests: %d %s, want 200 []", status, body)
		}
		if n := len(e.sessions()); n != before {
			t.Errorf("refused requests changed the sessions: %d, then %d", before, n)
		}

		envd := func(id, token, method, path, ct string, body []byte) (int, http.Header, []byte) {
			hdr := map[string]string{"E2b-Sandbox-Id": id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
			if ct != "" {
				hdr["Content-Type"] = ct
			}
			return e2bCall(t, method, env["E2B_SANDBOX_URL"]+path, hdr, body)
		}
		if status, _, body := envd(a, ta, "GET", "/health", "", nil); status != http.StatusNoContent {
			t.Errorf("health of %s with its token: %d %s", a, status, body)
		}
		for name, c := range map[string]struct{ id, token string }{
			"no token":                  {a, ""},
			"a wrong token":             {a, strings.Repeat("0", len(ta))},
			"another sandbox's token":   {b, ta},
			"a token on an unknown one": {"no-such-sandbox", ta},
		} {
			status, _, body := envd(c.id, c.token, "GET", "/health", "", nil)
			wantCode(t, "health with "+name, status, body, http.StatusUnauthorized, 401)
			status, _, body = envd(c.id, c.token, "POST", "/process.Process/List", "application/json", []byte(`{}`))
			wantCode(t, "process list with "+name, status, body, http.StatusUnauthorized, "unauthenticated")
			status, _, body = envd(c.id, c.token, "GET", "/files?path=/etc/hostname", "", nil)
			wantCode(t, "file read with "+name, status, body, http.StatusUnauthorized, 401)
		}

		// Refusals are in the audit log: the API keys' and the access
		// tokens' (by the sandbox they named).
		if log := e.ok(nil, "audit", "log", "--json"); !strings.Contains(log, `"auth.failed"`) || !strings.Contains(log, `"e2b-api-key"`) {
			t.Errorf("the audit log has no auth.failed for the refused API keys:\n%s", log)
		}
		if log := e.ok(nil, "audit", "log", "--session", b, "--json"); !strings.Contains(log, `"auth.failed"`) || !strings.Contains(log, `"e2b-access-token"`) {
			t.Errorf("the audit log of %s has no auth.failed for another sandbox's token:\n%s", b, log)
		}

		// A command over the Connect protocol, envelope by envelope (the
		// tiny image has no bash: sh).
		status, hdr, body := envd(a, ta, "POST", "/process.Process/Start", "application/connect+json",
			envelope(0, `{"process":{"cmd":"/bin/sh","args":["-c","echo hi; echo oops >&2; exit 4"]}}`))
		if status != http.StatusOK || hdr.Get("Content-Type") != "application/connect+json" {
			t.Fatalf("Start: %d %s %q", status, hdr.Get("Content-Type"), body)
		}
		flags, msgs := envelopes(t, body)
		all := strings.Join(msgs, "\n")
		if len(msgs) < 3 || !strings.Contains(msgs[0], `"start":{"pid":`) || flags[len(flags)-1] != 0x02 || msgs[len(msgs)-1] != "{}" ||
			!strings.Contains(all, `"stdout":"aGkK"`) || !strings.Contains(all, `"stderr":"b29wcwo="`) ||
			!strings.Contains(msgs[len(msgs)-2], `"end":{"exitCode":4,"exited":true,"status":"exit status 4","error":"exit status 4"}`) {
			t.Errorf("Start's stream: flags %v, messages:\n%s", flags, all)
		}

		// That command is in the audit log, as done by the session's owner
		// with its access token.
		if log := e.ok(nil, "audit", "log", "--session", a, "--json"); !strings.Contains(log, `"session.exec"`) ||
			!strings.Contains(log, `"e2b-access-token"`) || !strings.Contains(log, `echo hi; echo oops`) {
			t.Errorf("the audit log of %s has no session.exec with the access token's issuer:\n%s", a, log)
		}

		// A user other than root on the tiny image, whose busybox
		// setpriv changes no uids: the guest agent sets the user's
		// credentials itself, for commands and file calls alike.
		asNobody := map[string]string{"E2b-Sandbox-Id": a, "E2b-Sandbox-Port": "49983", "X-Access-Token": ta,
			"Content-Type": "application/connect+json", "Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("nobody:"))}
		status, _, body = e2bCall(t, "POST", env["E2B_SANDBOX_URL"]+"/process.Process/Start", asNobody,
			envelope(0, `{"process":{"cmd":"/bin/sh","args":["-c","id -u; id -g; echo $HOME $USER; pwd; touch /root/x 2>/dev/null || echo refused"]}}`))
		_, msgs = envelopes(t, body)
		var stdout []byte
		for _, m := range msgs {
			var ev struct {
				Event struct {
					Data struct {
						Stdout []byte `json:"stdout"`
					} `json:"data"`
				} `json:"event"`
			}
			if json.Unmarshal([]byte(m), &ev) == nil {
				stdout = append(stdout, ev.Event.Data.Stdout...)
			}
		}
		if want := "65534\n65534\n/nonexistent nobody\n/\nrefused\n"; status != http.StatusOK || string(stdout) != want {
			t.Errorf("a command as nobody on tiny: %d, stdout %q, want %q; messages:\n%s", status, stdout, want, strings.Join(msgs, "\n"))
		}
		// cove's own exec takes a user too.
		if out := e.ok(nil, "exec", "--user", "nobody", a, "--", "sh", "-c", "id -u; echo $HOME; pwd"); out != "65534\n/nonexistent\n/\n" {
			t.Errorf("cove exec --user nobody on tiny: %q", out)
		}
		status, _, body = envd(a, ta, "POST", "/files?path=/tmp/by-nobody&username=nobody", "application/octet-stream", []byte("x"))
		if status != http.StatusOK {
			t.Errorf("a write as nobody on tiny: %d %s", status, body)
		}
		status, _, body = envd(a, ta, "POST", "/filesystem.Filesystem/Stat", "application/json", []byte(`{"path":"/tmp/by-nobody"}`))
		if status != http.StatusOK || !strings.Contains(string(body), `"owner":"nobody"`) {
			t.Errorf("the file nobody wrote: %d %s, want it nobody's", status, body)
		}
		status, _, body = envd(a, ta, "POST", "/files?path=/root/by-nobody&username=nobody", "application/octet-stream", []byte("x"))
		if status == http.StatusOK {
			t.Errorf("a write as nobody into root's home: %d %s, want a refusal", status, body)
		}

		// A client that never reads its command's stream, while the
		// command writes 32 MiB: far more than the sockets, the guest
		// connection and the server's queues hold. The stream holds the
		// command back, as a pipe would, and nothing else: the other
		// sandbox runs commands, the control plane answers and the
		// command's own sandbox serves other calls meanwhile. Read at
		// last, the stream has every byte.
		const mib = 32
		writer := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do head -c 1048576 /dev/zero; i=$((i+1)); echo $i > /tmp/written; done`, mib)
		slowReq, err := http.NewRequestWithContext(t.Context(), "POST", env["E2B_SANDBOX_URL"]+"/process.Process/Start",
			bytes.NewReader(envelope(0, `{"process":{"cmd":"/bin/sh","args":["-c",`+strconv.Quote(writer)+`]}}`)))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{"E2b-Sandbox-Id": a, "X-Access-Token": ta, "Content-Type": "application/connect+json"} {
			slowReq.Header.Set(k, v)
		}
		slowResp, err := http.DefaultClient.Do(slowReq)
		if err != nil {
			t.Fatal(err)
		}
		defer slowResp.Body.Close()
		slow := bufio.NewReader(slowResp.Body)
		nextMsg := func() (end bool, msg []byte) {
			t.Helper()
			var hdr [5]byte
			if _, err := io.ReadFull(slow, hdr[:]); err != nil {
				t.Fatalf("the unread stream: %v", err)
			}
			msg = make([]byte, binary.BigEndian.Uint32(hdr[1:]))
			if _, err := io.ReadFull(slow, msg); err != nil {
				t.Fatalf("the unread stream: %v", err)
			}
			return hdr[0]&0x02 != 0, msg
		}
		if _, first := nextMsg(); slowResp.StatusCode != http.StatusOK || !strings.Contains(string(first), `"start":{"pid":`) {
			t.Fatalf("the unread stream: %d, first message %s", slowResp.StatusCode, first)
		}
		written, still := "", 0
		for still < 10 {
			status, _, body := envd(b, tb, "POST", "/process.Process/Start", "application/connect+json",
				envelope(0, `{"process":{"cmd":"/bin/sh","args":["-c","echo here"]}}`))
			if _, msgs := envelopes(t, body); status != http.StatusOK || !strings.Contains(strings.Join(msgs, ""), `"stdout":"aGVyZQo="`) {
				t.Fatalf("the other sandbox's command while a stream is unread: %d %s", status, body)
			}
			if status, _, body := e2bCall(t, "GET", api+"/sandboxes/"+b, key, nil); status != http.StatusOK {
				t.Fatalf("the control plane while a stream is unread: %d %s", status, body)
			}
			status, _, body = envd(a, ta, "GET", "/files?path=/tmp/written", "", nil)
			switch now := strings.TrimSpace(string(body)); {
			case status == http.StatusOK && now == strconv.Itoa(mib):
				t.Fatalf("all %d MiB went through a stream nobody read: nothing held the command back", mib)
			case status != http.StatusOK && status != http.StatusNotFound:
				t.Fatalf("the command's sandbox while its stream is unread: %d %s", status, body)
			case now == written:
				still++
			default:
				written, still = now, 0
			}
		}
		t.Logf("the unread stream held its command back after %q MiB", written)
		var got int64
		for {
			end, msg := nextMsg()
			if end {
				if string(msg) != "{}" {
					t.Errorf("the unread stream's end: %s", msg)
				}
				break
			}
			var ev struct {
				Event struct {
					Data struct {
						Stdout []byte `json:"stdout"`
					} `json:"data"`
					End *struct {
						ExitCode int `json:"exitCode"`
					} `json:"end"`
				} `json:"event"`
			}
			if err := json.Unmarshal(msg, &ev); err != nil {
				t.Fatalf("the unread stream: %s: %v", msg, err)
			}
			if bytes.ContainsFunc(ev.Event.Data.Stdout, func(r rune) bool { return r != 0 }) {
				t.Fatalf("the unread stream carried a byte that is no zero")
			}
			got += int64(len(ev.Event.Data.Stdout))
			if ev.Event.End != nil && ev.Event.End.ExitCode != 0 {
				t.Errorf("the held-back command ended with %d", ev.Event.End.ExitCode)
			}
		}
		if got != mib<<20 {
			t.Errorf("the unread stream carried %d bytes, want %d", got, mib<<20)
		}

		// Malformed envelopes: the stream ends at once with
		// invalid_argument, and nothing runs.
		for name, body := range map[string][]byte{
			"a short prefix":   {0, 0, 0},
			"a short message":  append([]byte{0, 0, 0, 0, 100}, `{"process":{}}`...),
			"a compressed one": envelope(0x01, `{"process":{"cmd":"/bin/true"}}`),
			"no JSON":          envelope(0, `not json`),
		} {
			status, _, out := envd(a, ta, "POST", "/process.Process/Start", "application/connect+json", body)
			flags, msgs := envelopes(t, out)
			if status != http.StatusOK || len(msgs) != 1 || flags[0] != 0x02 || !strings.Contains(msgs[0], `"code":"invalid_argument"`) {
				t.Errorf("Start with %s: %d, flags %v, %q; want one end-of-stream with invalid_argument", name, status, flags, msgs)
			}
		}
		// An upload over the limit (--e2b-max-upload) is 413 and writes
		// nothing.
		status, _, body = envd(a, ta, "POST", "/files?path=/root/big", "application/octet-stream", make([]byte, 1<<20+1))
		wantCode(t, "an upload over the limit", status, body, http.StatusRequestEntityTooLarge, 413)
		status, _, body = envd(a, ta, "POST", "/filesystem.Filesystem/Stat", "application/json", []byte(`{"path":"/root/big"}`))
		wantCode(t, "stat of a refused upload", status, body, http.StatusNotFound, "not_found")
		status, _, body = envd(a, ta, "POST", "/process.Process/List", "application/json", []byte(`{"process":`))
		wantCode(t, "a unary call with broken JSON", status, body, http.StatusBadRequest, "invalid_argument")
		status, _, body = envd(a, ta, "POST", "/filesystem.Filesystem/Stat", "application/json", []byte(`{"path":"/no/such/file"}`))
		wantCode(t, "stat of a missing file", status, body, http.StatusNotFound, "not_found")

		// A paused sandbox's envd answers 502, which the SDK reads as
		// not running; connect resumes it.
		e.ok(nil, "park", b)
		if status, _, body := envd(b, tb, "GET", "/health", "", nil); status != http.StatusBadGateway {
			t.Errorf("health of a parked sandbox: %d %s, want 502", status, body)
		}
		status, _, body = e2bCall(t, "POST", api+"/sandboxes/"+b+"/pause", key, nil)
		wantCode(t, "pause of a paused sandbox", status, body, http.StatusConflict, 409)
		status, _, body = e2bCall(t, "POST", api+"/sandboxes/"+b+"/snapshots", key, nil)
		wantCode(t, "snapshot of a paused sandbox", status, body, http.StatusConflict, 409)
		status, _, body = e2bCall(t, "POST", api+"/sandboxes/"+b+"/fork", key, nil)
		wantCode(t, "fork of a paused sandbox", status, body, http.StatusConflict, 409)
		status, _, body = e2bCall(t, "POST", api+"/v2/sandboxes/"+b+"/connect", map[string]string{"X-API-KEY": key["X-API-KEY"], "Content-Type": "application/json"}, []byte(`{"timeout":60}`))
		if status != http.StatusCreated || !strings.Contains(string(body), tb) {
			t.Errorf("connect of a paused sandbox: %d %s; want 201 with its unchanged token", status, body)
		}
		if status, _, body := envd(b, tb, "GET", "/health", "", nil); status != http.StatusNoContent {
			t.Errorf("health after connect: %d %s", status, body)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("EndTime", func(t *testing.T) {
		// A sandbox ends at its end time, one made by cove's API too;
		// the sweep looks every second.
		id := e.create()
		defer e.run(nil, "rm", id) // if it is still there
		status, _, body := e2bCall(t, "POST", api+"/sandboxes/"+id+"/timeout",
			map[string]string{"X-API-KEY": key["X-API-KEY"], "Content-Type": "application/json"}, []byte(`{"timeout":1}`))
		if status != http.StatusNoContent {
			t.Fatalf("setTimeout: %d %s", status, body)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			status, _, body := e2bCall(t, "GET", api+"/sandboxes/"+id, key, nil)
			if status == http.StatusNotFound {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sandbox %s still there 2 minutes after its end time: %d %s%s", id, status, body, e.serverLog())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, ok := e.sessions()[id]; ok {
			t.Errorf("session %s is still listed by cove ls after its end time", id)
		}
	})

	t.Run("SDK", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "node", "sdk.mjs")
		cmd.Dir = dir
		cmd.Env = os.Environ()
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Env = append(cmd.Env, "E2B_DEBUG=")
		start := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("the SDK script ran %s", time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("node sdk.mjs: %v\n%s%s", err, out, e.serverLog())
		}
		var last string
		for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
			last = sc.Text()
		}
		var summary struct {
			OK        bool             `json:"ok"`
			SandboxID string           `json:"sandboxId"`
			MS        map[string]int64 `json:"ms"`
		}
		if err := json.Unmarshal([]byte(last), &summary); err != nil || !summary.OK {
			t.Fatalf("the script's last line %q is no summary (%v):\n%s", last, err, out)
		}
		// How long the SDK waited (informative, not asserted).
		t.Logf("SDK timings: createSnapshot %dms, create from a snapshot %dms, fork %dms, fork of 2 %dms; create %dms, pause %dms, connect %dms",
			summary.MS["createSnapshot"], summary.MS["createFromSnapshot"], summary.MS["fork"], summary.MS["fork2"],
			summary.MS["create"], summary.MS["pause"], summary.MS["connect"])
		// Killed through the SDK: gone for cove's own API too.
		if _, ok := e.sessions()[summary.SandboxID]; ok {
			t.Errorf("sandbox %s is still listed by cove ls after its kill", summary.SandboxID)
		}
		t.Logf("the SDK script's steps:\n%s", out)
	})
	if t.Failed() {
		return
	}

	t.Run("ServerRestart", func(t *testing.T) {
		// A background command started through the SDK is listed,
		// connected to, fed stdin and killed by pid after cove server
		// restarts (its sessions and their VMs run on).
		node := func(args ...string) string {
			t.Helper()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "node", append([]string{"restart.mjs"}, args...)...)
			cmd.Dir = dir
			cmd.Env = os.Environ()
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			cmd.Env = append(cmd.Env, "E2B_DEBUG=")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("node restart.mjs %v: %v\n%s%s", args, err, out, e.serverLog())
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			return lines[len(lines)-1]
		}
		var started struct {
			SandboxID string `json:"sandboxId"`
			PID       int    `json:"pid"`
		}
		if last := node("start"); json.Unmarshal([]byte(last), &started) != nil || started.SandboxID == "" || started.PID == 0 {
			t.Fatalf("restart.mjs start: last line %q", last)
		}
		if err := e.stopServer(syscall.SIGTERM); err != nil {
			t.Fatalf("cove server on SIGTERM: %v%s", err, e.serverLog())
		}
		e.startServer("COVE_E2B_LISTEN="+e2bAddr, "COVE_E2B_MAX_UPLOAD=1MiB")
		if last := node("after", started.SandboxID, strconv.Itoa(started.PID)); last != `{"ok":true}` {
			t.Errorf("restart.mjs after: last line %q", last)
		}
	})
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Errorf("cove server on SIGTERM: %v%s", err, e.serverLog())
	}
}
