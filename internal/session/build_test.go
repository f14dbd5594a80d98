package session_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmtest"
)

// gitRepo is a repository on the host that a template follows.
type gitRepo struct {
	t   *testing.T
	dir string
}

func newGitRepo(t *testing.T, owner, name string) *gitRepo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is missing on the host (scripts/deps.sh installs it): %v", err)
	}
	g := &gitRepo{t: t, dir: filepath.Join(t.TempDir(), owner, name)}
	g.git("init", "-q", "-b", "main", g.dir)
	return g
}

func (g *gitRepo) git(args ...string) string {
	g.t.Helper()
	cmd := exec.Command("git", args...)
	if args[0] != "init" {
		cmd.Dir = g.dir
	}
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Mira K", "GIT_AUTHOR_EMAIL=mira@cove.dev",
		"GIT_COMMITTER_NAME=Mira K", "GIT_COMMITTER_EMAIL=mira@cove.dev")
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes file on branch main and returns the new commit.
func (g *gitRepo) commit(file, content string) string {
	g.t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, file), []byte(content), 0o644); err != nil {
		g.t.Fatal(err)
	}
	g.git("add", file)
	g.git("commit", "-q", "-m", "update "+file)
	return g.git("rev-parse", "HEAD")
}

// pusher sends GitHub push deliveries, signed as GitHub signs them, to a
// webhook receiver whose sink is the manager.
type pusher struct {
	t      *testing.T
	url    string
	secret string
	n      int
}

type staticSecret string

func (s staticSecret) Secret(ctx context.Context, hook string) ([]byte, bool, error) {
	return []byte(s), hook == "github", nil
}

func newPusher(t *testing.T, sink trigger.Sink) *pusher {
	secret := "push-secret"
	recv := &trigger.Receiver{Secrets: staticSecret(secret), Sink: sink}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		recv.ServeHook(w, r, "github")
	}))
	t.Cleanup(srv.Close)
	return &pusher{t: t, url: srv.URL, secret: secret}
}

