package fake

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/vmm"
)

// The fake guest's agent.
//
// It serves the operations the session manager uses: hello (on the sync
// line too), detach (with its quiet line), listen, exec and attach, read,
// write, stat, list, mkdir, remove and watch (the guest's own file changes
// are the events: watch.go). tar_get and tar_put are refused. A
// restored request (the host's word that the guest was restored from a
// checkpoint a tool asked for) is kept, as JSON, in the file RestoredPath,
// for tests to read: no tool waits in the fake guest.
//
// Files live in memory: a map from clean absolute path to content; "/",
// "/root" and "/tmp" exist at boot, and a write creates missing parent
// directories as the real agent's does.
//
// Commands are built in; PATH is not searched and nothing is forked:
//
//	true, false     exit 0, exit 1
//	exit N          exits N
//	echo ARG...     prints its arguments, space-separated, and a newline
//	env             prints the command's environment, one KEY=VALUE a line
//	cat PATH...     prints the files (exit 1 and a message for a missing one)
//	touch PATH...   creates the files that are missing, empty
//	cat             copies stdin to stdout until stdin's EOF (exit 0) or a
//	                signal N (exit 128+N)
//	count           prints 1, 2, 3…, a line every millisecond while the
//	                guest runs, until stdin's EOF (exit 0) or a signal N
//	                (exit 128+N)
//	sh -c SCRIPT    SCRIPT split on blanks, run as one of the above (no
//	                quoting, variables or pipes)
//
// Anything else is not found (CodeNotFound), as a missing executable is.
// cat and count run on, and are saved with the guest, while their stream
// is detached.
//
// A command's output is kept as the real agent keeps it (an
// agentproto.OutputLog, saved with the guest), an attach replays it from
// the host's offsets, and an ended command is kept until the host
// acknowledges its exit, or agentproto.KeptExits newer ones wait. A
// detach ends the session only once every stream's handler has read what
// the host sent before it (a real guest's RAM keeps such frames across the
// park; the fake guest's state file would not).

// RestoredPath is where the fake guest keeps the last restored request
// it got (see the top of this file).
const RestoredPath = "/tmp/cove-restored.json"

// SeedsPath is where the fake guest keeps the entropy of each hello it
// answered, a line of hex each (an empty line: a hello with none), as the
// real agent reseeds its RNG from it.
const SeedsPath = "/tmp/cove-seeds"

// stateVersion versions the state file.
const stateVersion = 2

// state is what a Save writes: the machine it belongs to, the files and
// the commands not yet forgotten.
type state struct {
	V         int              `json:"v"`
	MemoryMiB int              `json:"memory_mib"`
	CPUs      int              `json:"cpus"`
	Kernel    string           `json:"kernel"`
	Files     map[string]*file `json:"files"`
	Commands  []*command       `json:"commands,omitempty"`
	NextPID   int              `json:"next_pid"`
	// Exits counts the commands that ended: command.Ended orders them.
	Exits int64 `json:"exits,omitempty"`
}

func newState() *state {
	now := time.Now().UTC()
	st := &state{V: stateVersion, Files: map[string]*file{}, NextPID: 100}
	for _, d := range []string{"/", "/root", "/tmp"} {
		st.Files[d] = &file{Dir: true, Mode: 0o755, ModTime: now}
	}
	return st
}

// file is a file or directory of the guest.
type file struct {
	Data    []byte    `json:"data,omitempty"`
	Mode    uint32    `json:"mode"`
	Dir     bool      `json:"dir,omitempty"`
	ModTime time.Time `json:"mod_time"`
}

// command is a command started by exec, kept until the host acknowledged
// its exit (or agentproto.KeptExits newer ones wait).
type command struct {
	PID   int                  `json:"pid"`
	Argv  []string             `json:"argv"`
	Out   agentproto.OutputLog `json:"out"`
	Exit  *agentproto.Exit     `json:"exit,omitempty"`
	Ended int64                `json:"ended,omitempty"` // its place among the exits (state.Exits)
	Count int                  `json:"count,omitempty"` // count: the last number printed

	sink   *frameWriter // the attached stream, nil while detached
	exitTo *frameWriter // the stream that took the exit, awaiting its ack
}

