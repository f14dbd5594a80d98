package main_test

// Bad S3 and database endpoints (issue 18), through the real 'cove
// server' binary: one that cannot be used stops the server at start with
// one line naming what failed and never a secret; a PostgreSQL that goes
// away while the server runs is answered 503 and is used again once back.

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/s3test"
)

// closedPort returns a loopback host:port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// serverRefuses runs 'cove server' on a fresh home with env and args
// added, wants it to exit with an error before it serves, and returns the
// error's line ("cove: …"), the only line of its output that says it.
func serverRefuses(t *testing.T, cove string, env []string, args ...string) (line, out string) {
	t.Helper()
	// The deadline only bounds a server that wrongly starts.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, cove, append([]string{"server", "--listen", "127.0.0.1:0", "--home", home, "--agent", cove}, args...)...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "COVE_") || strings.HasPrefix(kv, "AWS_")
	}), env...)
	b, err := cmd.CombinedOutput()
	out = string(b)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("cove server %q: %v, want it to exit with an error:\n%s", args, err, out)
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "cove: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.HasSuffix(strings.TrimSpace(out), lines[0]) {
		t.Fatalf("cove server %q: want its output to end with one line 'cove: …' saying why:\n%s", args, out)
	}
	if strings.Contains(out, "cove server listening") {
		t.Errorf("cove server %q listened before refusing:\n%s", args, out)
	}
	return lines[0], out
}

// TestServerRefusesBadEndpoints: 'cove server' with an object store that
// does not answer, a bucket that is missing or credentials it refuses,
// or with a PostgreSQL that does not answer or refuses the password,
// stops before it serves, with one line naming the flag, the endpoint and
// the bucket (or the database's host), and without the secret; so does
// a COVE_CACHE_SIZE that does not parse.
func TestServerRefusesBadEndpoints(t *testing.T) {
	t.Parallel()
	cove := testBinaries(t)
	s3 := s3test.Shared(t)
	creds := []string{"AWS_ACCESS_KEY_ID=" + s3test.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey}
	const wrongSecret = "Wr0ng-Sekrit-e2e-7xq"
	down := closedPort(t)
	for _, c := range []struct {
		name   string
		url    string
		env    []string
		want   []string
		secret string
	}{
		{"nothing listening", "s3://" + s3test.Bucket + "/p?endpoint=" + down + "&region=us-east-1&insecure=1",
			creds, []string{"--objects", down, s3test.Bucket}, s3test.SecretKey},
		{"missing bucket", "s3://no-such-bucket-e2e/p?endpoint=" + s3.Endpoint + "&region=us-east-1&insecure=1",
			creds, []string{"--objects", s3.Endpoint, "no-such-bucket-e2e"}, s3test.SecretKey},
		{"wrong credentials", s3.URL("e2e"),
			[]string{"AWS_ACCESS_KEY_ID=" + s3test.AccessKey, "AWS_SECRET_ACCESS_KEY=" + wrongSecret},
			[]string{"--objects", s3.Endpoint, s3test.Bucket}, wrongSecret},
	} {
		t.Run("objects "+c.name, func(t *testing.T) {
			line, out := serverRefuses(t, cove, c.env, "--objects", c.url)
			t.Log(line)
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("the error does not name %q: %s", w, line)
				}
			}
			if strings.Contains(out, c.secret) {
				t.Errorf("the output shows the secret key:\n%s", out)
			}
		})
	}

	t.Run("cache size that does not parse", func(t *testing.T) {
		line, _ := serverRefuses(t, cove, []string{"COVE_CACHE_SIZE=2XB"})
		if !strings.Contains(line, "COVE_CACHE_SIZE") || !strings.Contains(line, "2XB") {
			t.Errorf("the error does not name COVE_CACHE_SIZE and its value: %s", line)
		}
	})

	pg, dbURL := freshDB(t, "t_cove_endpoints")
	const wrongPW = "Wr0ng-pg-pw-e2e-4kd"
	bad, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	bad.User = url.UserPassword(pg.User, wrongPW)
	pgAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port))
	for _, c := range []struct{ name, url, where, why string }{
		{"wrong password", bad.String(), pgAddr, "password"},
		{"nothing listening", "postgres://cove:" + wrongPW + "@" + down + "/cove?sslmode=disable", down, "cannot reach"},
	} {
		t.Run("db "+c.name, func(t *testing.T) {
			line, out := serverRefuses(t, cove, nil, "--db", c.url)
			t.Log(line)
			for _, w := range []string{"--db", c.where, c.why} {
				if !strings.Contains(line, w) {
					t.Errorf("the error does not say %q: %s", w, line)
				}
			}
			if strings.Contains(out, wrongPW) {
				t.Errorf("the output shows the password:\n%s", out)
			}
		})
	}
}

// TestServerRidesOutDatabaseRestart: a real 'cove server --db
// postgres://…' whose PostgreSQL is stopped while it runs answers API
// calls 503 (unavailable, saying why) and does not exit; once PostgreSQL
// is started again on the same data, the same server answers again
// without a restart: sessions list, and one is created, runs and is
// removed.
func TestServerRidesOutDatabaseRestart(t *testing.T) {
	t.Parallel()
	pg, dbURL := freshDB(t, "t_cove_outage")
	e := newE2E(t)
	e.startServer("COVE_DB=" + dbURL)
	token := e.userToken()
	list := func() (int, api.ErrorBody) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+e.addr+"/v1/sessions", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /v1/sessions: %v%s", err, e.serverLog())
		}
		defer resp.Body.Close()
		var body api.ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
	if code, _ := list(); code != http.StatusOK {
		t.Fatalf("GET /v1/sessions before the outage: %d", code)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	code, apiErr := list()
	t.Logf("during the outage: %d %+v", code, apiErr)
	if code != http.StatusServiceUnavailable || apiErr.Code != api.CodeUnavailable || apiErr.Message == "" {
		t.Errorf("GET /v1/sessions while PostgreSQL is down: %d %+v, want 503 unavailable with the reason", code, apiErr)
	}
	if _, errOut, code := e.run(nil, "ls"); code == 0 || !strings.Contains(errOut, "unavailable") {
		t.Errorf("cove ls while PostgreSQL is down: exit %d, stderr %q; want a failure saying unavailable", code, errOut)
	}
	select {
	case <-e.srv.done:
		t.Fatalf("the server exited while PostgreSQL was down (%v)%s", e.srv.err, e.serverLog())
	default:
	}

	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if code, apiErr := list(); code != http.StatusOK {
		t.Errorf("the first GET /v1/sessions once PostgreSQL is back: %d %+v, want 200", code, apiErr)
	}
	id := e.create("--memory", "256")
	e.wantRunning(id)
	e.ok(nil, "rm", id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}