// push delivers a push of head to branch of repo (owner/name), built on
// GitHub's own push payload, and returns the delivery id.
func (p *pusher) push(repo, branch, before, head string) string {
	p.t.Helper()
	raw, err := os.ReadFile("../trigger/testdata/webhook-github-push.json")
	if err != nil {
		p.t.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		p.t.Fatal(err)
	}
	payload["ref"], payload["before"], payload["after"] = "refs/heads/"+branch, before, head
	payload["repository"].(map[string]any)["full_name"] = repo
	body, _ := json.Marshal(payload)
	p.n++
	id := fmt.Sprintf("push-%d-%d", time.Now().UnixNano(), p.n)
	req, _ := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", id)
	req.Header.Set(trigger.HeaderSignature, trigger.Sign([]byte(p.secret), body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		p.t.Fatalf("push delivery answered %s, want 202", resp.Status)
	}
	return id
}

// TestTemplateFollowsRepo builds a template from a git repository, then
// pushes to it: a push to the followed branch builds the next version from
// the last one's snapshot (only the new commits travel; the setup runs
// again on top of the previous build) and swaps it in with its warm pool;
// sessions of the old version keep running on it, and its files go when
// the last of them does. Unrelated pushes build nothing; a build that
// fails leaves the current version serving.
func TestTemplateFollowsRepo(t *testing.T) {
	r := newRig(t, rigOptions{})
	vmtest.Get(t).Image(t, "debian")
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	src := newGitRepo(t, "acme", "widgets")
	c1 := src.commit("app.txt", "one\n")
	p := newPusher(t, r.mgr)

	tpl, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{
		Name: "widgets", Image: "debian", Repo: src.dir, Pool: 1,
		Setup: []string{
			// The setup sees the checkout.
			"cat /workspace/app.txt > /var/built",
			// Counts builds: a rebuild starts from the last snapshot.
			"n=$(cat /var/builds 2>/dev/null || echo 0); echo $((n+1)) > /var/builds",
			// A commit that says so fails the build.
			"! grep -q fail /workspace/app.txt",
		},
		Start: "exec sleep 100000",
	})
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Version != 1 || tpl.Commit != c1 || tpl.Branch != "main" || tpl.RepoDir != "/workspace" || tpl.RepoName != "acme/widgets" {
		t.Fatalf("template = %+v; want version 1 at %s on main in /workspace, repo acme/widgets", tpl, c1)
	}
	s1, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "widgets"})
	if err != nil {
		t.Fatal(err)
	}
	if s1.TemplateVersion != 1 {
		t.Fatalf("session's template version = %d, want 1", s1.TemplateVersion)
	}
	if got := r.sh(t, s1.ID, "cat /var/built; git -C /workspace rev-parse HEAD; git -C /workspace remote get-url origin"); got != "one\n"+c1+"\n"+src.dir+"\n" {
		t.Fatalf("clone of version 1: %q", got)
	}

	mgr := r.mgr
	versions := func() []api.TemplateVersion {
		vs, err := mgr.TemplateVersions(ctx, "widgets")
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	// waitVersion waits for version n to leave building, and any build to end.
	waitVersion := func(n int) api.TemplateVersion {
		t.Helper()
		var v api.TemplateVersion
		ok := waitFor(3*time.Minute, func() bool {
			vs := versions()
			tp, _ := mgr.GetTemplate(ctx, "widgets")
			if len(vs) < n || tp.Rebuilding {
				return false
			}
			v = vs[n-1]
			return v.State != api.VersionBuilding
		})
		if !ok {
			t.Fatalf("version %d not built; versions %+v", n, versions())
		}
		return v
	}

	// Unrelated pushes: another branch, another repository, a deleted branch.
	c2 := src.commit("app.txt", "two\n")
	p.push("acme/widgets", "feature", c1, c2)
	p.push("acme/other", "main", c1, c2)
	// A push is matched to the templates that follow it before it is
	// answered: a build it asks for is queued (the template shows
	// rebuilding) by the time the 202 comes back, and stays so for the
	// whole build. So each check below runs at once, with no wait; the
	// push to main after them proves the same check sees a build.
	queued := func() bool {
		tp, err := r.mgr.GetTemplate(ctx, "widgets")
		if err != nil {
			t.Fatal(err)
		}
		return tp.Rebuilding || tp.Version != 1 || len(versions()) != 1
	}
	for _, u := range []struct{ what, repo, branch, head string }{
		{"a push to another branch", "acme/widgets", "feature", c2},
		{"a push to another repository", "acme/other", "main", c2},
		{"a deleted branch", "acme/widgets", "main", strings.Repeat("0", 40)},
	} {
		p.push(u.repo, u.branch, c1, u.head)
		if queued() {
			tp, _ := r.mgr.GetTemplate(ctx, "widgets")
			t.Fatalf("%s started a build: %+v, versions %+v", u.what, tp, versions())
		}
	}

	// The push to main builds version 2 from version 1 (GitHub's
	// owner/name are case-blind).
	id := p.push("Acme/Widgets", "main", c1, c2)
	if !queued() {
		t.Fatal("the push to the followed branch did not queue a build by the time it was answered")
	}
	v2 := waitVersion(2)
	if v2.State != api.VersionReady || v2.Commit != c2 || v2.Base != 1 || v2.Reason != "push "+id || !v2.Current {
		t.Fatalf("version 2 = %+v", v2)
	}
	t.Logf("version 2 built in %d ms", v2.BuildMillis)
	if vs := versions(); vs[0].State != api.VersionReady || vs[0].Current || vs[0].Sessions != 1 {
		t.Fatalf("version 1 while a session uses it = %+v", vs[0])
	}
	s2, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "widgets"})
	if err != nil {
		t.Fatal(err)
	}
	if s2.TemplateVersion != 2 {
		t.Fatalf("new session's template version = %d, want 2", s2.TemplateVersion)
	}
	// One start command runs: the rebuild stopped version 1's.
	got := r.sh(t, s2.ID, "cat /var/built /var/builds; git -C /workspace log --format=%H; git -C /workspace status --porcelain -b | head -1; "+
		"for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 100000'")
	want := "two\n2\n" + c2 + "\n" + c1 + "\n## main...origin/main\n1\n"
	if got != want {
		t.Fatalf("clone of version 2:\n%s\nwant:\n%s", got, want)
	}
	if got := r.sh(t, s1.ID, "cat /var/built"); got != "one\n" {
		t.Fatalf("the version-1 session after the swap: %q", got)
	}
	// The pool refills from version 2.
	if !waitFor(2*time.Minute, func() bool { tp, _ := r.mgr.GetTemplate(ctx, "widgets"); return tp.PoolReady == 1 }) {
		t.Fatal("pool did not refill after the swap")
	}
	s3, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "widgets"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.sh(t, s3.ID, "cat /var/built"); s3.TemplateVersion != 2 || got != "two\n" {
		t.Fatalf("pooled clone after the swap: version %d, built %q", s3.TemplateVersion, got)
	}

	// A build that fails: version 3 fails, version 2 keeps serving.
	c3 := src.commit("app.txt", "fail\n")
	p.push("acme/widgets", "main", c2, c3)
	v3 := waitVersion(3)
	if v3.State != api.VersionFailed || !strings.Contains(v3.Error, "setup step 3") || v3.Current {
		t.Fatalf("version 3 = %+v; want failed at setup step 3", v3)
	}
	if tp, _ := r.mgr.GetTemplate(ctx, "widgets"); tp.Version != 2 || tp.Commit != c2 || tp.State != api.TemplateReady {
		t.Fatalf("template after a failed build: %+v", tp)
	}

	// Version 1's files go with its last session.
	dir1 := filepath.Join(r.dir, "templates", "widgets", "v1")
	if _, err := os.Stat(dir1); err != nil {
		t.Fatalf("version 1's files while a session uses it: %v", err)
	}
	if err := r.mgr.Delete(ctx, s1.ID); err != nil {
		t.Fatal(err)
	}
	if vs := versions(); vs[0].State != api.VersionRemoved || vs[0].Sessions != 0 {
		t.Fatalf("version 1 after its last session = %+v", vs[0])
	}
	if _, err := os.Stat(dir1); !os.IsNotExist(err) {
		t.Fatalf("version 1's files after its last session: %v", err)
	}
	// Version 2's clones still work (their disks never needed version 1's).
	if got := r.sh(t, s2.ID, "cat /var/built && sync"); got != "two\n" {
		t.Fatalf("version-2 session after version 1 went: %q", got)
	}
	if _, err := r.mgr.Park(ctx, s2.ID); err != nil {
		t.Fatal(err)
	}
	if got := r.sh(t, s2.ID, "cat /workspace/app.txt"); got != "two\n" {
		t.Fatalf("version-2 session after park and wake: %q", got)
	}

	// A push while the server is down is not lost: the check at start
	// fetches the branch and builds what moved.
	c4 := src.commit("app.txt", "four\n")
	r.close()
	r = openRig(t, rigOptions{dir: r.dir, db: r.db})
	mgr = r.mgr
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	v4 := waitVersion(4)
	if v4.State != api.VersionReady || v4.Commit != c4 || v4.Base != 2 || v4.Reason != "restart" || !v4.Current {
		t.Fatalf("version 4 = %+v; want built at restart from version 2", v4)
	}
	// A rebuild by hand builds even on the same commit.
	if _, err := r.mgr.RebuildTemplate(ctx, "widgets"); err != nil {
		t.Fatal(err)
	}
	v5 := waitVersion(5)
	if v5.State != api.VersionReady || v5.Commit != c4 || v5.Base != 4 || v5.Reason != "rebuild" {
		t.Fatalf("version 5 = %+v; want a rebuild of version 4", v5)
	}
	s4, err := r.mgr.Create(ctx, testOwner, api.CreateSessionRequest{Template: "widgets"})
	if err != nil {
		t.Fatal(err)
	}
	// Builds 1, 2, 4 and 5 counted; the failed build 3 left no trace.
	if got := r.sh(t, s4.ID, "cat /var/built /var/builds"); s4.TemplateVersion != 5 || got != "four\n4\n" {
		t.Fatalf("clone of version 5: version %d, %q", s4.TemplateVersion, got)
	}
	// Version 4 had no session: it went when 5 came. Version 2 stays for s2.
	vs := versions()
	if vs[1].State != api.VersionReady || vs[3].State != api.VersionRemoved {
		t.Fatalf("versions after the rebuild: %+v", vs)
	}
	_, err = r.mgr.RebuildTemplate(ctx, "nope")
	wantCode(t, "rebuild of a missing template", err, api.CodeNotFound)
	wantCode(t, "remove a template with sessions on an old version", r.mgr.DeleteTemplate(ctx, "widgets"), api.CodeConflict)
}

