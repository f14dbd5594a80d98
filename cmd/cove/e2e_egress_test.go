package main_test

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upstream is the world outside the guests, on the host's loopback: an
// HTTPS server with its own CA (the server trusts it by --upstream-ca) that
// answers as example.com (its certificate's name; the server resolves it
// to loopback by --egress-resolve), with a git smart-HTTP server under
// /git/ that wants a bearer token for everything.
type upstream struct {
	srv    *httptest.Server
	port   string
	caFile string
	repo   string // the bare repository served as /git/repo.git
	token  string // what /git/ wants after "Bearer "
}

func newUpstream(t *testing.T, token string) *upstream {
	t.Helper()
	u := &upstream{token: token}
	root := t.TempDir()
	u.repo = filepath.Join(root, "repo.git")
	src := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", src},
		{"-C", src, "-c", "user.name=n", "-c", "user.email=n@example.com", "commit", "-q", "--allow-empty", "-m", "upstream's first"},
		{"clone", "-q", "--bare", src, u.repo},
		{"-C", u.repo, "config", "http.receivepack", "true"},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		t.Fatal(err)
	}
	backend := &cgi.Handler{
		Path: gitPath,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from upstream\n")
	})
	// /auth says whose credential arrived, by the name the test gave it,
	// never the value: the guest's view must not hold it.
	mux.HandleFunc("/auth", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "auth=%s\n", authName(r.Header.Get("Authorization")))
	})
	// /slow sends a line a second until the client goes.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "tick %d\n", i); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Second):
			}
		}
	})
	mux.Handle("/git/", http.StripPrefix("/git", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+u.token {
			w.Header().Set("WWW-Authenticate", `Bearer realm="git"`)
			http.Error(w, "who are you?", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})))
	u.srv = httptest.NewTLSServer(mux)
	t.Cleanup(u.srv.Close)
	parsed, _ := url.Parse(u.srv.URL)
	u.port = parsed.Port()
	u.caFile = filepath.Join(t.TempDir(), "upstream-ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.srv.Certificate().Raw})
	if err := os.WriteFile(u.caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return u
}

// Names of the credentials the tests set, by their values.
var authNames = map[string]string{}

func authName(h string) string {
	if h == "" {
		return "none"
	}
	v, ok := strings.CutPrefix(h, "Bearer ")
	if n := authNames[v]; ok && n != "" {
		return n
	}
	return "unknown"
}

func (u *upstream) url(path string) string { return "https://example.com:" + u.port + path }

// runAs runs a cove client command with token as the caller's credential.
func (e *e2e) runAs(token string, stdin []byte, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	cmd := exec.Command(e.cove, args...)
	cmd.Env = append(e.clientEnv(), "COVE_TOKEN="+token)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("cove %q: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// grepFiles reports the files under dir that hold needle.
func grepFiles(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		// Read in overlapping chunks: a RAM file is hundreds of MiB.
		buf := make([]byte, 8<<20)
		var carry []byte
		for {
			n, rerr := f.Read(buf)
			chunk := append(carry, buf[:n]...)
			if bytes.Contains(chunk, needle) {
				hits = append(hits, p)
				return nil
			}
			if len(chunk) >= len(needle) {
				carry = append([]byte(nil), chunk[len(chunk)-len(needle)+1:]...)
			}
			if rerr == io.EOF || n == 0 {
				return nil
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestEgress: a session reaches what its create, its template and the
// operator allow, through the host's proxy, with its owner's credentials
// added on the way out; it reaches nothing else; no secret value ever
// enters the guest (its memory, its files, its snapshot) or cove's logs;
// a woken session's egress works again; a revoke cuts it.
func TestEgress(t *testing.T) {
	t.Parallel()
	const (
		aliceValue = "ghp_aliceSECRETvalue0123456789"
		bobValue   = "ghp_bobSECRETvalue9876543210"
	)
	authNames[aliceValue], authNames[bobValue] = "alice", "bob"
	up := newUpstream(t, aliceValue)
	e := newE2E(t)
	e.startServer("COVE_UPSTREAM_CA="+up.caFile, "COVE_EGRESS_RESOLVE=example.com=127.0.0.1")
	allow := "example.com:" + up.port

	// The operator's own user sets its credential for the upstream.
	e.ok([]byte(aliceValue+"\n"), "secret", "set", "gh", "--host", "example.com", "--header", "Authorization: Bearer {{value}}")
	if ls := e.ok(nil, "secret", "ls"); !strings.Contains(ls, "gh") || strings.Contains(ls, aliceValue) {
		t.Fatalf("secret ls: %q, want the name and never the value", ls)
	}

	id := e.create("--image", "debian", "--allow", allow)
	sh := func(script string) (string, string, int) {
		t.Helper()
		return e.run(nil, "exec", id, "--", "bash", "-c", script)
	}
	mustSh := func(script string) string {
		t.Helper()
		out, errOut, code := sh(script)
		if code != 0 {
			t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s%s", script, code, out, errOut, e.serverLog())
		}
		return out
	}

	t.Run("AllowedWithCredential", func(t *testing.T) {
		if got := mustSh("curl -sS --max-time 60 " + up.url("/hello")); got != "hello from upstream\n" {
			t.Fatalf("curl: %q", got)
		}
		// The proxy added alice's credential: the guest sent none.
		if got := mustSh("curl -sS --max-time 60 " + up.url("/auth")); got != "auth=alice\n" {
			t.Fatalf("curl /auth: %q, want the owner's credential", got)
		}
		// A header the guest sets is replaced, not passed on.
		if got := mustSh("curl -sS --max-time 60 -H 'Authorization: Bearer guess' " + up.url("/auth")); got != "auth=alice\n" {
			t.Fatalf("curl /auth with the guest's own header: %q", got)
		}
		// Python's ssl trusts the proxy's CA through SSL_CERT_FILE.
		py := `import urllib.request; print(urllib.request.urlopen("` + up.url("/hello") + `", timeout=60).read().decode(), end="")`
		if got := mustSh("python3 -c '" + py + "'"); got != "hello from upstream\n" {
			t.Fatalf("python3 urllib: %q", got)
		}
		// A login shell gets the proxy from /etc/profile.d too.
		if got := mustSh("env -i bash -lc 'echo $HTTPS_PROXY'"); got != "http://"+"127.0.0.1:3128\n" {
			t.Fatalf("login shell HTTPS_PROXY: %q", got)
		}
	})

	t.Run("GitCloneAndPush", func(t *testing.T) {
		mustSh(`set -e
cd /root
git clone -q ` + up.url("/git/repo.git") + ` work
cd work
git -c user.name=agent -c user.email=agent@example.com commit -q --allow-empty -m "pushed through the proxy"
git push -q origin HEAD:main`)
		out, err := exec.Command("git", "-C", up.repo, "log", "-1", "--format=%s", "main").CombinedOutput()
		if err != nil || string(out) != "pushed through the proxy\n" {
			t.Fatalf("upstream's main after the push: %q (%v)", out, err)
		}
	})

	t.Run("Denied", func(t *testing.T) {
		for _, c := range []struct{ name, script, want string }{
			{"host not allowed", "curl -fsS --max-time 60 https://other.example.com/", "403"},
			{"direct IP", "curl -fsS --max-time 60 http://192.0.2.7/", "403"},
			{"CONNECT to a non-HTTPS port", "curl -fsS --max-time 60 -p http://example.com:22/", "403"},
			{"raw TCP to an address", "exec 3<>/dev/tcp/192.0.2.7/80", "unreachable"},
			{"raw TCP to a name", "exec 3<>/dev/tcp/raw.example.org/22", "raw.example.org"},
			{"outside DNS", "getent hosts dns.example.org || { echo no-resolve >&2; exit 2; }", "no-resolve"},
		} {
			start := time.Now()
			out, errOut, code := sh(c.script)
			if code == 0 || !strings.Contains(strings.ToLower(out+errOut), strings.ToLower(c.want)) {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want a failure saying %q", c.name, code, out, errOut, c.want)
			}
			t.Logf("%s: refused in %s: %s", c.name, time.Since(start).Round(time.Millisecond), strings.TrimSpace(errOut))
		}
		// The refusals are recorded with the session, the engineer and
		// the target.
		log := e.srv.log.String()
		// A name the guest tried to resolve itself is recorded as such
		// (a raw connection to an address never leaves the guest: it has
		// no route, so there is nothing on the host to record).
		for _, name := range []string{"raw.example.org", "dns.example.org"} {
			// The guest reports it as it refuses the lookup, so it may
			// arrive just after the program has failed.
			re := regexp.MustCompile(`egress denied.*session=` + id + `.*method=DNS host=` + regexp.QuoteMeta(name))
			deadline := time.Now().Add(30 * time.Second)
			for !re.MatchString(e.srv.log.String()) {
				if time.Now().After(deadline) {
					t.Errorf("no refused lookup of %s recorded for session %s", name, id)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		for _, target := range []string{"other.example.com", "192.0.2.7", "example.com"} {
			if !regexp.MustCompile(`egress denied.*session=`+id+`.*`+regexp.QuoteMeta(target)).MatchString(log) &&
				!regexp.MustCompile(`egress.*denied.*`+regexp.QuoteMeta(target)+`.*session=`+id).MatchString(log) {
				t.Errorf("no denial of %s recorded for session %s in the server's log", target, id)
			}
		}
	})

	t.Run("NoSecretInTheGuest", func(t *testing.T) {
		// The guest's processes and files hold no value. The pattern
		// matches the value without being it: a grep for the value itself
		// would put it into the guest's memory.
		pattern := func(v string) string { return v[:len(v)/2] + ".?" + v[len(v)/2:] }
		out, _, code := sh("grep -rlsE -e '" + pattern(aliceValue) + "' /proc/[0-9]*/environ /etc /root /tmp /var 2>/dev/null; exit 0")
		if code != 0 || strings.TrimSpace(out) != "" {
			t.Fatalf("the secret's value is in the guest: %q", out)
		}
		// Positive control: the same grep finds a value that is there.
		control := "control-" + aliceValue[len(aliceValue)/2:]
		mustSh("echo " + control + " > /root/control")
		if out := mustSh("grep -rlsE -e '" + pattern(control) + "' /root; exit 0"); !strings.Contains(out, "/root/control") {
			t.Fatalf("the grep found nothing where something is: %q", out)
		}
		mustSh("rm /root/control")
	})

	t.Run("ParkWakeKeepsEgress", func(t *testing.T) {
		// A program that fetches in a loop across the park: its
		// connection is cut, and it connects again after the wake.
		mustSh(`nohup bash -c 'while true; do curl -fsS --max-time 20 ` + up.url("/hello") + ` >> /root/loop.log 2>&1 || echo fail >> /root/loop.log; sleep 0.5; done' >/dev/null 2>&1 &
echo $! > /root/loop.pid
for i in $(seq 100); do grep -q hello /root/loop.log 2>/dev/null && exit 0; sleep 0.2; done; exit 1`)
		e.ok(nil, "park", id)
		// Every file of the parked session: memory, device state, disk.
		dir := filepath.Join(e.home, "sessions", id)
		if hits := grepFiles(t, dir, []byte(aliceValue)); len(hits) > 0 {
			t.Fatalf("the secret's value is in the parked session's files: %v", hits)
		}
		if hits := grepFiles(t, dir, []byte("hello from upstream")); len(hits) == 0 {
			t.Fatalf("positive control: the guest's memory holds none of what it fetched; is %s its snapshot?", dir)
		}
		e.ok(nil, "wake", id)
		before := strings.Count(mustSh("cat /root/loop.log"), "hello")
		deadline := time.Now().Add(2 * time.Minute)
		for strings.Count(mustSh("cat /root/loop.log"), "hello") <= before {
			if time.Now().After(deadline) {
				t.Fatalf("the fetching loop did not fetch again after the wake: %q", mustSh("tail -5 /root/loop.log"))
			}
			time.Sleep(500 * time.Millisecond)
		}
		mustSh("kill $(cat /root/loop.pid)")
		if got := mustSh("curl -sS --max-time 60 " + up.url("/auth")); got != "auth=alice\n" {
			t.Fatalf("curl after the wake: %q", got)
		}
	})

	t.Run("CloneCarriesItsOwnOwnersCredential", func(t *testing.T) {
		e.ok(nil, "template", "create", "egress-tpl", "--allow", allow)
		// bob may clone alice's template as an admin may (the default policy).
		e.ok(nil, "user", "add", "bob", "--kind", "admin")
		lines := strings.Split(strings.TrimSpace(e.ok(nil, "token", "create", "--name", "e2e", "--user", "bob")), "\n")
		bob := lines[len(lines)-1] // after a line that says what it is
		if _, errOut, code := e.runAs(bob, []byte(bobValue), "secret", "set", "gh", "--host", "example.com", "--header", "Authorization: Bearer {{value}}"); code != 0 {
			t.Fatalf("bob's secret set: %s", errOut)
		}
		out, errOut, code := e.runAs(bob, nil, "session", "create", "--template", "egress-tpl")
		if code != 0 {
			t.Fatalf("bob's clone: %s", errOut)
		}
		clone := strings.TrimSpace(out)
		// busybox wget, through http_proxy with an https:// URL.
		got, errOut, code := e.runAs(bob, nil, "exec", clone, "--", "wget", "-qO-", up.url("/auth"))
		if code != 0 || got != "auth=bob\n" {
			dbg, _, _ := e.runAs(bob, nil, "exec", clone, "--", "sh", "-c", "env | grep -i proxy; wget -S -O- "+up.url("/auth")+" 2>&1")
			t.Fatalf("bob's clone: wget /auth: %q (exit %d, %s); want bob's credential, not alice's\n%s%s", got, code, errOut, dbg, e.serverLog())
		}
	})

	t.Run("RevokeCutsEgress", func(t *testing.T) {
		// A download under way ends when the session is revoked, and
		// nothing new goes out; the VM runs on.
		cmd := e.command("exec", id, "--", "curl", "-NsS", "--max-time", "300", up.url("/slow"))
		out := &lockedBuffer{}
		cmd.Stdout = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(out.String(), "tick 1") {
			if time.Now().After(deadline) {
				t.Fatalf("the slow download did not start: %q", out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		e.ok(nil, "session", "revoke", id)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("the download ended well after the revoke: %q", out.String())
			}
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatal("the download under way outlived the revoke by 2 minutes")
		}
		_, errOut, code := sh("curl -fsS --max-time 60 " + up.url("/hello"))
		if code == 0 || !strings.Contains(errOut, "403") {
			t.Fatalf("curl after the revoke: exit %d, %q; want a 403", code, errOut)
		}
		e.wantRunning(id)
	})

	if strings.Contains(e.srv.log.String(), aliceValue) || strings.Contains(e.srv.log.String(), bobValue) {
		t.Fatal("a secret's value is in the server's log")
	}
	for id := range e.sessions() {
		e.ok(nil, "rm", id)
	}
	e.ok(nil, "template", "rm", "egress-tpl")
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server on SIGTERM: %v", err)
	}
}
