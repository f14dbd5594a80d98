package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/repo"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm"
)

// Template versions.
//
// Every build of a template is a version with a directory of its own
// (TemplateDir/NAME/vN) holding its RAM file, device state and disk. The
// first comes from a fresh boot; a template that follows a git repository
// is rebuilt when its branch moves (a GitHub push webhook, a rebuild asked
// for by hand, or a check at server start): the build restores a clone of
// the current version, brings the checkout up to the new commit from a
// bundle the host made (only the new commits), runs the setup commands
// again (they find the previous build's work in place), restarts the start
// command and saves the machine as the next version. Its disk is then
// rebased onto the image's root file system, so no version's disk depends
// on another's.
//
// A new version goes live in one store transaction (SwapTemplateVersion);
// the warm pool is drained and refilled from it. Sessions cloned from an
// older version keep running on it; an old version's files are removed
// once no session record names it (versions stay listed, as removed).
// A build that fails leaves the current version serving and the failed
// version in the history with its error.

// defaultBranch and defaultRepoDir are used when a template with a repo
// leaves them unset.
const (
	defaultBranch  = "main"
	defaultRepoDir = "/workspace"
)

// guest paths the build uses.
const (
	guestBundle   = "/tmp/cove-repo.bundle"
	guestStartPG  = "/run/cove/start.pgid"
	guestStartLog = "/run/cove/start.log"
)

// builder is a template's build loop: one build at a time, and requests
// that arrive during a build coalesce into one more.
type builder struct {
	again  bool   // guarded by Manager.mu: another build is wanted after this one
	reason string // guarded by Manager.mu: why (the latest request's reason)
	force  bool   // guarded by Manager.mu: build even if the branch has not moved
	cancel context.CancelFunc
	done   chan struct{}
}

func (m *Manager) versionDir(name string, v int) string {
	return filepath.Join(m.templateDir(name), fmt.Sprintf("v%d", v))
}

// makeTemplateDir creates the template's directory, which an
// unprivileged QEMU must traverse to reach its version dirs.
func (m *Manager) makeTemplateDir(name string) error {
	for _, d := range []string{m.cfg.TemplateDir, m.templateDir(name)} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
	}
	return nil
}

func (m *Manager) mirror(t store.Template) *repo.Mirror {
	return &repo.Mirror{Dir: filepath.Join(m.templateDir(t.Name), "repo.git"), URL: t.Repo}
}

// templateLock is the lock that keeps a template version's files in place
// while it is cloned (read) and is taken to remove them (write).
func (m *Manager) templateLock(name string) *sync.RWMutex {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.tlocks[name]
	if l == nil {
		l = &sync.RWMutex{}
		m.tlocks[name] = l
	}
	return l
}

// followKey keys the follow index: GitHub's owner/name are case-blind,
// branch names are not.
func followKey(repoName, branch string) string { return strings.ToLower(repoName) + "\x00" + branch }

// setFollow records (on) or forgets that template t follows its repo.
func (m *Manager) setFollow(t store.Template, on bool) {
	if t.Repo == "" {
		return
	}
	k := followKey(repo.FullName(t.Repo), t.Branch)
	m.mu.Lock()
	defer m.mu.Unlock()
	names := m.follows[k]
	i := slices.Index(names, t.Name)
	switch {
	case on && i < 0:
		m.follows[k] = append(names, t.Name)
	case !on && i >= 0:
		names = append(names[:i:i], names[i+1:]...)
		if len(names) == 0 {
			delete(m.follows, k)
		} else {
			m.follows[k] = names
		}
	}
}

