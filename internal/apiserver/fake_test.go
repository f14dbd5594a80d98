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
// file system shared by all of them, and commands run by a Go function.
type fakeSessions struct {
	calls atomic.Int64 // every method call

	mu       sync.Mutex
	sessions map[string]api.Session                            // guarded by mu
	files    map[string]*fakeFile                              // guarded by mu; cleaned path → entry
	run      func(p *fakeProc, req api.ExecRequest) ExitStatus // guarded by mu
	execErr  error                                             // guarded by mu; returned by Exec when set
	createFn func() error                                      // guarded by mu; overrides Create's outcome
	procs    chan *fakeProc                                    // every started process
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
		files: map[string]*fakeFile{"/": {dir: true, mode: 0o755}},
		procs: make(chan *fakeProc, 16),
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

func (f *fakeSessions) Create(ctx context.Context, req api.CreateSessionRequest) (api.Session, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.createFn != nil {
		if err := f.createFn(); err != nil {
			return api.Session{}, err
		}
	}
	s := api.Session{ID: fmt.Sprintf("s%d", len(f.sessions)+1), State: api.StateRunning, Image: req.Image, BootMillis: 120}
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
