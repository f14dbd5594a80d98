package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/repo"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Templates.
//
// A template is a session booted once, set up (its setup commands run, its
// start command left running) and parked into the template's directory.
// Its RAM file, device state and disk are then read-only. A session created
// from a template restores a clone: a copy of the RAM file of its own
// (reflinked where the file system can, else a sparse copy of the touched
// pages only) so the clone can be parked later, a qcow2 overlay on the
// template's disk, and the template's device state. The clone's agent
// reseeds the guest RNG at hello, so clones never share random state.
//
// A warm pool keeps clones restored and connected in memory; create claims
// one and a background loop refills the pool. Pool VMs have no record
// until claimed: after a restart the orphan sweep removes them and the pool
// is filled again.

var templateName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

func (m *Manager) templateDir(name string) string {
	return filepath.Join(m.cfg.TemplateDir, name)
}

func (m *Manager) templateAPI(t store.Template) api.Template {
	out := api.Template{Name: t.Name, State: t.State, Image: t.Image, MemoryMiB: t.MemoryMiB, CPUs: t.CPUs,
		Env: t.Env, Setup: t.Setup, Start: t.Start, Pool: t.Pool, Error: t.Error,
		CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
		Repo: t.Repo, Branch: t.Branch, RepoDir: t.RepoDir, Version: max(t.Version, 1), Commit: t.Commit,
		Rebuilding: m.rebuilding(t.Name), Owner: t.Owner, Agent: t.Agent, Allow: t.Allow}
	if t.Repo != "" {
		out.RepoName = repo.FullName(t.Repo)
	}
	out.Snapshot = snapshotInfo(t.Snapshot)
	m.mu.Lock()
	if p := m.pools[t.Name]; p != nil {
		out.PoolReady = len(p.ready)
	}
	for _, s := range m.cloneFiles[t.Name] {
		if s.version == out.Version {
			out.CloneFilesReady++
		}
	}
	m.mu.Unlock()
	return out
}