// onPush queues a rebuild of every template that follows the repo and
// branch of a GitHub push event. A push that deletes the branch, or
// pushes a tag, rebuilds nothing.
func (m *Manager) onPush(ev trigger.Event) {
	if ev.Source != "github" || ev.Name != "push" {
		return
	}
	branch, sha := ev.Fields["branch"], ev.Fields["head_sha"]
	if branch == "" || strings.Trim(sha, "0") == "" {
		return
	}
	m.mu.Lock()
	names := append([]string(nil), m.follows[followKey(ev.Fields["repo"], branch)]...)
	m.mu.Unlock()
	for _, n := range names {
		m.cfg.Log.Info("push: rebuilding template", "template", n, "repo", ev.Fields["repo"], "branch", branch, "head", sha)
		m.requestBuild(n, "push "+ev.ID, false)
	}
}

// RebuildTemplate queues a build of a new version of the template, even
// if its branch has not moved, and returns the template at once.
func (m *Manager) RebuildTemplate(ctx context.Context, name string) (api.Template, error) {
	t, err := m.template(ctx, name)
	if err != nil {
		return api.Template{}, err
	}
	if t.State != api.TemplateReady {
		return api.Template{}, api.Errorf(api.CodeConflict, "template %q is %s; only a ready template is rebuilt", name, t.State)
	}
	if m.snap == nil {
		return api.Template{}, api.Errorf(api.CodeUnavailable, "templates: the VMM driver cannot snapshot")
	}
	m.requestBuild(name, "rebuild", true)
	return m.templateAPI(t), nil
}

// SetTemplatePool sets how many ready clones of the template its warm
// pool keeps (0..64, as at create: CodeInvalid otherwise); an unknown
// name is CodeNotFound, a template still being created CodeConflict. The
// pool grows or shrinks at once on the server that fills it: this one,
// or another that holds its claim, which reads the size on its next round.
func (m *Manager) SetTemplatePool(ctx context.Context, name string, size int) (api.Template, error) {
	if size < 0 || size > 64 {
		return api.Template{}, api.Errorf(api.CodeInvalid, "pool %d: want 0..64", size)
	}
	for range 3 {
		t, err := m.template(ctx, name)
		if err != nil {
			return api.Template{}, err
		}
		if t.State == api.TemplateBuilding {
			return api.Template{}, api.Errorf(api.CodeConflict, "template %q is still being created; set its pool once it is ready", name)
		}
		t.Pool, t.UpdatedAt = size, time.Now().UTC()
		err = m.cfg.Store.UpdateTemplate(ctx, &t)
		if errors.Is(err, store.ErrConflict) {
			continue // changed meanwhile (a build's swap): read it again
		}
		if err != nil {
			return api.Template{}, fmt.Errorf("session: template %s pool: %w", name, err)
		}
		m.resizePool(t)
		return m.templateAPI(t), nil
	}
	return api.Template{}, api.Errorf(api.CodeConflict, "template %q keeps changing; try again", name)
}

// resizePool makes this server's pool of t want t.Pool clones: it starts
// the pool, or stops the clones past the new size.
func (m *Manager) resizePool(t store.Template) {
	if m.cfg.NoNode {
		return
	}
	m.mu.Lock()
	p := m.pools[t.Name]
	var extra []pooled
	if p != nil {
		p.want = t.Pool
		if len(p.ready) > t.Pool {
			extra = append(extra, p.ready[t.Pool:]...)
			p.ready = p.ready[:t.Pool:t.Pool]
		}
	}
	m.mu.Unlock()
	m.stopPooled(extra)
	if p == nil {
		m.ensurePool(t)
		return
	}
	m.refill(t.Name)
}

// requestBuild queues a build of template name.
func (m *Manager) requestBuild(name, reason string, force bool) {
	m.mu.Lock()
	select {
	case <-m.stop:
		m.mu.Unlock()
		return
	default:
	}
	if b := m.builds[name]; b != nil {
		b.again, b.reason, b.force = true, reason, b.force || force
		m.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &builder{cancel: cancel, done: make(chan struct{})}
	m.builds[name] = b
	m.bg.Add(1)
	m.mu.Unlock()
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-b.done:
		}
	}()
	go func() {
		defer m.bg.Done()
		defer cancel()
		for {
			m.rebuild(ctx, name, reason, force)
			m.mu.Lock()
			if !b.again || ctx.Err() != nil {
				delete(m.builds, name)
				close(b.done)
				m.mu.Unlock()
				return
			}
			reason, force, b.again, b.force = b.reason, b.force, false, false
			m.mu.Unlock()
		}
	}()
}

