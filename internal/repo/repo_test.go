package repo

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// gitRepo makes a repository with one commit on main and returns its path.
func gitRepo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		testenv.Skipf(t, "git is not installed (the package is git): %v", err)
	}
	dir := filepath.Join(t.TempDir(), "acme", "api")
	run(t, "", "git", "init", "-q", "-b", "main", dir)
	commit(t, dir, "a.txt", "one")
	return dir
}

func run(t *testing.T, dir string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes file and commits it; it returns the new commit.
func commit(t *testing.T, dir, file, content string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "git", "add", file)
	run(t, dir, "git", "commit", "-q", "-m", "write "+file)
	return run(t, dir, "git", "rev-parse", "HEAD")
}

// A first bundle holds the whole branch; after a push, one made since the
// last commit holds only the new one and applies onto a checkout of the
// old. A force push gives a whole bundle again.
func TestFetchAndBundle(t *testing.T) {
	src := gitRepo(t)
	first := run(t, src, "git", "rev-parse", "HEAD")
	m := &Mirror{Dir: filepath.Join(t.TempDir(), "mirror.git"), URL: src}
	got, err := m.Fetch(t.Context(), "main")
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if got != first {
		t.Fatalf("Fetch = %s, want %s", got, first)
	}
	b1 := filepath.Join(t.TempDir(), "1.bundle")
	if inc, err := m.Bundle(t.Context(), b1, "main", ""); err != nil || inc {
		t.Fatalf("Bundle(since none) = %v, %v; want a whole bundle", inc, err)
	}
	work := filepath.Join(t.TempDir(), "work")
	run(t, "", "git", "clone", "-q", "--branch", "main", b1, work)
	if head := run(t, work, "git", "rev-parse", "HEAD"); head != first {
		t.Fatalf("clone of the first bundle at %s, want %s", head, first)
	}

	second := commit(t, src, "b.txt", "two")
	if got, err = m.Fetch(t.Context(), "main"); err != nil || got != second {
		t.Fatalf("Fetch after a push = %s, %v; want %s", got, err, second)
	}
	b2 := filepath.Join(t.TempDir(), "2.bundle")
	if inc, err := m.Bundle(t.Context(), b2, "main", first); err != nil || !inc {
		t.Fatalf("Bundle(since first) = %v, %v; want an incremental bundle", inc, err)
	}
	// Only the new commit: the bundle needs the old one to be there.
	if out := run(t, "", "git", "bundle", "list-heads", b2); !strings.Contains(out, second) {
		t.Errorf("incremental bundle heads = %q, want %s", out, second)
	}
	if n := run(t, work, "git", "bundle", "verify", b2); !strings.Contains(n, first) {
		t.Errorf("bundle verify = %q, want it to require %s", n, first)
	}
	run(t, work, "git", "fetch", "-q", b2, "+refs/heads/main:refs/remotes/origin/main")
	run(t, work, "git", "checkout", "-q", "-f", "-B", "main", "refs/remotes/origin/main")
	if b, err := os.ReadFile(filepath.Join(work, "b.txt")); err != nil || string(b) != "two" {
		t.Fatalf("b.txt after applying the incremental bundle = %q, %v", b, err)
	}

	// A force push: the old commit is no ancestor any more.
	run(t, src, "git", "reset", "-q", "--hard", first)
	forced := commit(t, src, "c.txt", "three")
	if got, err = m.Fetch(t.Context(), "main"); err != nil || got != forced {
		t.Fatalf("Fetch after a force push = %s, %v; want %s", got, err, forced)
	}
	b3 := filepath.Join(t.TempDir(), "3.bundle")
	if inc, err := m.Bundle(t.Context(), b3, "main", second); err != nil || inc {
		t.Fatalf("Bundle(since a commit no longer on the branch) = %v, %v; want a whole bundle", inc, err)
	}
	if _, err := m.Bundle(t.Context(), b3, "main", forced); err == nil {
		t.Errorf("Bundle(since the head) succeeded; want an error (nothing new)")
	}
}

// Fetching a branch that does not exist, or from a repository that does
// not exist, fails with git's reason and leaves no commit.
func TestFetchErrors(t *testing.T) {
	src := gitRepo(t)
	m := &Mirror{Dir: filepath.Join(t.TempDir(), "mirror.git"), URL: src}
	if _, err := m.Fetch(t.Context(), "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Fetch(missing branch) = %v, want an error naming it", err)
	}
	m2 := &Mirror{Dir: filepath.Join(t.TempDir(), "m2.git"), URL: filepath.Join(t.TempDir(), "missing")}
	if _, err := m2.Fetch(t.Context(), "main"); err == nil {
		t.Error("Fetch from a missing repository succeeded")
	}
	m3 := &Mirror{Dir: filepath.Join(t.TempDir(), "m3.git"), URL: "ext::sh -c touch% /tmp/pwned"}
	if _, err := m3.Fetch(t.Context(), "main"); err == nil {
		t.Error("Fetch from an ext:: URL succeeded")
	}
	if _, err := m.Fetch(t.Context(), "--upload-pack=touch"); err == nil {
		t.Error("Fetch of an option-like branch succeeded")
	}
}