// guest is a running fake guest.
type guest struct {
	p      *process
	hang   bool // never answers on the agent channel
	booted time.Time

	mu       sync.Mutex
	cond     *sync.Cond              // signalled when paused or stopped change
	paused   bool                    // guarded by mu
	stopped  bool                    // guarded by mu
	st       *state                  // guarded by mu; st.Commands is rebuilt from commands on save
	commands map[int]*command        // guarded by mu
	kick     func(nonce string)      // guarded by mu: ends the current session (a detach)
	watches  map[*fakeWatch]struct{} // guarded by mu: directory watches (watch.go)
}

func newGuest(p *process, st *state, hang bool) *guest {
	g := &guest{p: p, hang: hang, booted: time.Now(), st: st, commands: map[int]*command{}}
	g.cond = sync.NewCond(&g.mu)
	for _, c := range st.Commands {
		g.commands[c.PID] = c
	}
	st.Commands = nil
	return g
}

// enter waits while the guest is paused and takes its lock; false (lock
// not held) once the guest is stopped.
func (g *guest) enter() bool {
	g.mu.Lock()
	for g.paused && !g.stopped {
		g.cond.Wait()
	}
	if g.stopped {
		g.mu.Unlock()
		return false
	}
	return true
}

// running waits while the guest is paused; false once it is stopped.
func (g *guest) running() bool {
	if !g.enter() {
		return false
	}
	g.mu.Unlock()
	return true
}

func (g *guest) setPaused(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = on
	g.cond.Broadcast()
}

func (g *guest) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	g.cond.Broadcast()
}

// snapshot encodes the guest's state for a state file. The guest must be
// paused: nothing changes it meanwhile.
func (g *guest) snapshot(spec vmm.Spec) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := *g.st
	st.MemoryMiB, st.CPUs, st.Kernel = spec.MemoryMiB, spec.CPUs, spec.Kernel
	st.Commands = nil
	for _, c := range g.commands {
		st.Commands = append(st.Commands, c)
	}
	sort.Slice(st.Commands, func(i, j int) bool { return st.Commands[i].PID < st.Commands[j].PID })
	return json.Marshal(&st)
}

// serve serves one agent connection at a time until the process exits.
func (g *guest) serve() {
	g.mu.Lock()
	for _, c := range g.commands {
		if c.Argv[0] == "count" && c.Exit == nil {
			go g.count(c) // restored: counts on
		}
	}
	g.mu.Unlock()
	for {
		select {
		case c := <-g.p.agentCh:
			g.serveConn(c)
			c.Close()
		case <-g.p.done:
			return
		}
	}
}

// port is the guest's view of its agent channel: it reads nothing while
// the guest is paused, and a session's end leaves it open (a detached
// guest waits for the next sync on the same connection).
type port struct {
	net.Conn
	g *guest
}

func (c port) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.g.running() {
		return 0, net.ErrClosed
	}
	return n, err
}

// Close stops a pending read (yamux's reader) and keeps the connection.
func (c port) Close() error { return c.Conn.SetReadDeadline(time.Now()) }

// serveConn syncs and serves sessions on conn until it closes.
func (g *guest) serveConn(conn net.Conn) {
	if g.hang {
		<-g.p.done
		return
	}
	pc := port{Conn: conn, g: g}
	for {
		if err := agentproto.GuestSync(pc, g.hello); err != nil {
			return
		}
		quiet := g.session(pc)
		_ = conn.SetReadDeadline(time.Time{})
		if quiet != "" {
			if _, err := conn.Write([]byte(agentproto.QuietMagic + quiet + "\n")); err != nil {
				return
			}
		}
	}
}

