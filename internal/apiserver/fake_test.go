package apiserver

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cove-dev/cove/api"
)

// fakeSessions is an in-memory Sessions: one map of sessions, one guest
// file system shared by all of them, commands run by a Go function, and
// templates that are ready as soon as they are made.
type fakeSessions struct {
	calls atomic.Int64 // every method call

	mu        sync.Mutex
	sessions  map[string]api.Session                            // guarded by mu
	files     map[string]*fakeFile                              // guarded by mu; cleaned path → entry
	run       func(p *fakeProc, req api.ExecRequest) ExitStatus // guarded by mu
	execErr   error                                             // guarded by mu; returned by Exec when set
	createFn  func() error                                      // guarded by mu; overrides Create's outcome
	templates map[string]api.Template                           // guarded by mu
	created   []api.CreateTemplateRequest                       // guarded by mu; every CreateTemplate request
	slow      time.Duration                                     // guarded by mu; how long Park, Wake and CreateTemplate take
	parkUntil []parkUntilCall                                   // guarded by mu; every ParkUntil call
	procs     chan *fakeProc                                    // every started process
}

type fakeFile struct {
	data []byte
	mode uint32
	dir  bool
}

func newFakeSessions() *fakeSessions {
	now := time.Unix(1700000000, 0).UTC()
	return &fakeSessions{
		sessions: map[string]api.Session{
			"s1": {ID: "s1", State: api.StateRunning, Image: "tiny", MemoryMiB: 512, CPUs: 1, CreatedAt: now, UpdatedAt: now},
		},
		files:     map[string]*fakeFile{"/": {dir: true, mode: 0o755}},
		templates: map[string]api.Template{},
		procs:     make(chan *fakeProc, 16),
	}
}

func (f *fakeSessions) setCreate(fn func() error) {
	f.mu.Lock()
	f.createFn = fn
	f.mu.Unlock()
}

func (f *fakeSessions) setRun(fn func(p *fakeProc, req api.ExecRequest) ExitStatus) {
	f.mu.Lock()
	f.run = fn
	f.mu.Unlock()
}

func (f *fakeSessions) check(id string) error {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sessions[id]; !ok {
		return api.Errorf(api.CodeNotFound, "session %q not found", id)
	}
	return nil
}

func (f *fakeSessions) Create(ctx context.Context, owner string, req api.CreateSessionRequest) (api.Session, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.createFn != nil {
		if err := f.createFn(); err != nil {
			return api.Session{}, err
		}
	}
	s := api.Session{ID: fmt.Sprintf("s%d", len(f.sessions)+1), State: api.StateRunning, Image: req.Image, BootMillis: 120,
		Template: req.Template, IdleTimeout: req.IdleTimeout, AutoWake: !req.NoAutoWake, Owner: owner, Agent: req.Agent}
	f.sessions[s.ID] = s
	return s, nil
}