// TestFetchErrorHoldsNoHostDetail protects what API clients see of a
// fetch that fails: the URL (its password hidden), the branch and git's
// own one-line reason; never the mirror's path on the host or git's
// command line, which stay in the wrapped error for the server's log.
func TestFetchErrorHoldsNoHostDetail(t *testing.T) {
	src := gitRepo(t)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		url, branch string
		want        string // the whole message, or its start
		whole       bool
		reason      string // in the message
	}{
		{url: src, branch: "nope", want: "repository " + src + `: no branch "nope"`, whole: true},
		{url: missing, branch: "main", want: "repository " + missing + ": not reachable: ", reason: "does not appear to be a git repository"},
		{url: "file://" + missing, branch: "main", want: "repository file://" + missing + ": not reachable: ", reason: "does not appear to be a git repository"},
		{url: "https://user:s3cret@127.0.0.1:1/acme/api.git", branch: "main",
			want: "repository https://user:xxxxx@127.0.0.1:1/acme/api.git: not reachable: ", reason: "127.0.0.1"},
	} {
		m := &Mirror{Dir: filepath.Join(t.TempDir(), "mirror.git"), URL: tc.url}
		_, err := m.Fetch(t.Context(), tc.branch)
		if err == nil {
			t.Errorf("Fetch(%s, %s) succeeded", tc.url, tc.branch)
			continue
		}
		msg := err.Error()
		if (tc.whole && msg != tc.want) || !strings.HasPrefix(msg, tc.want) || !strings.Contains(msg, tc.reason) ||
			strings.Contains(msg, "\n") {
			t.Errorf("Fetch(%s, %s) says %q, want %q… with %q, on one line", tc.url, tc.branch, msg, tc.want, tc.reason)
		}
		for _, host := range []string{m.Dir, filepath.Dir(m.Dir), "--git-dir", "protocol.", "fetch -q", "s3cret", "fatal:"} {
			if strings.Contains(msg, host) {
				t.Errorf("Fetch(%s, %s) says %q, which holds %q", tc.url, tc.branch, msg, host)
			}
		}
		var fe *FetchError
		if !errors.As(err, &fe) {
			t.Errorf("Fetch(%s, %s) = %T, want a *FetchError", tc.url, tc.branch, err)
		} else if detail := fe.Err.Error(); !strings.Contains(detail, "--git-dir") {
			t.Errorf("the wrapped error %q does not keep git's command line for the log", detail)
		}
	}
}

func TestCheckURL(t *testing.T) {
	for _, u := range []string{
		"https://github.com/acme/api.git", "http://git.internal:8080/acme/api", "ssh://git@github.com/acme/api.git",
		"git://example.com/acme/api", "file:///srv/git/acme/api.git", "/srv/git/acme/api", "git@github.com:acme/api.git",
	} {
		if err := CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v, want nil", u, err)
		}
	}
	for _, u := range []string{
		"", "-uhttps://x/y", "ext::sh -c evil", "https://", "fd::3", "relative/path", "https://x/a b",
		"ftp://example.com/a/b", "https://x/y\n", strings.Repeat("a", 3000),
	} {
		if err := CheckURL(u); err == nil {
			t.Errorf("CheckURL(%q) = nil, want an error", u)
		}
	}
}

func TestCheckBranch(t *testing.T) {
	for _, b := range []string{"main", "release/1.2", "agent/fix-7", "feature_x"} {
		if err := CheckBranch(b); err != nil {
			t.Errorf("CheckBranch(%q) = %v, want nil", b, err)
		}
	}
	for _, b := range []string{"", "-x", "a..b", "a b", "a/", "/a", "a.lock", "a//b", "a:b", "a~1", "a^", "a\\b"} {
		if err := CheckBranch(b); err == nil {
			t.Errorf("CheckBranch(%q) = nil, want an error", b)
		}
	}
}

func TestFullName(t *testing.T) {
	for u, want := range map[string]string{
		"https://github.com/acme/api.git":  "acme/api",
		"https://github.com/acme/api":      "acme/api",
		"https://github.com/acme/api/":     "acme/api",
		"git@github.com:acme/api.git":      "acme/api",
		"ssh://git@github.com/acme/api":    "acme/api",
		"/srv/git/acme/api.git":            "acme/api",
		"file:///srv/git/acme/api":         "acme/api",
		"https://gitlab.com/g/sub/api.git": "sub/api",
		"https://github.com/api":           "",
	} {
		if got := FullName(u); got != want {
			t.Errorf("FullName(%q) = %q, want %q", u, got, want)
		}
	}
}

func TestCheckSource(t *testing.T) {
	for _, c := range [][3]string{
		{"", "", ""},
		{"https://github.com/acme/api", "", ""},
		{"https://github.com/acme/api", "release/2", "/src/api"},
	} {
		if err := CheckSource(c[0], c[1], c[2]); err != nil {
			t.Errorf("CheckSource(%q) = %v, want nil", c, err)
		}
	}
	for _, c := range [][3]string{
		{"", "main", ""},
		{"", "", "/workspace"},
		{"ext::sh -c id", "", ""},
		{"https://github.com/acme/api", "--upload-pack=id", ""},
		{"https://github.com/acme/api", "", "relative"},
		{"https://github.com/acme/api", "", "/"},
	} {
		if err := CheckSource(c[0], c[1], c[2]); err == nil {
			t.Errorf("CheckSource(%q) = nil, want an error", c)
		}
	}
}