// stopBuild cancels a template's build, if any, and waits for it to end.
func (m *Manager) stopBuild(name string) {
	m.mu.Lock()
	b := m.builds[name]
	m.mu.Unlock()
	if b != nil {
		b.cancel()
		<-b.done
	}
}

func (m *Manager) rebuilding(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.builds[name] != nil
}

// rebuild builds the next version of template name from its current one
// and swaps it in; with force unset, only if its branch has moved.
func (m *Manager) rebuild(ctx context.Context, name, reason string, force bool) {
	log := m.cfg.Log.With("template", name, "reason", reason)
	// One server builds a template at a time (see claim.go); the one
	// that holds the claim builds from the latest commit anyway.
	ctx, release, ok := m.lease(ctx, "build/"+name)
	if !ok {
		log.Info("rebuild: another server is building the template; skipped")
		return
	}
	defer release()
	m.crashPoint("build.claimed")
	t, err := m.cfg.Store.GetTemplate(ctx, name)
	if err != nil {
		log.Warn("rebuild: template gone", "err", err)
		return
	}
	if t.State != api.TemplateReady {
		log.Info("rebuild: template not ready; skipped", "state", t.State)
		return
	}
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, name)
	if err != nil {
		log.Error("rebuild: versions", "err", err)
		return
	}
	// Under the claim, a version still building is one a server cut
	// short whose restart did not settle it (it ran under another server
	// id while the dead one's claim held).
	if err := m.failCutBuilds(ctx, name, vs, time.Now().UTC()); err != nil {
		log.Error("rebuild: settle builds cut short", "err", err)
		return
	}
	next := max(t.Version, 1) + 1
	for _, v := range vs {
		next = max(next, v.Version+1)
	}
	now := time.Now().UTC()
	v := store.TemplateVersion{Template: name, Version: next, State: store.VersionBuilding,
		Base: max(t.Version, 1), Reason: reason, CreatedAt: now, UpdatedAt: now}
	var built error // the build's end, for the event hook
	failV := func(err error) {
		built = err
		log.Warn("template build failed; the current version keeps serving", "version", v.Version, "err", err)
		v.State, v.Error, v.UpdatedAt = store.VersionFailed, err.Error(), time.Now().UTC()
		if perr := m.cfg.Store.PutTemplateVersion(context.WithoutCancel(ctx), v); perr != nil {
			log.Error("record failed build", "err", perr)
		}
		m.discardBuild(name, v.Version)
	}
	if t.Repo != "" {
		commit, err := m.mirror(t).Fetch(ctx, t.Branch)
		if err != nil {
			failV(err)
			return
		}
		if commit == t.Commit && !force {
			log.Info("template is up to date", "commit", commit)
			return
		}
		v.Commit = commit
	}
	ev, err := m.beginEvent(ctx, rebuildEvent(name, reason))
	if err != nil {
		log.Warn("rebuild refused", "err", err)
		return
	}
	defer func(start time.Time) { m.doneEvent(ctx, ev, start, built) }(time.Now())
	if err := m.cfg.Store.PutTemplateVersion(ctx, v); err != nil {
		log.Error("rebuild: record version", "err", err)
		built = err
		return
	}
	m.crashPoint("build.recorded")
	log.Info("building template version", "version", v.Version, "base", v.Base, "commit", v.Commit)
	base, err := parkedMachine(m.templateHere(t.Snapshot))
	if err != nil {
		failV(fmt.Errorf("template %s: current version: %w", name, err))
		return
	}
	start := time.Now()
	var blog buildLog
	mach, err := m.buildVersion(ctx, t, v, image.Image{}, &base, &blog)
	v.Log = blog.String()
	if err != nil {
		failV(err)
		return
	}
	v.State, v.Snapshot, v.BuildMillis, v.UpdatedAt = store.VersionReady, mach.encode(), time.Since(start).Milliseconds(), time.Now().UTC()
	t.Version, t.Commit, t.Snapshot, t.UpdatedAt = v.Version, v.Commit, v.Snapshot, v.UpdatedAt
	m.crashPoint("build.saved")
	err = m.cfg.Store.SwapTemplateVersion(context.WithoutCancel(ctx), &t, v)
	if errors.Is(err, store.ErrConflict) {
		// Changed during the build (its pool's size): the new version
		// goes onto the template as it is now.
		if t, err = m.cfg.Store.GetTemplate(context.WithoutCancel(ctx), name); err == nil {
			t.Version, t.Commit, t.Snapshot, t.UpdatedAt = v.Version, v.Commit, v.Snapshot, v.UpdatedAt
			err = m.cfg.Store.SwapTemplateVersion(context.WithoutCancel(ctx), &t, v)
		}
	}
	if err != nil {
		failV(fmt.Errorf("record new version: %w", err))
		return
	}
	m.crashPoint("build.swapped")
	log.Info("template version live", "version", v.Version, "commit", v.Commit, "took", time.Since(start).Round(time.Millisecond))
	m.startVersionUpload(name, v.Version)
	m.drainPool(name)
	m.templateReady(t)
	m.collectVersions(context.WithoutCancel(ctx), name)
}