func (f *fakeSessions) Get(ctx context.Context, id string) (api.Session, error) {
	if err := f.check(id); err != nil {
		return api.Session{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[id], nil
}

func (f *fakeSessions) List(ctx context.Context) ([]api.Session, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Session
	for _, s := range f.sessions {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b api.Session) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (f *fakeSessions) Delete(ctx context.Context, id string) error {
	if err := f.check(id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sessions, id)
	return nil
}

func (f *fakeSessions) Exec(ctx context.Context, id string, req api.ExecRequest) (Process, error) {
	if err := f.check(id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	run, err := f.run, f.execErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	p := startFakeProc(func(p *fakeProc) ExitStatus { return run(p, req) })
	f.procs <- p
	return p, nil
}

func (f *fakeSessions) Open(ctx context.Context, id, p string) (io.ReadCloser, error) {
	if err := f.check(id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.files[p]
	if !ok || e.dir {
		return nil, api.Errorf(api.CodeNotFound, "open %s: no such file", p)
	}
	return io.NopCloser(bytes.NewReader(e.data)), nil
}

func (f *fakeSessions) WriteFile(ctx context.Context, id, p string, mode uint32, r io.Reader) error {
	if err := f.check(id); err != nil {
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mkdirLocked(path.Dir(p))
	f.files[p] = &fakeFile{data: data, mode: mode}
	return nil
}

func (f *fakeSessions) Stat(ctx context.Context, id, p string) (api.FileInfo, error) {
	if err := f.check(id); err != nil {
		return api.FileInfo{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.files[p]
	if !ok {
		return api.FileInfo{}, api.Errorf(api.CodeNotFound, "stat %s: no such file", p)
	}
	return api.FileInfo{Name: path.Base(p), Size: int64(len(e.data)), Mode: e.mode, IsDir: e.dir}, nil
}

func (f *fakeSessions) ListDir(ctx context.Context, id, p string) ([]api.FileInfo, error) {
	if err := f.check(id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.FileInfo
	for name, e := range f.files {
		if name != p && path.Dir(name) == p {
			out = append(out, api.FileInfo{Name: path.Base(name), Size: int64(len(e.data)), Mode: e.mode, IsDir: e.dir})
		}
	}
	slices.SortFunc(out, func(a, b api.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (f *fakeSessions) Mkdir(ctx context.Context, id, p string) error {
	if err := f.check(id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mkdirLocked(p)
	return nil
}

func (f *fakeSessions) mkdirLocked(p string) {
	for ; p != "/"; p = path.Dir(p) {
		if _, ok := f.files[p]; !ok {
			f.files[p] = &fakeFile{dir: true, mode: 0o755}
		}
	}
}

func (f *fakeSessions) Remove(ctx context.Context, id, p string) error {
	if err := f.check(id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for name := range f.files {
		if name == p || strings.HasPrefix(name, p+"/") {
			delete(f.files, name)
		}
	}
	return nil
}

func (f *fakeSessions) GetTar(ctx context.Context, id, p string) (io.ReadCloser, error) {
	if err := f.check(id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name := range f.files {
		if name == p || strings.HasPrefix(name, p+"/") {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil, api.Errorf(api.CodeNotFound, "tar %s: no such file", p)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		e := f.files[name]
		rel := strings.TrimPrefix(strings.TrimPrefix(name, path.Dir(p)), "/")
		h := &tar.Header{Name: rel, Mode: int64(e.mode), Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if e.dir {
			h.Name, h.Typeflag, h.Size = rel+"/", tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}

func (f *fakeSessions) PutTar(ctx context.Context, id, dir string, r io.Reader) error {
	if err := f.check(id); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mkdirLocked(dir)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return api.Errorf(api.CodeInvalid, "tar: %v", err)
		}
		name := path.Join(dir, h.Name)
		if !strings.HasPrefix(name, dir+"/") {
			return api.Errorf(api.CodeInvalid, "tar: %q escapes %s", h.Name, dir)
		}
		f.mkdirLocked(path.Dir(name))
		if h.Typeflag == tar.TypeDir {
			f.mkdirLocked(name)
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		f.files[name] = &fakeFile{data: data, mode: uint32(h.Mode)}
	}
}

func (f *fakeSessions) setSlow(d time.Duration) {
	f.mu.Lock()
	f.slow = d
	f.mu.Unlock()
}

// pause takes as long as setSlow said, or until ctx ends.
func (f *fakeSessions) pause(ctx context.Context) error {
	f.mu.Lock()
	d := f.slow
	f.mu.Unlock()
	if d == 0 {
		return nil
	}
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Park parks a running session (a parked one is returned as it is); any
// other state is a conflict, as with the session manager.
func (f *fakeSessions) Park(ctx context.Context, id string) (api.Session, error) {
	if err := f.check(id); err != nil {
		return api.Session{}, err
	}
	if err := f.pause(ctx); err != nil {
		return api.Session{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[id]
	switch s.State {
	case api.StateParked:
		return s, nil
	case api.StateRunning:
	default:
		return api.Session{}, api.Errorf(api.CodeConflict, "park %s: session is %s", id, s.State)
	}
	s.State = api.StateParked
	s.Snapshot = &api.SnapshotInfo{DiskBytes: 96 << 20, MemoryBytes: int64(s.MemoryMiB) << 20, ParkMillis: 340}
	f.sessions[id] = s
	return s, nil
}

// parkUntilCall is one call of ParkUntil.
type parkUntilCall struct {
	id      string
	until   []string
	timeout time.Duration
}

// ParkUntil parks as Park does and records the call; the session shows
// what it waits for.
func (f *fakeSessions) ParkUntil(ctx context.Context, id string, until []string, timeout time.Duration) (api.Session, error) {
	s, err := f.Park(ctx, id)
	if err != nil {
		return s, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.parkUntil = append(f.parkUntil, parkUntilCall{id, until, timeout})
	s.Waiting = &api.Waiting{Until: until}
	if timeout > 0 {
		d := time.Unix(1700000000, 0).UTC().Add(timeout)
		s.Waiting.Deadline = &d
	}
	f.sessions[id] = s
	return s, nil
}

// WakeFromLastSnapshot: the fake keeps no stored snapshots.
func (f *fakeSessions) WakeFromLastSnapshot(ctx context.Context, id string) (api.Session, error) {
	if err := f.check(id); err != nil {
		return api.Session{}, err
	}
	return api.Session{}, api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: the session has no stored snapshot to go back to", id)
}

// Wake wakes a parked session (a running one is returned as it is); any
// other state is a conflict.
func (f *fakeSessions) Wake(ctx context.Context, id string) (api.Session, error) {
	if err := f.check(id); err != nil {
		return api.Session{}, err
	}
	if err := f.pause(ctx); err != nil {
		return api.Session{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[id]
	switch s.State {
	case api.StateRunning:
		return s, nil
	case api.StateParked:
	default:
		return api.Session{}, api.Errorf(api.CodeConflict, "wake %s: session is %s", id, s.State)
	}
	s.State, s.Snapshot, s.Waiting = api.StateRunning, nil, nil
	f.sessions[id] = s
	return s, nil
}

// CreateTemplate makes a ready template at once; a setup command "false"
// fails it as the session manager would.
func (f *fakeSessions) CreateTemplate(ctx context.Context, owner string, req api.CreateTemplateRequest) (api.Template, error) {
	f.calls.Add(1)
	if err := f.pause(ctx); err != nil {
		return api.Template{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	if _, ok := f.templates[req.Name]; ok {
		return api.Template{}, api.Errorf(api.CodeConflict, "template %q exists", req.Name)
	}
	for i, cmd := range req.Setup {
		if cmd == "false" {
			return api.Template{}, api.Errorf(api.CodeInvalid, "template %s: setup step %d (%q) exited 1", req.Name, i+1, cmd)
		}
	}
	t := api.Template{Name: req.Name, State: api.TemplateReady, Image: req.Image, MemoryMiB: req.MemoryMiB, CPUs: req.CPUs,
		Env: req.Env, Setup: req.Setup, Start: req.Start, Pool: req.Pool, PoolReady: req.Pool,
		Snapshot: &api.SnapshotInfo{DiskBytes: 180 << 20}, Owner: owner, Agent: req.Agent}
	f.templates[req.Name] = t
	return t, nil
}

// template returns the named template, as the manager answers an unknown
// one. The caller holds f.mu.
func (f *fakeSessions) template(name string) (api.Template, error) {
	t, ok := f.templates[name]
	if !ok {
		return api.Template{}, api.Errorf(api.CodeNotFound, "template %q not found", name)
	}
	return t, nil
}

func (f *fakeSessions) GetTemplate(ctx context.Context, name string) (api.Template, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.template(name)
}

func (f *fakeSessions) ListTemplates(ctx context.Context) ([]api.Template, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Template
	for _, t := range f.templates {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b api.Template) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DeleteTemplate refuses while a session cloned from the template exists.
func (f *fakeSessions) DeleteTemplate(ctx context.Context, name string) error {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.templates[name]; !ok {
		return api.Errorf(api.CodeNotFound, "template %q not found", name)
	}
	for _, s := range f.sessions {
		if s.Template == name {
			return api.Errorf(api.CodeConflict, "template %q has live clones (%s): remove them first", name, s.ID)
		}
	}
	delete(f.templates, name)
	return nil
}

// fakeProc is a Process whose command is a Go function. The function talks
// to the server through the far ends of three pipes and sees Resize and
// Signal on channels.
type fakeProc struct {
	stdinR           *io.PipeReader // the command's stdin
	stdinW           *io.PipeWriter
	stdoutR, stderrR *io.PipeReader
	stdoutW, stderrW *io.PipeWriter // the command's output
	signals          chan string
	resizes          chan [2]int
	killed           chan struct{}
	killOnce         sync.Once
	done             chan struct{}
	status           ExitStatus
}

func startFakeProc(run func(p *fakeProc) ExitStatus) *fakeProc {
	p := &fakeProc{
		signals: make(chan string, 16),
		resizes: make(chan [2]int, 16),
		killed:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	p.stdinR, p.stdinW = io.Pipe()
	p.stdoutR, p.stdoutW = io.Pipe()
	p.stderrR, p.stderrW = io.Pipe()
	go func() {
		p.status = run(p)
		p.stdoutW.Close()
		p.stderrW.Close()
		p.stdinR.Close()
		close(p.done)
	}()
	return p
}

func (p *fakeProc) Stdin() io.WriteCloser { return p.stdinW }
func (p *fakeProc) Stdout() io.Reader     { return p.stdoutR }
func (p *fakeProc) Stderr() io.Reader     { return p.stderrR }

func (p *fakeProc) Resize(rows, cols int) error {
	p.resizes <- [2]int{rows, cols}
	return nil
}

func (p *fakeProc) Signal(name string) error {
	if name == "KILL" {
		p.killOnce.Do(func() { close(p.killed) })
	}
	select {
	case p.signals <- name:
	default:
	}
	return nil
}

func (p *fakeProc) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, nil
}

// fakeImages is an in-memory Images.
type fakeImages struct {
	mu    sync.Mutex
	steps []string // guarded by mu
	err   error    // guarded by mu
}

func (f *fakeImages) set(steps []string, err error) {
	f.mu.Lock()
	f.steps, f.err = steps, err
	f.mu.Unlock()
}

func (f *fakeImages) List(ctx context.Context) ([]api.Image, error) {
	return []api.Image{{Name: "tiny", Key: "k1", SizeBytes: 1 << 20}}, nil
}

func (f *fakeImages) Known(name string) error {
	if name != "tiny" && name != "debian" {
		return api.Errorf(api.CodeNotFound, "unknown image %q (known: tiny, debian)", name)
	}
	return nil
}

func (f *fakeImages) Build(ctx context.Context, name string, progress func(string)) (api.Image, error) {
	f.mu.Lock()
	steps, err := f.steps, f.err
	f.mu.Unlock()
	for _, s := range steps {
		progress(s)
	}
	if err != nil {
		return api.Image{}, err
	}
	return api.Image{Name: name, Key: "k-" + name, SizeBytes: 42}, nil
}

// TemplateVersions lists one ready version per template.
func (f *fakeSessions) TemplateVersions(ctx context.Context, name string) ([]api.TemplateVersion, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.template(name)
	if err != nil {
		return nil, err
	}
	return []api.TemplateVersion{{Version: max(t.Version, 1), State: api.VersionReady, Commit: t.Commit,
		Reason: "create", Current: true, Snapshot: t.Snapshot}}, nil
}

// RebuildTemplate marks the template rebuilding.
func (f *fakeSessions) RebuildTemplate(ctx context.Context, name string) (api.Template, error) {
	return f.changeTemplate(name, func(t *api.Template) { t.Rebuilding = true })
}

// changeTemplate applies change to a template and returns it.
func (f *fakeSessions) changeTemplate(name string, change func(*api.Template)) (api.Template, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.template(name)
	if err != nil {
		return api.Template{}, err
	}
	change(&t)
	f.templates[name] = t
	return t, nil
}

// SetTemplatePool sets the template's pool size.
func (f *fakeSessions) SetTemplatePool(ctx context.Context, name string, size int) (api.Template, error) {
	return f.changeTemplate(name, func(t *api.Template) { t.Pool = size })
}

// Revoke checks the session exists; the fake keeps no tokens.
func (f *fakeSessions) Revoke(ctx context.Context, id string) (api.Session, error) {
	if err := f.check(id); err != nil {
		return api.Session{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[id], nil
}

// The fake has no checkpoints: these calls say so (manager_test.go runs
// them against the real session manager).

func (f *fakeSessions) CreateCheckpoint(ctx context.Context, id string, req api.CheckpointRequest) (api.Checkpoint, error) {
	return api.Checkpoint{}, api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}

func (f *fakeSessions) ListCheckpoints(ctx context.Context, id string) ([]api.Checkpoint, error) {
	return nil, api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}

func (f *fakeSessions) GetCheckpoint(ctx context.Context, id, name string) (api.Checkpoint, error) {
	return api.Checkpoint{}, api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}

func (f *fakeSessions) DeleteCheckpoint(ctx context.Context, id, name string) error {
	return api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}

func (f *fakeSessions) Rollback(ctx context.Context, id, name string) (api.Session, error) {
	return api.Session{}, api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}

func (f *fakeSessions) Fork(ctx context.Context, id string, req api.ForkRequest) ([]api.Session, error) {
	return nil, api.Errorf(api.CodeUnavailable, "fake: no checkpoints")
}