// session serves one yamux session on conn; it returns the nonce of the
// detach that ended it, if one did.
func (g *guest) session(conn port) string {
	sess, err := yamux.Server(conn, agentproto.Config())
	if err != nil {
		return ""
	}
	detach := make(chan string, 1)
	g.mu.Lock()
	g.kick = func(nonce string) {
		select {
		case detach <- nonce:
		default:
		}
	}
	g.mu.Unlock()
	quiet := make(chan string, 1)
	go func() {
		n := ""
		select {
		case n = <-detach:
		case <-sess.CloseChan():
		case <-g.p.done:
		}
		sess.Close() // waits for yamux's reader to stop
		quiet <- n
	}()
	var handlers sync.WaitGroup
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		handlers.Go(func() { g.handle(st) })
	}
	sess.Close()
	n := <-quiet
	// What the host sent before the session ended is read (a stream's
	// frames outlive its session) before the guest can be saved.
	handlers.Wait()
	g.mu.Lock()
	g.kick = nil
	g.mu.Unlock()
	return n
}

// hello answers a hello, on the sync line or on a stream. The entropy it
// brings is kept as the real agent mixes it into its RNG: a line of hex
// appended to SeedsPath, for tests to read.
func (g *guest) hello(req agentproto.Request) agentproto.Hello {
	if g.enter() {
		f := g.st.Files[SeedsPath]
		if f == nil {
			f = &file{Mode: 0o644}
			g.st.Files[SeedsPath] = f
		}
		f.Data = append(f.Data, hex.EncodeToString(req.Seed)+"\n"...)
		f.ModTime = time.Now().UTC()
		g.mu.Unlock()
	}
	return agentproto.Hello{Kernel: "fake", Version: "fake", UptimeMillis: time.Since(g.booted).Milliseconds(),
		WallUnixNano: time.Now().UnixNano()}
}

func respond(w io.Writer, r agentproto.Response) {
	_ = agentproto.WriteJSON(w, agentproto.FrameResponse, r)
}

func respondErr(w io.Writer, code string, err error) {
	respond(w, agentproto.Response{Code: code, Error: err.Error()})
}

func (g *guest) handle(st *yamux.Stream) {
	defer st.Close()
	var req agentproto.Request
	if err := agentproto.ReadJSON(st, agentproto.FrameRequest, &req); err != nil {
		return
	}
	switch req.Op {
	case agentproto.OpHello:
		h := g.hello(req)
		respond(st, agentproto.Response{Hello: &h})
	case agentproto.OpDetach:
		if !g.running() {
			return
		}
		respond(st, agentproto.Response{})
		g.mu.Lock()
		kick := g.kick
		g.mu.Unlock()
		if kick != nil {
			kick(req.Nonce)
		}
	case agentproto.OpListen:
		g.listen(st)
	case agentproto.OpRestored:
		b, err := json.Marshal(req.Restored)
		if err != nil || req.Restored == nil {
			respondErr(st, agentproto.CodeInvalid, errors.New("restored: from what?"))
			return
		}
		if !g.enter() {
			return
		}
		g.st.Files[RestoredPath] = &file{Data: b, Mode: 0o644, ModTime: time.Now().UTC()}
		g.mu.Unlock()
		respond(st, agentproto.Response{})
	case agentproto.OpExec:
		g.exec(st, req)
	case agentproto.OpAttach:
		if !g.enter() {
			return
		}
		c := g.commands[req.PID]
		if c == nil {
			g.mu.Unlock()
			respondErr(st, agentproto.CodeNotFound, fmt.Errorf("attach: no command with pid %d", req.PID))
			return
		}
		g.attach(st, c, req.Offsets)
	case agentproto.OpRead:
		g.read(st, req)
	case agentproto.OpWrite:
		g.write(st, req)
	case agentproto.OpWatch:
		g.watch(st, req)
	case agentproto.OpStat, agentproto.OpList, agentproto.OpMkdir, agentproto.OpRemove:
		if !g.enter() {
			return
		}
		resp := g.fileOp(req)
		respond(st, resp)
		g.mu.Unlock()
	default:
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("op %q: not supported by the fake guest", req.Op))
	}
}

// listen answers the host's listen stream and reads its replies until it
// ends. The fake guest sends no requests on it.
func (g *guest) listen(st *yamux.Stream) {
	if !g.running() {
		return
	}
	respond(st, agentproto.Response{})
	for {
		var r agentproto.GuestReply
		if err := agentproto.ReadJSON(st, agentproto.FrameResponse, &r); err != nil {
			return
		}
	}
}