// rebuildEvent is the event of a rebuild for reason: a push (the server's
// own, on a webhook event), the API's rebuild, or a restart's.
func rebuildEvent(name, reason string) Event {
	ev := Event{Kind: EventRebuild, Cause: CauseRestart, Template: name}
	switch {
	case strings.HasPrefix(reason, "push "):
		ev.Cause, ev.Trigger = CauseEvent, reason
	case reason == "rebuild":
		ev.Cause = CauseAPI
	}
	return ev
}

// BuildLogBytes is how much of a build's output a template version keeps
// (TemplateVersion.Log): the tail, the commands' lines among it.
const BuildLogBytes = 32 << 10

// buildLog collects what a build's setup and start commands wrote: each
// command's line, its output and its exit status.
type buildLog struct{ b []byte }

func (l *buildLog) add(cmd string, out []byte, code int, err error) {
	l.b = fmt.Appendf(l.b, "$ %s\n", cmd)
	l.b = append(l.b, out...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		l.b = append(l.b, '\n')
	}
	if err != nil {
		l.b = fmt.Appendf(l.b, "(%v)\n", err)
	} else {
		l.b = fmt.Appendf(l.b, "(exit %d)\n", code)
	}
	if len(l.b) > 2*BuildLogBytes { // a long build keeps no more than it shows
		l.b = append([]byte(nil), l.b[len(l.b)-BuildLogBytes:]...)
	}
}

// String is the log's tail, at most BuildLogBytes.
func (l *buildLog) String() string {
	if len(l.b) > BuildLogBytes {
		return string(l.b[len(l.b)-BuildLogBytes:])
	}
	return string(l.b)
}