// CreateTemplate boots the template's image, runs its setup, starts its
// start command and saves the machine, for owner (the id of the user who
// creates it; see owner.go). It returns when the template is ready (or
// failed).
func (m *Manager) CreateTemplate(ctx context.Context, owner string, req api.CreateTemplateRequest) (api.Template, error) {
	if m.snap == nil {
		return api.Template{}, api.Errorf(api.CodeUnavailable, "templates: the VMM driver cannot snapshot")
	}
	if !templateName.MatchString(req.Name) {
		return api.Template{}, api.Errorf(api.CodeInvalid, "template name %q: want lowercase letters, digits, '.', '_' or '-' (at most 64)", req.Name)
	}
	if req.Pool < 0 || req.Pool > 64 {
		return api.Template{}, api.Errorf(api.CodeInvalid, "pool %d: want 0..64", req.Pool)
	}
	if err := repo.CheckSource(req.Repo, req.Branch, req.RepoDir); err != nil {
		return api.Template{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if err := checkTemplateCommands(req); err != nil {
		return api.Template{}, err
	}
	if err := CheckAgent("agent", req.Agent); err != nil {
		return api.Template{}, err
	}
	allow, err := CheckAllow("allow", req.Allow)
	if err != nil {
		return api.Template{}, err
	}
	if req.Repo != "" && req.Branch == "" {
		req.Branch = defaultBranch
	}
	if req.Repo != "" && req.RepoDir == "" {
		req.RepoDir = defaultRepoDir
	}
	var from *checkpointRef
	if req.FromCheckpoint != "" {
		if from, err = m.checkpointForTemplate(ctx, &req); err != nil {
			return api.Template{}, err
		}
	}
	name := req.Image
	if name == "" {
		name = m.cfg.DefaultImage
	}
	im, err := m.cfg.Images.Get(ctx, name)
	if err != nil {
		return api.Template{}, err
	}
	now := time.Now().UTC()
	t := store.Template{Name: req.Name, State: api.TemplateBuilding, Image: name,
		MemoryMiB: cmp(req.MemoryMiB, m.cfg.DefaultMemoryMiB), CPUs: cmp(req.CPUs, m.cfg.DefaultCPUs),
		Env: req.Env, Setup: req.Setup, Start: req.Start, Pool: req.Pool, CreatedAt: now, UpdatedAt: now,
		Repo: req.Repo, Branch: req.Branch, RepoDir: req.RepoDir, Version: 1, Owner: owner, Agent: req.Agent, Allow: allow}
	if err := m.cfg.Store.CreateTemplate(ctx, &t); err != nil {
		if errors.Is(err, store.ErrExists) {
			return api.Template{}, api.Errorf(api.CodeConflict, "template %q exists", req.Name)
		}
		return api.Template{}, fmt.Errorf("session: create template: %w", err)
	}
	v := store.TemplateVersion{Template: t.Name, Version: 1, State: store.VersionBuilding, Reason: "create",
		CreatedAt: now, UpdatedAt: now}
	// The build is claimed (see claim.go), so that a server starting
	// meanwhile leaves it alone (recoverTemplates). The name was free: a
	// claim held is one a server that removed a template of that name
	// did not release.
	ctx, release, ok := m.lease(ctx, "build/"+t.Name)
	defer release()
	bctx := context.WithoutCancel(ctx)
	failT := func(err error) (api.Template, error) {
		if status := api.Status(api.CodeOf(err)); status >= 400 && status < 500 {
			// Refused (a repository that cannot be fetched, a setup
			// step that fails): the request changes nothing, and a
			// retry is a new create.
			m.cfg.Log.Warn("template refused", "template", t.Name, "err", err)
			if rerr := m.forgetTemplate(bctx, t.Name); rerr != nil {
				m.cfg.Log.Error("forget refused template", "template", t.Name, "err", rerr)
			}
			return api.Template{}, err
		}
		t.State, t.Error, t.UpdatedAt = api.TemplateFailed, err.Error(), time.Now().UTC()
		v.State, v.Error, v.UpdatedAt = store.VersionFailed, err.Error(), t.UpdatedAt
		_ = m.cfg.Store.SwapTemplateVersion(bctx, &t, v)
		m.discardBuild(t.Name, v.Version)
		return api.Template{}, err
	}
	if !ok {
		return failT(api.Errorf(api.CodeConflict, "template %s: another server holds its build; try again", t.Name))
	}
	if err := m.cfg.Store.PutTemplateVersion(ctx, v); err != nil {
		return failT(fmt.Errorf("session: create template: %w", err))
	}
	m.crashPoint("template.recorded")
	start := time.Now()
	if err := m.makeTemplateDir(t.Name); err != nil {
		return failT(err)
	}
	if t.Repo != "" {
		if v.Commit, err = m.mirror(t).Fetch(ctx, t.Branch); err != nil {
			var fe *repo.FetchError
			if !errors.As(err, &fe) {
				return failT(fmt.Errorf("template %s: %w", t.Name, err))
			}
			m.cfg.Log.Warn("template: fetch failed", "template", t.Name, "err", fe.Err)
			return failT(api.Errorf(api.CodeInvalid, "template %s: %v", t.Name, err))
		}
		t.Commit = v.Commit
	}
	var mach machine
	if from != nil {
		mach, err = m.versionFromCheckpoint(ctx, t, v, *from)
	} else {
		var blog buildLog
		mach, err = m.buildVersion(ctx, t, v, im, nil, &blog)
		v.Log = blog.String()
	}
	if err != nil {
		return failT(err)
	}
	m.crashPoint("template.built")
	t.State, t.Snapshot, t.UpdatedAt = api.TemplateReady, mach.encode(), time.Now().UTC()
	v.State, v.Snapshot, v.BuildMillis, v.UpdatedAt = store.VersionReady, t.Snapshot, time.Since(start).Milliseconds(), t.UpdatedAt
	if err := m.cfg.Store.SwapTemplateVersion(bctx, &t, v); err != nil {
		return failT(err)
	}
	m.cfg.Log.Info("template ready", "template", t.Name, "commit", t.Commit, "took", time.Since(start).Round(time.Millisecond))
	m.startVersionUpload(t.Name, v.Version)
	m.setFollow(t, true)
	m.templateReady(t)
	return m.templateAPI(t), nil
}

// checkTemplateCommands refuses a template whose environment, setup
// commands or start command would not fit the request frame that runs
// them in the guest (each runs as sh -c with the template's environment).
func checkTemplateCommands(req api.CreateTemplateRequest) error {
	if err := CheckEnv("env", req.Env); err != nil {
		return err
	}
	cmds := append([]string(nil), req.Setup...)
	if req.Start != "" {
		cmds = append(cmds, startScript(req.Start, true)) // a rebuild's, the longer
	}
	for i, cmd := range cmds {
		if err := checkExec(api.ExecRequest{Argv: []string{"sh", "-c", cmd}}, req.Env, "the template's"); err != nil {
			field := fmt.Sprintf("setup[%d]", i)
			if i == len(req.Setup) {
				field = "start"
			}
			return api.Errorf(api.CodeInvalid, "%s: %v", field, err)
		}
	}
	return nil
}

// forgetTemplate removes what a refused create of template name made: its
// record (with its versions) and its directory (with the repo mirror).
// No pool, follow or clone was made for it yet.
func (m *Manager) forgetTemplate(ctx context.Context, name string) error {
	if os.Getenv("COVE_KEEP") == "" { // kept for a post-mortem, as discardBuild
		if err := os.RemoveAll(m.templateDir(name)); err != nil {
			return fmt.Errorf("session: forget template %s: %w", name, err)
		}
	}
	if err := m.cfg.Store.DeleteTemplate(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("session: forget template %s: %w", name, err)
	}
	return nil
}

// warmUp runs a few commands in a guest. In a restored clone: the first
// execs after a restore pay for translating the guest's exec path again
// (under TCG), and a pooled clone pays that before it is claimed. Before a
// template's save: the guest's caches for a first command (the lookups in
// PATH, the shell's pages) are then warm in every clone, which cut a
// clone's first exec from ≈1,070 to ≈780 QEMU page faults, as many as a
// woken session's. Both a shell and a plain command looked up in PATH run,
// as a user's first command would.
func warmUp(ctx context.Context, l *live) error {
	if _, _, err := runShell(ctx, l, "true"); err != nil {
		return err
	}
	for range 3 {
		p, err := l.client().Exec(ctx, agentproto.Exec{Argv: []string{"true"}, Env: envList(l.env, nil)})
		if err != nil {
			return err
		}
		if err := drain(p); err != nil {
			return err
		}
	}
	return nil
}

// drain reads a process's output to its end and waits for it.
func drain(p *agentproto.Process) error {
	var wg sync.WaitGroup
	for _, r := range []io.Reader{p.Stdout(), p.Stderr()} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(io.Discard, r)
		}()
	}
	wg.Wait()
	_, err := p.Wait()
	return err
}