// TestTemplateRepoErrors checks that a template whose repository cannot be
// fetched, or whose image has no git, is refused with the reason, in a
// message that holds nothing of the host (no path under its home, no git
// command line), and that a refused create changes nothing: no record, no
// files, and a retry is refused the same way (not 409).
func TestTemplateRepoErrors(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	src := newGitRepo(t, "acme", "tools")
	src.commit("README", "tools\n")
	missing := filepath.Join(t.TempDir(), "gone.git")
	for range 2 {
		_, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "nobranch", Repo: src.dir, Branch: "release"})
		wantCode(t, "template on a branch that does not exist", err, api.CodeInvalid)
		if want := "template nobranch: repository " + src.dir + `: no branch "release"`; err.Error() != want {
			t.Errorf("error %q, want %q", err, want)
		}
		_, err = r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "unreachable", Repo: "file://" + missing})
		wantCode(t, "template on a repository that does not exist", err, api.CodeInvalid)
		if want := "template unreachable: repository file://" + missing + ": not reachable: "; !strings.HasPrefix(err.Error(), want) ||
			!strings.Contains(err.Error(), "does not appear to be a git repository") {
			t.Errorf("error %q, want %q and git's reason", err, want)
		}
		for _, host := range []string{r.dir, "git -c", "--git-dir", "repo.git"} {
			if strings.Contains(err.Error(), host) {
				t.Errorf("error %q holds %q", err, host)
			}
		}
	}
	_, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "nogit", Image: "tiny", Repo: src.dir})
	wantCode(t, "template with a repo on an image without git", err, api.CodeInvalid)
	for _, req := range []api.CreateTemplateRequest{
		{Name: "bad1", Repo: "ext::sh -c id"},
		{Name: "bad2", Repo: "-oProxyCommand=id"},
		{Name: "bad3", Repo: src.dir, Branch: "--upload-pack=id"},
		{Name: "bad4", Repo: src.dir, RepoDir: "relative"},
		{Name: "bad5", Branch: "main"},
	} {
		_, err := r.mgr.CreateTemplate(ctx, testOwner, req)
		wantCode(t, fmt.Sprintf("template %+v", req), err, api.CodeInvalid)
	}
	if tps, err := r.mgr.ListTemplates(ctx); err != nil || len(tps) != 0 {
		t.Errorf("templates after refused creates: %+v, %v; want none", tps, err)
	}
	if ents, err := os.ReadDir(filepath.Join(r.dir, "templates")); err == nil && len(ents) != 0 {
		t.Errorf("refused creates left %v in the templates dir", ents)
	}
}