// buildVersion builds version v of template t into its directory: from a
// fresh boot of image im when base is nil, else from a clone of base. It
// checks out t's repo, runs the setup commands, (re)starts the start
// command and saves the machine. It returns the saved machine, whose files
// are then read-only. On error no VM is left running; the caller removes
// the directory (discardBuild).
func (m *Manager) buildVersion(ctx context.Context, t store.Template, v store.TemplateVersion, im image.Image, base *machine, blog *buildLog) (machine, error) {
	dir := m.versionDir(t.Name, v.Version)
	os.RemoveAll(dir)
	if err := m.makeTemplateDir(t.Name); err != nil {
		return machine{}, err
	}
	id := "tpl-" + t.Name
	var (
		l   *live
		err error
	)
	if base == nil {
		rec := store.Session{ID: id, Image: t.Image, MemoryMiB: t.MemoryMiB, CPUs: t.CPUs, Env: t.Env}
		l, err = m.bootIn(ctx, dir, rec, im, m.cfg.DefaultBootTimeout)
		if err != nil {
			return machine{}, fmt.Errorf("template %s: boot: %w", t.Name, err)
		}
	} else {
		if l, err = m.cloneInto(ctx, *base, id, dir, ""); err != nil {
			return machine{}, fmt.Errorf("template %s: restore version %d: %w", t.Name, v.Base, err)
		}
	}
	l.env = t.Env
	// The setup commands reach what the template allows, with its owner's
	// credentials.
	go m.serveBuildEgress(t.Name, l.client())
	bctx := context.WithoutCancel(ctx)
	fail := func(err error) (machine, error) {
		l.client().Close()
		_ = l.vm.Stop(bctx)
		return machine{}, err
	}
	if t.Repo != "" {
		since := ""
		if base != nil {
			since = t.Commit
		}
		if err := m.checkout(ctx, l, t, v.Commit, since, dir); err != nil {
			return fail(fmt.Errorf("template %s: checkout: %w", t.Name, err))
		}
	}
	for i, cmd := range t.Setup {
		out, code, err := runShell(ctx, l, cmd)
		blog.add(cmd, out, code, err)
		if err != nil {
			return fail(fmt.Errorf("template %s: setup step %d (%q): %w", t.Name, i+1, cmd, err))
		}
		if code != 0 {
			return fail(api.Errorf(api.CodeInvalid, "template %s: setup step %d (%q) exited %d: %s", t.Name, i+1, cmd, code, tail(out, 2000)))
		}
	}
	if t.Start != "" {
		// The exec's process group is the shell's: the start command
		// runs on in it, and a rebuild stops the whole group.
		out, code, err := runShell(ctx, l, startScript(t.Start, base != nil))
		blog.add(t.Start, out, code, err)
		if err != nil || code != 0 {
			return fail(fmt.Errorf("template %s: start command: exit %d: %v %s", t.Name, code, err, tail(out, 500)))
		}
	}
	// The clones' first commands then find the guest's caches for a
	// first command (the shell and the lookups in PATH) warm. Only for
	// speed: a guest that cannot run them (no true in PATH) is saved
	// as it is.
	if err := warmUp(ctx, l); err != nil {
		m.cfg.Log.Warn("template warm-up before the save failed; saving anyway", "template", t.Name, "err", err)
	}
	start := time.Now()
	if err := l.hangUp(ctx, m.answerTimeout(), m.cfg.Log.With("template", t.Name)); err != nil {
		_ = l.vm.Stop(bctx)
		return machine{}, fmt.Errorf("template %s: save: %w", t.Name, err)
	}
	if _, err := m.snap.Save(bctx, l.vm, filepath.Join(dir, stateFile)); err != nil {
		_ = l.vm.Stop(bctx)
		return machine{}, fmt.Errorf("template %s: save: %w", t.Name, err)
	}
	p, err := manifest(dir, time.Since(start))
	if err != nil {
		return machine{}, fmt.Errorf("template %s: %w", t.Name, err)
	}
	if base != nil {
		if err := flatten(bctx, m.disks, l.mach.Disk, base.Disk); err != nil {
			return machine{}, fmt.Errorf("template %s: %w", t.Name, err)
		}
	}
	// The version's files are its clones' base from now on.
	for _, f := range []string{p.Mem, p.State, l.mach.Disk} {
		_ = os.Chmod(f, 0o444)
	}
	mach := l.mach
	mach.Parked = p
	return mach, nil
}