// runShell runs cmd with sh -c and returns its combined output and exit
// code.
func runShell(ctx context.Context, l *live, cmd string) ([]byte, int, error) {
	p, err := l.client().Exec(ctx, agentproto.Exec{Argv: []string{"sh", "-c", cmd}, Env: envList(l.env, nil)})
	if err != nil {
		return nil, 0, err
	}
	var out bytes.Buffer
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range []io.Reader{p.Stdout(), p.Stderr()} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				mu.Lock()
				if out.Len() < 1<<20 {
					out.Write(buf[:n])
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	exit, err := p.Wait()
	return out.Bytes(), exit.Code, err
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// template reads a template's record; an unknown name is CodeNotFound.
func (m *Manager) template(ctx context.Context, name string) (store.Template, error) {
	t, err := m.cfg.Store.GetTemplate(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return t, api.Errorf(api.CodeNotFound, "template %q not found", name)
	}
	if err != nil {
		return t, fmt.Errorf("session: template %s: %w", name, err)
	}
	return t, nil
}

// GetTemplate returns a template.
func (m *Manager) GetTemplate(ctx context.Context, name string) (api.Template, error) {
	t, err := m.template(ctx, name)
	if err != nil {
		return api.Template{}, err
	}
	out := m.templateAPI(t)
	if v, _, err := m.version(ctx, t.Name, max(t.Version, 1)); err == nil {
		out.Stored = v.StoredManifest != ""
	}
	return out, nil
}

// ListTemplates returns every template.
func (m *Manager) ListTemplates(ctx context.Context) ([]api.Template, error) {
	ts, err := m.cfg.Store.ListTemplates(ctx)
	if err != nil {
		return nil, fmt.Errorf("session: list templates: %w", err)
	}
	out := make([]api.Template, 0, len(ts))
	for _, t := range ts {
		out = append(out, m.templateAPI(t))
	}
	return out, nil
}

// DeleteTemplate removes a template and its pool. A template with clones
// (sessions created from it and not removed) cannot be removed: their
// disks and memory are built on its files.
func (m *Manager) DeleteTemplate(ctx context.Context, name string) error {
	t, err := m.template(ctx, name)
	if err != nil {
		return err
	}
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		return fmt.Errorf("session: delete template %s: %w", name, err)
	}
	var clones []string
	for _, r := range recs {
		if r.Template == name {
			clones = append(clones, r.ID)
		}
	}
	if len(clones) > 0 {
		return api.Errorf(api.CodeConflict, "template %q has %d live clone(s) (%s): remove them first", name, len(clones), strings.Join(clones, ", "))
	}
	m.setFollow(t, false)
	m.stopBuild(name)
	m.drainPool(name)
	// Clones being made, and the maker of clone files, read the files.
	tl := m.templateLock(name)
	tl.Lock()
	defer tl.Unlock()
	m.dropCloneFiles(name, 0)
	if err := os.RemoveAll(m.templateDir(t.Name)); err != nil {
		return fmt.Errorf("session: delete template %s: %w", name, err)
	}
	if err := m.cfg.Store.DeleteTemplate(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("session: delete template %s: %w", name, err)
	}
	return nil
}

// createFromTemplate creates a session for owner as a clone of a
// template: from the warm pool if one is ready, else restored now. The
// clone's owner and agent are its own (owner, req.Agent), not the
// template's.
func (m *Manager) createFromTemplate(ctx context.Context, owner string, req api.CreateSessionRequest, idle time.Duration) (api.Session, error) {
	t, err := m.template(ctx, req.Template)
	if err != nil {
		return api.Session{}, err
	}
	if t.State != api.TemplateReady {
		return api.Session{}, api.Errorf(api.CodeConflict, "template %q is %s", t.Name, t.State)
	}
	// Placed first: a node that takes no session fetches nothing.
	node, placed, err := m.place(ctx, t.MemoryMiB, t.CPUs, req.NodeSelector, t.Name)
	if err != nil {
		return api.Session{}, err
	}
	defer placed.release()
	// A host that lost the version's files (or never had them) gets them
	// back from the object store first.
	if err := m.fetchVersion(ctx, t.Name, max(t.Version, 1)); err != nil {
		return api.Session{}, api.Errorf(api.CodeUnavailable, "template %s: restore its files from the object store: %v", t.Name, err)
	}
	// The version stays on disk until the session's record names it; read
	// again under the lock, a swap may have removed the one read above.
	tl := m.templateLock(t.Name)
	tl.RLock()
	defer tl.RUnlock()
	if t, err = m.template(ctx, req.Template); err != nil {
		return api.Session{}, err
	}
	env := t.Env
	if len(req.Env) > 0 {
		env = map[string]string{}
		for k, v := range t.Env {
			env[k] = v
		}
		for k, v := range req.Env {
			env[k] = v
		}
		if err := CheckEnv("env (with template "+t.Name+"'s)", env); err != nil {
			return api.Session{}, err
		}
	}
	start := time.Now()
	defer m.countDemand(t.Name, start)()
	id, l := m.claim(t.Name, t.Version)
	if l == nil {
		release, err := m.admit("create", t.MemoryMiB, t.CPUs)
		if err != nil {
			return api.Session{}, err
		}
		defer release()
		id = newID()
		if l, err = m.clone(ctx, t, id, true); err != nil {
			return api.Session{}, err
		}
	}
	l.env = env
	m.crashPoint("clone.restored")
	now := time.Now().UTC()
	rec := store.Session{ID: id, State: api.StateRunning, Image: t.Image, MemoryMiB: t.MemoryMiB, CPUs: t.CPUs,
		Env: env, Accel: m.cfg.Driver.Accel(), CreatedAt: now, UpdatedAt: now,
		BootMillis: time.Since(start).Milliseconds(), Handle: l.vm.Handle(), Snapshot: l.mach.encode(),
		Template: t.Name, TemplateVersion: max(t.Version, 1), IdleTimeout: idle, NoAutoWake: req.NoAutoWake,
		Owner: owner, Agent: req.Agent, Allow: req.Allow, Node: node}
	withKey(ctx, &rec)
	if err := m.record(ctx, &rec, placed); err != nil {
		l.client().Close()
		_ = l.vm.Stop(context.Background())
		os.RemoveAll(m.dir(id))
		return api.Session{}, fmt.Errorf("session: create from template %s: %w", t.Name, err)
	}
	m.adoptLive(id, l)
	// Refill a little later: restoring the next clone takes the CPU the
	// new session's first commands want (2 cores here, TCG).
	time.AfterFunc(250*time.Millisecond, func() { m.refill(t.Name) })
	m.cfg.Log.Info("session cloned", "session", id, "template", t.Name, "ms", rec.BootMillis, "owner", owner, "agent", rec.Agent)
	return m.toAPI(rec), nil
}

// clone restores a new VM from template t into the session dir of id.
// With ahead, it uses a set of clone files made ahead if one is ready: a
// create waits for the clone, a pool refill does not (and leaves the set
// for a create that finds the pool empty).
func (m *Manager) clone(ctx context.Context, t store.Template, id string, ahead bool) (*live, error) {
	mach, err := parkedMachine(m.templateHere(t.Snapshot))
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "template %s: %v", t.Name, err)
	}
	var files string
	if ahead {
		files = m.takeCloneFiles(t.Name, max(t.Version, 1))
		// The next set is made a little later: the copy takes CPU and
		// memory bandwidth the new clone's first commands want.
		time.AfterFunc(cloneFilesDelay, func() { m.wantCloneFiles(t.Name) })
	}
	l, err := m.cloneInto(ctx, mach, id, m.dir(id), files)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "template %s: %v", t.Name, err)
	}
	return l, nil
}

