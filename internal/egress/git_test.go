package egress

import (
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// gitServer is a git smart-HTTP server: git http-backend behind
// net/http/cgi, requiring a bearer token as GitHub does.
type gitServer struct {
	root      string // GIT_PROJECT_ROOT, holding repo.git
	backend   string // the git-http-backend program
	token     string
	refusals  atomic.Int32 // 401s answered
	authorize atomic.Int32 // requests that carried the token
}

func (g *gitServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+g.token {
		g.refusals.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="cove test git"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	g.authorize.Add(1)
	h := &cgi.Handler{Path: g.backend, Env: []string{"GIT_PROJECT_ROOT=" + g.root, "GIT_HTTP_EXPORT_ALL=1"}}
	h.ServeHTTP(w, r)
}

// gitHTTPBackend finds git-http-backend, or skips the test saying why.
func gitHTTPBackend(t testing.TB) string {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		testenv.Skipf(t, "git is not installed: %v", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		testenv.Skipf(t, "git-http-backend is not installed: %v", err)
	}
	return backend
}

// git runs git with an isolated HOME and no terminal prompts.
func git(t *testing.T, home, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = []string{
		"HOME=" + home, "PATH=" + os.Getenv("PATH"), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Agent", "GIT_AUTHOR_EMAIL=agent@example.test",
		"GIT_COMMITTER_NAME=Agent", "GIT_COMMITTER_EMAIL=agent@example.test",
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustGit(t *testing.T, home, dir string, args ...string) string {
	t.Helper()
	out, err := git(t, home, dir, args...)
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestGitCloneAndPushThroughTheProxy(t *testing.T) {
	backend := gitHTTPBackend(t)
	e := newEnv(t, nil)
	home := t.TempDir()
	const token = "ghp_t0k3n-for-tests"

	// The upstream repository, seeded with one commit on main.
	g := &gitServer{root: t.TempDir(), backend: backend, token: token}
	bare := filepath.Join(g.root, "repo.git")
	mustGit(t, home, g.root, "init", "--bare", "--initial-branch=main", bare)
	mustGit(t, home, bare, "config", "http.receivepack", "true")
	seed := t.TempDir()
	mustGit(t, home, seed, "init", "--initial-branch=main")
	if err := os.WriteFile(filepath.Join(seed, "README"), []byte("seed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, home, seed, "add", "README")
	mustGit(t, home, seed, "commit", "-m", "seed")
	mustGit(t, home, seed, "push", bare, "main")
	e.tlsUpstream("git.example.test", g, true)

	caFile := filepath.Join(t.TempDir(), "cove-egress-ca.pem")
	if err := os.WriteFile(caFile, e.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cred := Credential{Name: "github", Hosts: []string{"git.example.test"}, Header: "Authorization", Value: "Bearer " + token}
	withCred := &Session{ID: "with", Owner: "alice", Rules: mustRules(t, "git.example.test"), Credentials: staticCreds(cred)}
	without := &Session{ID: "without", Owner: "bob", Rules: mustRules(t, "git.example.test")}
	proxyWith, proxyWithout := e.serve(withCred), e.serve(without)
	via := func(u string) []string { return []string{"-c", "http.proxy=" + u, "-c", "http.sslCAInfo=" + caFile} }

	// Without the credential the server refuses: the negative control.
	work := t.TempDir()
	out, err := git(t, home, work, append(via(proxyWithout.String()), "clone", "https://git.example.test/repo.git", "denied")...)
	if err == nil || g.refusals.Load() == 0 {
		t.Fatalf("clone without a credential succeeded (refusals %d):\n%s", g.refusals.Load(), out)
	}
	if g.authorize.Load() != 0 {
		t.Fatal("a request without the credential was authorized")
	}

	// With it: clone, commit, push.
	mustGit(t, home, work, append(via(proxyWith.String()), "clone", "https://git.example.test/repo.git", "repo")...)
	clone := filepath.Join(work, "repo")
	if b, err := os.ReadFile(filepath.Join(clone, "README")); err != nil || string(b) != "seed\n" {
		t.Fatalf("cloned README: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(clone, "change"), []byte("by the agent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, home, clone, "add", "change")
	mustGit(t, home, clone, "commit", "-m", "pushed through the egress proxy")
	mustGit(t, home, clone, append(via(proxyWith.String()), "push", "origin", "main")...)
	mustGit(t, home, clone, append(via(proxyWith.String()), "fetch", "origin")...)

	if got := strings.TrimSpace(mustGit(t, home, bare, "log", "-1", "--format=%s", "main")); got != "pushed through the egress proxy" {
		t.Fatalf("the upstream's main is at %q, want the pushed commit", got)
	}
	d := e.waitDecision("the push", func(d Decision) bool {
		return d.Method == "POST" && strings.HasSuffix(d.Path, "/git-receive-pack")
	})
	if !d.Allowed || d.Credential != "github" || d.Owner != "alice" {
		t.Fatalf("push decision %+v", d)
	}
	// The token is nowhere the guest or the logs could see it.
	cfg, _ := os.ReadFile(filepath.Join(clone, ".git", "config"))
	e.assertNoSecret(string(cfg), out)
	if strings.Contains(e.log.String(), token) || strings.Contains(string(cfg), token) {
		t.Fatal("the token leaked")
	}
}