// frameWriter serializes frames to one stream.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) frame(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return agentproto.WriteFrame(f.w, typ, p)
}

func (f *frameWriter) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return f.frame(typ, b)
}

// emit keeps a command's output in its log and sends it to its stream, if
// one is attached. Called with g.mu held.
func (c *command) emit(typ byte, data []byte) {
	end := c.Out.Write(typ, data)
	if c.sink != nil {
		if c.sink.frame(typ, data) == nil {
			c.Out.Sent(typ, end)
			return
		}
		c.sink = nil
	}
}

// finish ends a command: its exit goes to the attached stream, if any, and
// is kept until the host acknowledges it. Called with g.mu held.
func (g *guest) finish(c *command, exit agentproto.Exit) {
	g.st.Exits++
	c.Exit, c.Ended = &exit, g.st.Exits
	if c.sink != nil && c.sink.json(agentproto.FrameExit, exit) == nil {
		c.exitTo = c.sink
	}
	c.sink = nil
	var ended []*command
	for _, o := range g.commands {
		if o.Exit != nil {
			ended = append(ended, o)
		}
	}
	if len(ended) <= agentproto.KeptExits {
		return
	}
	sort.Slice(ended, func(i, j int) bool { return ended[i].Ended < ended[j].Ended })
	for _, o := range ended[:len(ended)-agentproto.KeptExits] {
		delete(g.commands, o.PID)
	}
}

func (g *guest) exec(st *yamux.Stream, req agentproto.Request) {
	x := req.Exec
	if x == nil || len(x.Argv) == 0 {
		respondErr(st, agentproto.CodeInvalid, errors.New("exec: empty argv"))
		return
	}
	argv := x.Argv
	if len(argv) == 3 && argv[0] == "sh" && argv[1] == "-c" {
		argv = strings.Fields(argv[2])
		if len(argv) == 0 {
			argv = []string{"true"}
		}
	}
	switch argv[0] {
	case "true", "false", "exit", "echo", "env", "cat", "touch", "count":
	default:
		respondErr(st, agentproto.CodeNotFound, fmt.Errorf("exec: %s: executable file not found in the fake guest", argv[0]))
		return
	}
	if !g.enter() {
		return
	}
	c := &command{PID: g.st.NextPID, Argv: argv}
	g.st.NextPID++
	g.commands[c.PID] = c
	if exit, done := g.runBuiltin(c, x.Env); done {
		g.finish(c, exit)
	} else if c.Argv[0] == "count" {
		go g.count(c)
	}
	g.attach(st, c, &agentproto.Offsets{})
}

// count prints c's numbers while the guest runs, until c ends.
func (g *guest) count(c *command) {
	for {
		time.Sleep(time.Millisecond)
		if !g.enter() {
			return
		}
		if c.Exit != nil || g.commands[c.PID] != c {
			g.mu.Unlock()
			return
		}
		c.Count++
		c.emit(agentproto.FrameStdout, []byte(strconv.Itoa(c.Count)+"\n"))
		g.mu.Unlock()
	}
}