// cloneInto restores a new VM, named id, from the parked machine mach
// into dir, which must not exist: a RAM file of its own, a qcow2 overlay
// on mach's disk. files, if not "", is a directory of both made ahead
// (see takeCloneFiles), renamed to dir.
func (m *Manager) cloneInto(ctx context.Context, mach machine, id, dir, files string) (l *live, err error) {
	if files != "" {
		if err := os.Rename(files, dir); err != nil {
			m.cfg.Log.Warn("clone files made ahead unusable: copying", "session", id, "err", err)
			os.RemoveAll(files)
			files = ""
		}
	}
	if files == "" {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("session: clone %s: %w", id, err)
		}
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	disk := filepath.Join(dir, cloneOverlay)
	var waitCopy func(context.Context) error
	if files == "" {
		// The RAM file: a reflink now where the file system has them;
		// else its data is copied while QEMU starts, and QEMU loads the
		// state only once the copy is done.
		copyRest, err := startCopy(mach.Parked.Mem, filepath.Join(dir, vmm.MemFile))
		if err != nil {
			return nil, fmt.Errorf("session: clone %s: copy memory: %w", id, err)
		}
		copied := make(chan struct{})
		var copyErr error // set before copied is closed
		go func() {
			start := time.Now()
			copyErr = copyRest(false)
			m.cfg.Log.Debug("clone memory copied", "session", id, "ms", time.Since(start).Milliseconds(), "err", copyErr)
			close(copied)
		}()
		waitCopy = func(ctx context.Context) error {
			select {
			case <-copied:
				if copyErr != nil {
					return fmt.Errorf("copy memory: %w", copyErr)
				}
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		defer func() {
			if err != nil {
				<-copied // the copy is done with the file before the dir goes
			}
		}()
		if err := makeOverlay(ctx, m.disks, mach.Disk, disk); err != nil {
			return nil, fmt.Errorf("session: clone %s: %w", id, err)
		}
	}
	state := mach.Parked.State
	mach.Parked, mach.Disk, mach.FromHome = nil, disk, "" // its disk rests on this node's version files
	rctx, cancel := context.WithTimeout(ctx, m.cfg.DefaultBootTimeout)
	defer cancel()
	l, err = m.restore(rctx, id, dir, mach, state, hooks{beforeLoad: waitCopy})
	if err != nil {
		return nil, fmt.Errorf("restore clone: %w", err)
	}
	return l, nil
}

// makeOverlay has disks create the qcow2 file disk, an overlay on the
// qcow2 file backing.
func makeOverlay(ctx context.Context, disks vmm.Disks, backing, disk string) error {
	if err := disks.Overlay(ctx, disk, backing, "qcow2"); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	return nil
}

// startCopy starts copying src to dst (created): it reflinks dst to src
// where the file system supports it, and returns a no-op; else it gives
// dst src's size and returns the function that copies src's data extents
// (dst keeps src's holes) and, if sync, flushes dst to disk. The returned
// function closes both files.
func startCopy(src, dst string) (copyRest func(sync bool) error, err error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		in.Close()
		return nil, err
	}
	closeBoth := func() { in.Close(); out.Close() }
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		closeBoth()
		return func(bool) error { return nil }, nil
	}
	fi, err := in.Stat()
	if err == nil {
		err = out.Truncate(fi.Size())
	}
	if err != nil {
		closeBoth()
		return nil, err
	}
	return func(sync bool) error {
		defer closeBoth()
		err := copyExtents(in, out, fi.Size())
		if err == nil && sync {
			err = out.Sync()
		}
		return err
	}, nil
}