// buildGate is a manager CrashPoint that holds the first template build
// to reach the step "build.recorded" (its version recorded as building,
// its commit fetched) until release, and counts the builds that reach
// that step: the rebuilds that found something to build.
type buildGate struct {
	reached chan struct{} // closed when the first build is held
	open    chan struct{} // closed by release
	release func()        // lets the held build go on; safe to call more than once

	mu      sync.Mutex
	builds  int  // guarded by mu: builds that reached the step
	holding bool // guarded by mu: the first one is held now
	overlap bool // guarded by mu: a build reached the step while the first was held
}

func newBuildGate() *buildGate {
	g := &buildGate{reached: make(chan struct{}), open: make(chan struct{})}
	g.release = sync.OnceFunc(func() { close(g.open) })
	return g
}

// step is the manager's CrashPoint.
func (g *buildGate) step(name string) {
	if name != "build.recorded" {
		return
	}
	g.mu.Lock()
	g.builds++
	first := g.builds == 1
	g.overlap = g.overlap || g.holding
	if first {
		g.holding = true
	}
	g.mu.Unlock()
	if !first {
		return
	}
	close(g.reached)
	<-g.open
	g.mu.Lock()
	g.holding = false
	g.mu.Unlock()
}

// counts is how many builds reached the step, and whether one did while
// another was held.
func (g *buildGate) counts() (int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.builds, g.overlap
}