// startScript is the shell script that starts a template's start command
// in the background; a rebuild's (again) first stops the one running.
func startScript(start string, again bool) string {
	script := ""
	if again {
		script = "[ -f " + guestStartPG + " ] && kill -TERM -$(cat " + guestStartPG + ") 2>/dev/null; "
	}
	return script + "echo $$ >" + guestStartPG + "; (" + start + ") >" + guestStartLog + " 2>&1 </dev/null &"
}

// discardBuild removes the directory of template name's failed build of
// version, unless COVE_KEEP asks to keep it for a post-mortem.
func (m *Manager) discardBuild(name string, version int) {
	if os.Getenv("COVE_KEEP") == "" {
		os.RemoveAll(m.versionDir(name, version))
	}
}

// checkout brings the guest's checkout of t's repo to commit (already in
// the host mirror): a clone of the whole branch when since is "", else a
// fetch of the commits after since. Bundles go through tmpDir on the host.
func (m *Manager) checkout(ctx context.Context, l *live, t store.Template, commit, since, tmpDir string) error {
	if _, code, err := runShell(ctx, l, "command -v git >/dev/null"); err != nil || code != 0 {
		return api.Errorf(api.CodeInvalid, "image %s has no git in the guest; use an image with git (debian)", t.Image)
	}
	if since == commit {
		return nil // a forced rebuild on the same commit: the checkout is there
	}
	b := filepath.Join(tmpDir, "repo.bundle")
	defer os.Remove(b)
	if _, err := m.mirror(t).Bundle(ctx, b, t.Branch, since); err != nil {
		return err
	}
	f, err := os.Open(b)
	if err != nil {
		return err
	}
	err = l.client().Write(ctx, guestBundle, 0o600, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("copy bundle into the guest: %w", err)
	}
	dir, br := shellQuote(t.RepoDir), shellQuote(t.Branch)
	var script string
	if since == "" {
		script = "set -e; rm -rf " + dir + "; mkdir -p " + shellQuote(path.Dir(t.RepoDir)) +
			"; git clone -q --branch " + br + " " + guestBundle + " " + dir +
			"; git -C " + dir + " remote set-url origin " + shellQuote(t.Repo)
	} else {
		script = "set -e; git -C " + dir + " fetch -q " + guestBundle + " " + shellQuote("+refs/heads/"+t.Branch+":refs/remotes/origin/"+t.Branch) +
			"; git -C " + dir + " checkout -q -f -B " + br + " " + shellQuote("refs/remotes/origin/"+t.Branch)
	}
	script += "; rm -f " + guestBundle + "; git -C " + dir + " rev-parse HEAD"
	out, code, err := runShell(ctx, l, script)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("git in the guest exited %d: %s", code, tail(out, 2000))
	}
	if got := strings.TrimSpace(tail(out, 41)); got != commit {
		return fmt.Errorf("guest checkout is at %q, want %s", got, commit)
	}
	return nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// flatten rebases the qcow2 overlay disk, built on the previous version's
// disk prev, onto prev's own backing file (the image's root file system),
// copying in what prev added: versions then never depend on each other.
func flatten(ctx context.Context, disks vmm.Disks, disk, prev string) error {
	backing, format, err := disks.Backing(ctx, prev)
	if err != nil {
		return fmt.Errorf("flatten: %w", err)
	}
	if backing == "" {
		return fmt.Errorf("flatten: %s has no backing file", prev)
	}
	if format == "" {
		format = "raw"
	}
	if err := disks.Rebase(ctx, disk, backing, format, true); err != nil {
		return fmt.Errorf("flatten: %w", err)
	}
	return nil
}