// copyExtents copies the data extents of in's first size bytes to out at
// the same offsets.
func copyExtents(in, out *os.File, size int64) error {
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole remains
			}
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(hole-pos), 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

// pool is a template's warm pool.
type pool struct {
	want   int // the template's configured size: the most it keeps
	demand poolDemand
	ready  []pooled
	wake   chan struct{} // a claim or a change asks the filler to run
	cancel chan struct{} // closed by drain
}

type pooled struct {
	id      string
	version int // the template version it is a clone of
	l       *live
}

// startPools starts the pools of every ready template (after a restart).
func (m *Manager) startPools(ctx context.Context) error {
	ts, err := m.cfg.Store.ListTemplates(ctx)
	if err != nil {
		return fmt.Errorf("session: templates: %w", err)
	}
	for _, t := range ts {
		m.templateReady(t)
	}
	return nil
}

// templateReady starts what a ready template keeps going: its pool and
// its clone files made ahead.
func (m *Manager) templateReady(t store.Template) {
	if m.cfg.NoNode {
		return // no VMs here: no clones to make ahead
	}
	m.wantCloneFiles(t.Name)
	m.ensurePool(t)
}

// ensurePool starts the filler of t's pool if it wants clones.
func (m *Manager) ensurePool(t store.Template) {
	if t.Pool <= 0 || t.State != api.TemplateReady {
		return
	}
	m.mu.Lock()
	if m.pools[t.Name] != nil {
		m.mu.Unlock()
		return
	}
	p := &pool{want: t.Pool, demand: poolDemand{since: time.Now()}, wake: make(chan struct{}, 1), cancel: make(chan struct{})}
	m.pools[t.Name] = p
	m.mu.Unlock()
	m.bg.Add(1)
	go m.fillLoop(t, p)
	m.refill(t.Name)
}