// runBuiltin runs a command that ends at once, its output kept in its
// log; done is false for one that runs on (cat of stdin, count). Called
// with g.mu held.
func (g *guest) runBuiltin(c *command, env []string) (exit agentproto.Exit, done bool) {
	args := c.Argv[1:]
	switch c.Argv[0] {
	case "true":
	case "false":
		exit.Code = 1
	case "exit":
		if len(args) > 0 {
			exit.Code, _ = strconv.Atoi(args[0])
		}
	case "echo":
		c.emit(agentproto.FrameStdout, []byte(strings.Join(args, " ")+"\n"))
	case "env":
		env = slices.Sorted(slices.Values(env))
		for _, e := range env {
			c.emit(agentproto.FrameStdout, []byte(e+"\n"))
		}
	case "touch":
		for _, a := range args {
			p, err := cleanPath(a)
			if err == nil && g.st.Files[p] == nil {
				err = g.mkdirAll(path.Dir(p))
			}
			if err != nil {
				c.emit(agentproto.FrameStderr, []byte("touch: "+err.Error()+"\n"))
				exit.Code = 1
				continue
			}
			if g.st.Files[p] == nil {
				g.notify(p, agentproto.WatchCreate)
				g.st.Files[p] = &file{Mode: 0o644, ModTime: time.Now().UTC()}
			}
		}
	case "count":
		return exit, false
	case "cat":
		if len(args) == 0 {
			return exit, false
		}
		for _, a := range args {
			f := g.st.Files[path.Clean(a)]
			if f == nil || f.Dir || !path.IsAbs(a) {
				c.emit(agentproto.FrameStderr, []byte("cat: "+a+": No such file or directory\n"))
				exit.Code = 1
				continue
			}
			c.emit(agentproto.FrameStdout, f.Data)
		}
	}
	return exit, true
}

// attach serves one stream for c: its PID, its output from the host's
// offsets (from; nil: what no stream took), then its output and input
// until the host acknowledges the exit or the stream ends. Called with
// g.mu held; it releases it.
func (g *guest) attach(st io.ReadWriter, c *command, from *agentproto.Offsets) {
	fw := &frameWriter{w: st}
	replay, lost, err := c.Out.Replay(from)
	if err != nil {
		g.mu.Unlock()
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("attach: pid %d: %w", c.PID, err))
		return
	}
	resp := agentproto.Response{PID: c.PID}
	if lost != (agentproto.Offsets{}) {
		resp.Lost = &lost
	}
	if fw.json(agentproto.FrameResponse, resp) != nil {
		g.mu.Unlock()
		return
	}
	for _, r := range replay {
		if fw.frame(r.Typ, r.Data) != nil {
			g.mu.Unlock()
			return
		}
		c.Out.Sent(r.Typ, r.End)
	}
	if c.Exit != nil {
		if fw.json(agentproto.FrameExit, *c.Exit) != nil {
			g.mu.Unlock()
			return
		}
		c.exitTo = fw
	} else {
		c.sink = fw
	}
	g.mu.Unlock()
	buf := make([]byte, 0, 64<<10)
	for {
		typ, payload, err := agentproto.ReadFrame(st, buf)
		if err != nil {
			break
		}
		if !g.enter() {
			return
		}
		switch {
		case c.exitTo == fw: // ended: only its ack is read
			if typ == agentproto.FrameExitAck {
				delete(g.commands, c.PID)
				g.mu.Unlock()
				return
			}
		case c.sink != fw: // attached elsewhere meanwhile
			g.mu.Unlock()
			return
		case typ == agentproto.FrameStdin:
			if c.Argv[0] == "cat" {
				c.emit(agentproto.FrameStdout, payload)
			}
		case typ == agentproto.FrameStdinEOF:
			g.finish(c, agentproto.Exit{})
		case typ == agentproto.FrameSignal && len(payload) == 1:
			sig := int(payload[0])
			g.finish(c, agentproto.Exit{Code: 128 + sig, Signal: sig})
		}
		g.mu.Unlock()
	}
	// The stream ended first: the command runs on, or its exit waits for
	// the next attach.
	g.mu.Lock()
	if c.sink == fw {
		c.sink = nil
	}
	g.mu.Unlock()
}

// cleanPath checks a request's path: absolute, cleaned.
func cleanPath(p string) (string, error) {
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("path %q: not absolute", p)
	}
	return path.Clean(p), nil
}

func info(name string, f *file) *agentproto.FileInfo {
	return &agentproto.FileInfo{Name: name, Size: int64(len(f.Data)), Mode: f.Mode, IsDir: f.Dir, ModTime: f.ModTime}
}