// collectVersions removes the files of template name's versions that are
// neither current nor used by a session, marking them removed.
func (m *Manager) collectVersions(ctx context.Context, name string) {
	tl := m.templateLock(name)
	tl.Lock()
	defer tl.Unlock()
	t, err := m.cfg.Store.GetTemplate(ctx, name)
	if err != nil {
		return
	}
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, name)
	if err != nil {
		return
	}
	used, err := m.versionUse(ctx, name)
	if err != nil {
		return
	}
	for _, v := range vs {
		if v.State != store.VersionReady || v.Version == t.Version || used[v.Version] > 0 {
			continue
		}
		if mach, err := decodeMachine(v.Snapshot); err == nil {
			removeVersionFiles(m.versionHere(mach), m.versionDir(name, v.Version))
		}
		// Its manifest in the object store goes with it: no session
		// rests on it, so a GC may collect it.
		v.State, v.Snapshot, v.StoredManifest, v.UpdatedAt = store.VersionRemoved, nil, "", time.Now().UTC()
		if err := m.cfg.Store.PutTemplateVersion(ctx, v); err != nil {
			m.cfg.Log.Error("record removed template version", "template", name, "version", v.Version, "err", err)
			continue
		}
		m.cfg.Log.Info("template version removed: nothing uses it", "template", name, "version", v.Version)
	}
}

// versionUse counts the sessions of each version of template name.
func (m *Manager) versionUse(ctx context.Context, name string) (map[int]int, error) {
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		return nil, err
	}
	used := map[int]int{}
	for _, r := range recs {
		if r.Template == name {
			used[max(r.TemplateVersion, 1)]++
		}
	}
	return used, nil
}

// removeVersionFiles removes a template version's RAM, state and disk
// files, and its directory dir when the files are in it. A version from
// before version dirs keeps its files in the template's own directory,
// beside the mirror and the other versions: only its files go.
func removeVersionFiles(mach machine, dir string) {
	if mach.Parked != nil {
		os.Remove(mach.Parked.Mem)
		os.Remove(mach.Parked.State)
	}
	if mach.Disk != "" {
		os.Remove(mach.Disk)
		if filepath.Dir(mach.Disk) == dir {
			os.RemoveAll(dir)
		}
	}
}

// TemplateVersions lists a template's versions, oldest first.
func (m *Manager) TemplateVersions(ctx context.Context, name string) ([]api.TemplateVersion, error) {
	t, err := m.template(ctx, name)
	if err != nil {
		return nil, err
	}
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("session: template %s versions: %w", name, err)
	}
	used, err := m.versionUse(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("session: template %s versions: %w", name, err)
	}
	out := make([]api.TemplateVersion, 0, len(vs))
	for _, v := range vs {
		out = append(out, api.TemplateVersion{Version: v.Version, State: v.State, Commit: v.Commit, Base: v.Base,
			Reason: v.Reason, Error: v.Error, Log: v.Log, BuildMillis: v.BuildMillis, Current: v.Version == t.Version && t.State == api.TemplateReady,
			Sessions: used[v.Version], Stored: v.StoredManifest != "", Snapshot: snapshotInfo(v.Snapshot),
			CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt})
	}
	return out, nil
}

// recoverTemplates settles templates after a restart: builds cut short
// fail (their QEMU processes are killed and their files removed), the
// follow index is filled, templates that follow a repo are checked for
// pushes missed while the server was down, and unused versions removed.
func (m *Manager) recoverTemplates(ctx context.Context) error {
	for _, pid := range m.cfg.Driver.KillVMs(ctx, m.cfg.TemplateDir, func(string) bool { return true }) {
		m.cfg.Log.Warn("killed a VMM process of a template build cut short", "pid", pid)
	}
	ts, err := m.cfg.Store.ListTemplates(ctx)
	if err != nil {
		return fmt.Errorf("session: templates: %w", err)
	}
	now := time.Now().UTC()
	for _, t := range ts {
		if err := m.recoverTemplate(ctx, t, now); err != nil {
			return err
		}
	}
	return nil
}