func (m *Manager) refill(name string) {
	m.mu.Lock()
	p := m.pools[name]
	m.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fillLoop keeps t's pool filled while this manager holds the claim
// pool/NAME (see claim.go): it claims it again before each clone and on a
// tick (a third of the claim's ttl), which renews it while it is held
// and takes it over once another server let it go. A server that does
// not hold it keeps no clones.
func (m *Manager) fillLoop(t store.Template, p *pool) {
	defer m.bg.Done()
	// Each node keeps its own pool of the template (the creates placed
	// on it claim from it): the claim is the node's.
	key := "pool/" + t.Name
	if m.cfg.Node != "" {
		key += "/" + m.cfg.Node
	}
	held := false
	defer func() {
		if held {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.cfg.Store.Release(ctx, key, m.cfg.ServerID); err != nil {
				m.cfg.Log.Warn("release pool claim; it is free once it expires", "template", t.Name, "err", err)
			}
		}
	}()
	// hold claims the pool again and reports whether it is this
	// manager's; a pool lost to another server drops its clones.
	hold := func() bool {
		ok, err := m.cfg.Store.Claim(context.Background(), key, m.cfg.ServerID, m.leaseTTL())
		if err != nil {
			m.cfg.Log.Warn("claim pool", "template", t.Name, "err", err)
		}
		if held && err == nil && !ok {
			m.cfg.Log.Warn("pool taken over by another server; dropping this one's clones", "template", t.Name)
			m.dropReady(p)
		}
		if err == nil && !ok {
			m.cfg.Log.Debug("pool kept by another server", "template", t.Name, "server", m.cfg.ServerID)
		}
		if err == nil {
			held = ok
		}
		return ok
	}
	// The tick also follows demand: a pool shrinks as its window passes.
	tick := time.NewTicker(min(m.leaseTTL()/3, m.cfg.PoolWindow/4))
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			m.drainPool(t.Name)
			return
		case <-p.cancel:
			return
		case <-p.wake:
		case <-tick.C:
			// The size may have been set through another server
			// (SetTemplatePool there): take it from the record.
			if rec, err := m.cfg.Store.GetTemplate(context.Background(), t.Name); err == nil && rec.Pool != t.Pool {
				t.Pool = rec.Pool
				m.resizePool(t)
			}
		}
	fill:
		for {
			m.mu.Lock()
			n, want := len(p.ready), p.demand.size(time.Now(), m.cfg.PoolWindow, p.want)
			var extra []pooled
			if n > want {
				// Demand fell: the clones past it are stopped, the
				// newest first (the oldest are the most settled).
				extra, p.ready = p.ready[want:], p.ready[:want:want]
			}
			m.mu.Unlock()
			if len(extra) > 0 {
				m.cfg.Log.Info("warm pool shrinks with demand", "template", t.Name, "from", n, "to", want)
				m.stopPooled(extra)
			}
			if !hold() || n >= want {
				break fill
			}
			// Another node's template files come from the object store
			// first (as a create's do).
			if err := m.fetchVersion(context.Background(), t.Name, max(t.Version, 1)); err != nil {
				m.cfg.Log.Warn("pool refill: restore the template's files", "template", t.Name, "err", err)
				break fill
			}
			// A cordoned or draining node keeps no more clones; a
			// draining one keeps none (DrainNode dropped them).
			if !m.nodeSchedulable(context.Background()) {
				break fill
			}
			// Admitted as a create is: a pool does not crowd the host
			// past its room (creates and wakes would find none). Refused,
			// it waits for its next round.
			release, aerr := m.admit("pool refill", t.MemoryMiB, t.CPUs)
			if aerr != nil {
				m.cfg.Log.Debug("pool refill waits for room", "template", t.Name, "err", aerr)
				break fill
			}
			id := newID()
			ev, err := m.beginEvent(context.Background(), Event{Kind: EventRefill, Cause: CausePool, Template: t.Name, Session: id})
			var l *live
			start := time.Now()
			if err == nil {
				tl := m.templateLock(t.Name)
				tl.RLock()
				l, err = m.clone(context.Background(), t, id, false)
				tl.RUnlock()
			}
			if err == nil {
				m.crashPoint("pool.restored")
				// The listen stream opens now too, so that the claimed
				// clone's first command does not share the guest with it.
				l.serving = true
				go m.serveGuest(id, l)
				if werr := warmUp(context.Background(), l); werr != nil {
					l.client().Close()
					_ = l.vm.Stop(context.Background())
					os.RemoveAll(m.dir(id))
					err = werr
				}
			}
			if !errors.Is(err, ErrRefused) {
				m.doneEvent(context.Background(), ev, start, err)
			}
			if err != nil {
				release()
				select {
				case <-p.cancel:
					return // the template is going away
				default:
				}
				m.cfg.Log.Warn("pool refill failed", "template", t.Name, "err", err)
				select {
				case <-time.After(5 * time.Second):
				case <-m.stop:
				case <-p.cancel:
				}
				break fill
			}
			m.mu.Lock()
			select {
			case <-p.cancel:
				m.mu.Unlock()
				l.client().Close()
				_ = l.vm.Stop(context.Background())
				os.RemoveAll(m.dir(id))
				release()
				return
			default:
			}
			p.ready = append(p.ready, pooled{id: id, version: t.Version, l: l})
			m.mu.Unlock()
			release() // counted as the pool's now
		}
	}
}