// fileOp runs stat, list, mkdir or remove. Called with g.mu held.
func (g *guest) fileOp(req agentproto.Request) agentproto.Response {
	p, err := cleanPath(req.Path)
	if err != nil {
		return agentproto.Response{Code: agentproto.CodeInvalid, Error: err.Error()}
	}
	files := g.st.Files
	missing := agentproto.Response{Code: agentproto.CodeNotFound, Error: fmt.Sprintf("%s %s: no such file or directory", req.Op, p)}
	switch req.Op {
	case agentproto.OpStat:
		f := files[p]
		if f == nil {
			return missing
		}
		return agentproto.Response{Info: info(path.Base(p), f)}
	case agentproto.OpList:
		f := files[p]
		if f == nil {
			return missing
		}
		if !f.Dir {
			return agentproto.Response{Code: agentproto.CodeInvalid, Error: fmt.Sprintf("list %s: not a directory", p)}
		}
		out := []agentproto.FileInfo{}
		for q, f := range files {
			if q != "/" && path.Dir(q) == p {
				out = append(out, *info(path.Base(q), f))
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return agentproto.Response{Files: out}
	case agentproto.OpMkdir:
		if err := g.mkdirAll(p); err != nil {
			return agentproto.Response{Code: agentproto.CodeInvalid, Error: err.Error()}
		}
		return agentproto.Response{}
	default: // remove
		if p == "/" {
			return agentproto.Response{Code: agentproto.CodeInvalid, Error: "remove /: refused"}
		}
		if files[p] == nil {
			return missing
		}
		for q := range files {
			if q == p || strings.HasPrefix(q, p+"/") {
				delete(files, q)
				g.notify(q, agentproto.WatchRemove)
			}
		}
		return agentproto.Response{}
	}
}

// mkdirAll makes p and its parents. Called with g.mu held.
func (g *guest) mkdirAll(p string) error {
	if f := g.st.Files[p]; f != nil {
		if !f.Dir {
			return fmt.Errorf("mkdir %s: not a directory", p)
		}
		return nil
	}
	if err := g.mkdirAll(path.Dir(p)); err != nil {
		return err
	}
	g.st.Files[p] = &file{Dir: true, Mode: 0o755, ModTime: time.Now().UTC()}
	g.notify(p, agentproto.WatchCreate)
	return nil
}

func (g *guest) read(st *yamux.Stream, req agentproto.Request) {
	p, err := cleanPath(req.Path)
	if err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if !g.enter() {
		return
	}
	f := g.st.Files[p]
	var data []byte
	var fi *agentproto.FileInfo
	if f != nil {
		data, fi = f.Data, info(path.Base(p), f) // never changed in place: a write replaces the file
	}
	g.mu.Unlock()
	switch {
	case f == nil:
		respondErr(st, agentproto.CodeNotFound, fmt.Errorf("read %s: no such file or directory", p))
		return
	case f.Dir:
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("read %s: not a regular file", p))
		return
	}
	respond(st, agentproto.Response{Info: fi})
	if _, err := (agentproto.DataWriter{W: st, Typ: agentproto.FrameData}).Write(data); err != nil {
		return
	}
	_ = agentproto.WriteFrame(st, agentproto.FrameEOF, nil)
}

func (g *guest) write(st *yamux.Stream, req agentproto.Request) {
	// The data frames always follow: read them all, even to refuse.
	data, rerr := io.ReadAll(&agentproto.DataReader{R: st})
	p, err := cleanPath(req.Path)
	if err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	if rerr != nil {
		return // the stream broke: no answer reaches the host anyway
	}
	if !g.enter() {
		return
	}
	defer g.mu.Unlock()
	if f := g.st.Files[p]; f != nil && f.Dir {
		respondErr(st, agentproto.CodeInvalid, fmt.Errorf("write %s: is a directory", p))
		return
	}
	if err := g.mkdirAll(path.Dir(p)); err != nil {
		respondErr(st, agentproto.CodeInvalid, err)
		return
	}
	mode := req.Mode & 0o777
	if mode == 0 {
		mode = 0o644
	}
	if g.st.Files[p] == nil {
		g.notify(p, agentproto.WatchCreate)
	}
	g.st.Files[p] = &file{Data: data, Mode: mode, ModTime: time.Now().UTC()}
	g.notify(p, agentproto.WatchWrite)
	respond(st, agentproto.Response{})
}