// recoverTemplate settles template t's builds cut short by a server stop,
// and starts what a ready template keeps going. A build another server
// holds (see claim.go) is under way, not cut short: it is left alone.
func (m *Manager) recoverTemplate(ctx context.Context, t store.Template, now time.Time) error {
	_, release, ok := m.lease(ctx, "build/"+t.Name)
	if !ok {
		m.cfg.Log.Info("template being built by another server; left to it", "template", t.Name)
		if t.State == api.TemplateBuilding {
			m.settleLater(t.Name)
		}
		return nil
	}
	// Read again under the claim: a build that ended since the list
	// changed the record.
	t, err := m.cfg.Store.GetTemplate(ctx, t.Name)
	if errors.Is(err, store.ErrNotFound) {
		release()
		return nil
	}
	if err != nil {
		release()
		return fmt.Errorf("session: template %s: %w", t.Name, err)
	}
	rebuild, err := m.settleBuilds(ctx, t, now)
	release()
	if rebuild {
		m.requestBuild(t.Name, "restart", false)
	}
	return err
}

// failCutBuilds marks template name's versions in vs that are still
// building failed, and removes their files: the caller holds the
// template's build claim, so no build of them is under way.
func (m *Manager) failCutBuilds(ctx context.Context, name string, vs []store.TemplateVersion, now time.Time) error {
	for _, v := range vs {
		if v.State != store.VersionBuilding {
			continue
		}
		v.State, v.Error, v.UpdatedAt = store.VersionFailed, "server stopped during the build", now
		if err := m.cfg.Store.PutTemplateVersion(ctx, v); err != nil {
			return fmt.Errorf("session: template %s version %d: %w", name, v.Version, err)
		}
		// Never the current one: a version turns current and ready
		// in one transaction.
		os.RemoveAll(m.versionDir(name, v.Version))
	}
	return nil
}

// settleLater settles template name's first build once this manager can
// claim it (see recoverTemplate): the server that held the build when
// this one started may have died, and its claim then expires; a template
// left building for good could be neither cloned nor built again. A
// build that ends meanwhile leaves nothing to settle.
func (m *Manager) settleLater(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.stop:
		return
	default:
	}
	m.bg.Add(1) // under mu: never after stopLoops closed stop
	go func() {
		defer m.bg.Done()
		tick := time.NewTicker(m.leaseTTL() / 3)
		defer tick.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
			ctx := context.Background()
			_, release, ok := m.lease(ctx, "build/"+name)
			if !ok {
				continue
			}
			t, err := m.cfg.Store.GetTemplate(ctx, name)
			if err == nil && t.State == api.TemplateBuilding {
				_, err = m.settleBuilds(ctx, t, time.Now().UTC())
			}
			release()
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				m.cfg.Log.Warn("settle a template build cut short", "template", name, "err", err)
				continue
			}
			return
		}
	}()
}

// settleBuilds marks template t's builds cut short failed, and reports
// whether t is to be rebuilt (a ready template that follows a repo).
func (m *Manager) settleBuilds(ctx context.Context, t store.Template, now time.Time) (rebuild bool, err error) {
	vs, err := m.cfg.Store.ListTemplateVersions(ctx, t.Name)
	if err != nil {
		return false, fmt.Errorf("session: template %s versions: %w", t.Name, err)
	}
	if err := m.failCutBuilds(ctx, t.Name, vs, now); err != nil {
		return false, err
	}
	if t.State == api.TemplateBuilding {
		t.State, t.Error, t.UpdatedAt = api.TemplateFailed, "server stopped during the build", now
		if err := m.cfg.Store.UpdateTemplate(ctx, &t); err != nil {
			return false, fmt.Errorf("session: template %s: %w", t.Name, err)
		}
		return false, nil
	}
	if t.State != api.TemplateReady {
		return false, nil
	}
	m.setFollow(t, true)
	m.collectVersions(ctx, t.Name)
	return t.Repo != "", nil
}