// countDemand counts a create from template name, placed on this node,
// in its pool's demand until the returned func is called. The filler
// looks again once the create is done (createFromTemplate's refill): a
// clone restored meanwhile would take the CPU the create wants.
func (m *Manager) countDemand(name string, now time.Time) (done func()) {
	m.mu.Lock()
	p := m.pools[name]
	if p != nil {
		p.demand.start(now)
	}
	m.mu.Unlock()
	return func() {
		if p != nil {
			m.mu.Lock()
			p.demand.done()
			m.mu.Unlock()
		}
	}
}

// claim takes a ready clone of the given version from the template's
// pool, if any.
func (m *Manager) claim(name string, version int) (string, *live) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pools[name]
	if p == nil || len(p.ready) == 0 || p.ready[0].version != version {
		return "", nil
	}
	c := p.ready[0]
	p.ready = p.ready[1:]
	return c.id, c.l
}

// dropReady stops the ready clones of pool p, which stays.
func (m *Manager) dropReady(p *pool) {
	m.mu.Lock()
	ready := p.ready
	p.ready = nil
	m.mu.Unlock()
	m.stopPooled(ready)
}

// stopPooled stops ready clones taken out of their pool.
func (m *Manager) stopPooled(ready []pooled) {
	for _, c := range ready {
		c.l.client().Close()
		_ = c.l.vm.Stop(context.Background())
		os.RemoveAll(m.dir(c.id))
	}
}

// drainPool stops a template's pool and its ready clones.
func (m *Manager) drainPool(name string) {
	m.mu.Lock()
	p := m.pools[name]
	delete(m.pools, name)
	var ready []pooled
	if p != nil {
		select {
		case <-p.cancel:
		default:
			close(p.cancel)
		}
		ready, p.ready = p.ready, nil
	}
	m.mu.Unlock()
	for _, c := range ready {
		c.l.client().Close()
		_ = c.l.vm.Stop(context.Background())
		os.RemoveAll(m.dir(c.id))
	}
}
