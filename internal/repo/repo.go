// Package repo keeps host-side mirrors of the git repositories templates
// are built from, and packs what a guest needs of them into git bundles.
//
// The guest has no network of its own and must never hold a credential,
// so the host fetches (with whatever credentials the host's git is
// configured with) and hands the guest a bundle: the whole branch for a
// first build, only the commits since the last build for a rebuild.
package repo

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strings"

	"github.com/cove-dev/cove/internal/command"
)

// branchName is what cove accepts as a branch: git's own rules
// (check-ref-format) are checked too, this only keeps out what could be
// taken for an option or a path outside refs/heads.
var branchName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$`)

// remoteHelper is git's TRANSPORT::ADDRESS syntax, which runs a helper
// program (ext:: runs any command).
var remoteHelper = regexp.MustCompile(`^[A-Za-z0-9+.-]+::`)

// CheckBranch reports whether b can name a branch to follow.
func CheckBranch(b string) error {
	if !branchName.MatchString(b) || strings.Contains(b, "..") || strings.Contains(b, "//") ||
		strings.HasSuffix(b, "/") || strings.HasSuffix(b, ".lock") || strings.HasSuffix(b, ".") {
		return fmt.Errorf("branch %q: want a git branch name (letters, digits, '.', '_', '-', '/')", b)
	}
	return nil
}

// CheckSource checks what a template says of its repository: url, branch
// and the checkout's dir in the guest, branch and dir "" for their
// defaults, and neither without a url (url "" is no repository).
func CheckSource(url, branch, dir string) error {
	if url == "" {
		if branch != "" || dir != "" {
			return errors.New("branch and repo_dir need a repo")
		}
		return nil
	}
	if err := CheckURL(url); err != nil {
		return err
	}
	if branch != "" {
		if err := CheckBranch(branch); err != nil {
			return err
		}
	}
	if dir != "" {
		return CheckDir(dir)
	}
	return nil
}

// CheckDir reports whether d can be where a checkout lives in the guest:
// a clean absolute path other than /.
func CheckDir(d string) error {
	if !path.IsAbs(d) || path.Clean(d) != d || d == "/" || len(d) > 1024 ||
		strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("repo_dir %q: want a clean absolute path other than /", d)
	}
	return nil
}

// CheckURL reports whether u can name a repository: an https, http, ssh,
// git or file URL, scp-like user@host:path, or an absolute path. Nothing
// that git could read as an option or as a command transport.
func CheckURL(u string) error {
	bad := func(why string) error { return fmt.Errorf("repo %q: %s", u, why) }
	switch {
	case u == "":
		return bad("empty")
	case len(u) > 2048:
		return bad("longer than 2048 bytes")
	case strings.HasPrefix(u, "-"):
		return bad("must not start with '-'")
	case strings.ContainsAny(u, " \t\r\n\x00") || strings.ContainsFunc(u, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return bad("must not contain spaces or control characters")
	case remoteHelper.MatchString(u):
		return bad("TRANSPORT::ADDRESS remotes are not allowed")
	case strings.HasPrefix(u, "/"):
		return nil
	}
	if i := strings.Index(u, "://"); i > 0 {
		p, err := url.Parse(u)
		if err != nil {
			return bad(err.Error())
		}
		switch p.Scheme {
		case "https", "http", "ssh", "git", "file":
		default:
			return bad("scheme " + p.Scheme + ": want https, http, ssh, git or file")
		}
		if p.Scheme != "file" && p.Host == "" {
			return bad("no host")
		}
		return nil
	}
	// scp-like: [user@]host:path, where host has no '/'.
	if host, p, ok := strings.Cut(u, ":"); ok && host != "" && p != "" && !strings.Contains(host, "/") {
		return nil
	}
	return bad("want an https, http, ssh, git or file URL, user@host:path, or an absolute path")
}

// FullName is the owner/name a repository is known by on GitHub and
// similar hosts: the last two elements of the URL's path, without ".git".
// A push webhook names its repository so (repository.full_name). It is
// "" when the path has fewer than two elements.
func FullName(u string) string {
	p := u
	if i := strings.Index(u, "://"); i > 0 {
		if pu, err := url.Parse(u); err == nil {
			p = pu.Path
		}
	} else if host, rest, ok := strings.Cut(u, ":"); ok && !strings.HasPrefix(u, "/") && !strings.Contains(host, "/") {
		p = rest
	}
	p = strings.TrimSuffix(strings.TrimSuffix(p, "/"), ".git")
	name, owner := path.Base(p), path.Base(path.Dir(p))
	if name == "." || name == "/" || owner == "." || owner == "/" || owner == "" {
		return ""
	}
	return owner + "/" + name
}

// Mirror is a bare host-side copy of one branch of a repository.
type Mirror struct {
	Dir string // the bare repository; created on the first Fetch
	URL string
}

// git runs git with the mirror as its repository, a bounded set of
// transports (never ext::, whose URLs run commands) and no prompts.
func (m *Mirror) git(ctx context.Context, args ...string) ([]byte, error) {
	base := []string{"-c", "protocol.allow=never"}
	for _, p := range []string{"https", "http", "ssh", "git", "file"} {
		base = append(base, "-c", "protocol."+p+".allow=always")
	}
	base = append(base, "--git-dir", m.Dir)
	cmd := exec.CommandContext(ctx, "git", append(base, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "LC_ALL=C")
	return command.Output(ctx, cmd)
}

// Fetch brings the mirror's copy of branch up to date and returns the
// commit the branch names.
func (m *Mirror) Fetch(ctx context.Context, branch string) (string, error) {
	if err := CheckURL(m.URL); err != nil {
		return "", err
	}
	if err := CheckBranch(branch); err != nil {
		return "", err
	}
	if _, err := os.Stat(m.Dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(m.Dir, 0o700); err != nil {
			return "", fmt.Errorf("repo: mirror: %w", err)
		}
		if _, err := m.git(ctx, "init", "-q", "--bare"); err != nil {
			os.RemoveAll(m.Dir)
			return "", fmt.Errorf("repo: mirror: %w", err)
		}
	}
	ref := "refs/heads/" + branch
	if _, err := m.git(ctx, "fetch", "-q", "--no-tags", "--force", "--", m.URL, "+"+ref+":"+ref); err != nil {
		return "", m.fetchError(branch, err)
	}
	return m.Resolve(ctx, branch)
}

// FetchError is a fetch that git could not do: the repository cannot be
// reached or read, or has no such branch. Its message goes to API clients,
// so it holds the URL (without a password), the branch and git's own
// one-line reason, and none of the host's: no mirror path, no command
// line. Err has all of it, for the server's log.
type FetchError struct {
	URL      string // redacted
	Branch   string
	NoBranch bool   // the repository was read and has no such branch
	Reason   string // git's words, one line
	Err      error
}

func (e *FetchError) Error() string {
	if e.NoBranch {
		return fmt.Sprintf("repository %s: no branch %q", e.URL, e.Branch)
	}
	return fmt.Sprintf("repository %s: not reachable: %s", e.URL, e.Reason)
}

func (e *FetchError) Unwrap() error { return e.Err }

// maxReason bounds the reason a FetchError quotes from git.
const maxReason = 300

// fetchError makes the FetchError of a failed fetch of branch.
func (m *Mirror) fetchError(branch string, err error) *FetchError {
	u := m.URL
	if p, perr := url.Parse(u); perr == nil && p.User != nil {
		u = p.Redacted()
	}
	e := &FetchError{URL: u, Branch: branch, Err: fmt.Errorf("repo: fetch %s from %s: %w", branch, u, err)}
	var ce *command.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		e.Reason = "timed out"
	case errors.Is(err, context.Canceled):
		e.Reason = "cancelled"
	case errors.As(err, &ce):
		e.Reason = strings.ReplaceAll(gitReason(ce.Stderr, m.Dir), m.URL, u)
		e.NoBranch = strings.Contains(ce.Stderr, "couldn't find remote ref")
	default:
		e.Reason = "git failed"
	}
	return e
}

// gitReason is the line of git's stderr that says why it failed: the
// first "fatal:" or "error:" line (else the first line), without its
// prefix, with the mirror's path hidden, at most maxReason bytes.
func gitReason(stderr, mirror string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	line := lines[0]
	for _, l := range lines {
		if strings.HasPrefix(l, "fatal: ") || strings.HasPrefix(l, "error: ") {
			line = l
			break
		}
	}
	line = strings.TrimPrefix(strings.TrimPrefix(line, "fatal: "), "error: ")
	if mirror != "" {
		line = strings.ReplaceAll(line, mirror, "the host's mirror")
	}
	line = strings.TrimSpace(line)
	if len(line) > maxReason {
		line = strings.ToValidUTF8(line[:maxReason], "") + "…"
	}
	if line == "" {
		return "git failed without saying why"
	}
	return line
}

// Resolve returns the commit the mirror's branch names.
func (m *Mirror) Resolve(ctx context.Context, branch string) (string, error) {
	out, err := m.git(ctx, "rev-parse", "--verify", "-q", "refs/heads/"+branch+"^{commit}")
	if err != nil {
		return "", fmt.Errorf("repo: resolve %s: %w", branch, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Bundle writes a git bundle to file holding branch at its current commit.
// With since set to a commit that is an ancestor of it (the commit the
// guest already has), the bundle holds only what came after; otherwise
// (a first build, a force push) the whole history. It reports which.
func (m *Mirror) Bundle(ctx context.Context, file, branch, since string) (incremental bool, err error) {
	ref := "refs/heads/" + branch
	args := []string{"bundle", "create", "-q", file, ref}
	if since != "" {
		head, err := m.Resolve(ctx, branch)
		if err != nil {
			return false, err
		}
		if head == since {
			return false, fmt.Errorf("repo: bundle %s: nothing new since %s", branch, since)
		}
		if _, err := m.git(ctx, "merge-base", "--is-ancestor", since, head); err == nil {
			args = append(args, "^"+since)
			incremental = true
		}
	}
	if _, err := m.git(ctx, args...); err != nil {
		return false, fmt.Errorf("repo: bundle %s: %w", branch, err)
	}
	return incremental, nil
}