// TestPushesDuringABuildCoalesce holds a template's build half-way (its
// version recorded, its commit fetched) while three more pushes to the
// followed branch arrive, each with a new commit: once let go, the build
// finishes, and exactly one more follows, at the last commit, for the
// last push. No build runs beside the held one, and no further rebuild
// runs (not even one that finds the branch up to date).
func TestPushesDuringABuildCoalesce(t *testing.T) {
	gate := newBuildGate()
	book := &logBook{}
	r := newRig(t, rigOptions{adjust: func(c *session.Config) {
		c.CrashPoint = gate.step
		c.Log = slog.New(book)
	}})
	// Registered after the rig's cleanups, so it runs first: a test that
	// stops half-way must not leave the build held while the manager
	// waits for it to stop.
	t.Cleanup(gate.release)
	vmtest.Get(t).Image(t, "debian")
	ctx := context.Background()
	if err := r.mgr.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	src := newGitRepo(t, "acme", "gadgets")
	c1 := src.commit("app.txt", "one\n")
	p := newPusher(t, r.mgr)
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{
		Name: "gadgets", Image: "debian", Repo: src.dir, Setup: []string{"cat /workspace/app.txt > /var/built"},
	}); err != nil {
		t.Fatal(err)
	}
	versions := func() []api.TemplateVersion {
		vs, err := r.mgr.TemplateVersions(ctx, "gadgets")
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}

	c2 := src.commit("app.txt", "two\n")
	first := p.push("acme/gadgets", "main", c1, c2)
	select {
	case <-gate.reached:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the build for the push never reached its recorded step; versions %+v; log: %s", versions(), book)
	}
	// Pushes while the build is held, each moving the branch.
	before, last := c2, ""
	for _, content := range []string{"three\n", "four\n", "five\n"} {
		c := src.commit("app.txt", content)
		last = p.push("acme/gadgets", "main", before, c)
		before = c
	}
	c5 := before
	if vs := versions(); len(vs) != 2 || vs[1].State != api.VersionBuilding || vs[1].Commit != c2 {
		t.Fatalf("versions while the first build is held: %+v; want version 2 building at %s", vs, c2)
	}
	gate.release()

	// The builder is gone only once no build is queued: nothing more can
	// start after this.
	if !waitFor(5*time.Minute, func() bool {
		tp, err := r.mgr.GetTemplate(ctx, "gadgets")
		return err == nil && !tp.Rebuilding
	}) {
		t.Fatalf("builds did not end; versions %+v; log: %s", versions(), book)
	}
	vs := versions()
	if len(vs) != 3 {
		t.Fatalf("versions after pushes during a build: %+v; want 1, 2 and one more", vs)
	}
	// Version 2 was built and went live; no session uses it, so it went
	// when version 3 came.
	if v := vs[1]; v.State != api.VersionRemoved || v.Error != "" || v.Commit != c2 || v.Reason != "push "+first {
		t.Fatalf("version 2 = %+v; want built at %s for push %s, then removed", v, c2, first)
	}
	if v := vs[2]; v.State != api.VersionReady || v.Commit != c5 || v.Base != 2 || v.Reason != "push "+last || !v.Current {
		t.Fatalf("version 3 = %+v; want current, at %s, from version 2, for the last push %s", v, c5, last)
	}
	builds, overlap := gate.counts()
	if builds != 2 || overlap {
		t.Fatalf("%d builds reached their recorded step (one beside the held build: %v); want 2, one after the other", builds, overlap)
	}
	if n := book.count("template is up to date"); n != 0 {
		t.Fatalf("%d more rebuilds ran and found the branch up to date: the pushes were not coalesced; log: %s", n, book)
	}
	if n := book.count("building template version"); n != 2 {
		t.Fatalf("%d builds logged, want 2; log: %s", n, book)
	}
}
