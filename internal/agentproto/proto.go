// Package agentproto is the host⇄guest protocol spoken between the node
// (host) and cove-agent (guest) over one virtio-serial port.
//
// The port carries a yamux session: the host is the yamux client and opens
// one stream per request; the guest accepts. Every stream starts with a
// FrameRequest from the host. What follows depends on the operation:
//
//	hello, stat, list, mkdir, remove:  guest → FrameResponse (the hello also
//	          rides on the sync line that starts a connection: see SyncMagic)
//	exec:     guest → FrameResponse (started or error); then guest → FrameStdout/
//	          FrameStderr…, host → FrameStdin/FrameStdinEOF/FrameResize/FrameSignal…;
//	          guest → FrameExit last; host → FrameExitAck once it has the exit
//	attach:   as exec, for a command whose stream ended before its exit was
//	          acknowledged (a park cut it): the guest first replays its output
//	          from the request's Offsets (the bytes of stdout and stderr the
//	          host received, over all the command's streams), then the exit if
//	          the command ended meanwhile
//	read, tar_get: guest → FrameResponse; if ok, guest → FrameData… FrameEOF
//	write, tar_put: host → FrameData… FrameEOF; guest → FrameResponse
//	listen:   guest → FrameResponse; then guest → FrameRequest (a GuestRequest)
//	          whenever a tool in the guest asks the host for something, host →
//	          FrameResponse (a GuestReply) with the answer (a token, a
//	          checkpoint's name) or why it cannot do it; the stream lives as
//	          long as the connection
//	restored: guest → FrameResponse; the request's Restored tells a guest
//	          restored from a checkpoint that a tool asked for (a rollback,
//	          a fork) which of its requests that checkpoint answers (see
//	          Restored). The host sends it before it opens the connection's
//	          listen stream, so a guest whose listen stream was replaced
//	          without one knows that none is coming
//	egress_setup: guest → FrameResponse; the request's Egress says how the
//	          guest reaches the host's egress proxy (see EgressSetup)
//	watch:    guest → FrameResponse (watching, or why not); then guest →
//	          FrameEvents… (JSON []WatchEvent) for as long as the host keeps
//	          the stream open; guest → FrameEOF if the watch ends on the
//	          guest's side (the directory went away). The host ends a watch
//	          by closing the stream. The guest queues at most MaxWatchQueue
//	          events per watch; past that it drops them and says how many
//	          with a WatchOverflow event (see WatchEvent)
//	detach:   guest → FrameResponse, then the guest ends the yamux session and
//	          waits for the next sync (the host says it before a park, so
//	          the frozen guest is ready for the next connection)
//
// A command's output is counted in bytes from its start, per stream. The
// guest keeps the last MaxOutputLog bytes of each stream (OutputLog) whether
// or not a stream is attached, so a re-attach resumes exactly where the
// host's count stopped: a frame the guest sent but a cut kept from the host
// is sent again, one the host got is not. Output older than what is kept
// is gone: the attach's Response.Lost says how much the replay skips. The
// guest keeps an ended command until the host acknowledges its exit
// (FrameExitAck), or until more than KeptExits ended commands wait for
// theirs (the oldest is forgotten). An attach without Offsets (a host from
// before them) replays what no stream took, and a host that never
// acknowledges leaves its ended commands to that bound.
//
// One kind of stream is opened by the guest, not the host: each TCP
// connection a guest program makes to the in-guest egress address
// (EgressAddr) is carried on a stream of its own, which starts with a
// FrameRequest{Op: OpConnect} from the guest and then carries the
// connection's bytes both ways, unframed, to the host's egress proxy. The
// host knows the session from the connection the stream arrives on.
//
// Frames are [type:1][length:4, big endian][payload]. Payloads are bounded
// by MaxFrame: neither side trusts the other's lengths. The package uses the
// standard library only, so the guest binary stays small.
package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// PortName is the virtio-serial port name the guest looks for under
// /sys/class/virtio-ports/*/name.
const PortName = "cove.agent"

// MaxFrame is the largest payload either side accepts.
const MaxFrame = 1 << 20

// ChunkSize is how much data one data frame carries at most when sending.
const ChunkSize = 256 << 10

// Frame types.
const (
	FrameRequest  byte = 1 // JSON Request
	FrameResponse byte = 2 // JSON Response
	FrameStdout   byte = 3
	FrameStderr   byte = 4
	FrameStdin    byte = 5
	FrameStdinEOF byte = 6
	FrameResize   byte = 7 // JSON Size
	FrameSignal   byte = 8 // signal number as one byte
	FrameExit     byte = 9 // JSON Exit
	FrameData     byte = 10
	FrameEOF      byte = 11
	FrameExitAck  byte = 12 // host → guest, empty: the exit arrived, forget the command
	FrameEvents   byte = 13 // guest → host: JSON []WatchEvent
)

// Operations.
const (
	OpHello  = "hello"
	OpExec   = "exec"
	OpAttach = "attach"
	OpDetach = "detach"
	OpListen = "listen"
	OpRead   = "read"
	OpWrite  = "write"
	OpStat   = "stat"
	OpList   = "list"
	OpMkdir  = "mkdir"
	OpRemove = "remove"
	OpTarGet = "tar_get"
	OpTarPut = "tar_put"
	OpWatch  = "watch"

	OpEgressSetup = "egress_setup"
	OpConnect     = "connect" // guest → host: an egress connection (see the package doc)
	// OpResolve, guest → host: a program asked the guest's resolver for
	// Name, and the guest refused it (names are resolved by the egress
	// proxy, on the host); the host records it. The stream carries
	// nothing else.
	OpResolve = "resolve"
	// OpRestored, host → guest: the guest was restored from a checkpoint
	// that one of its tools asked for (see Restored).
	OpRestored = "restored"
)

// EgressAddr is where programs in the guest reach the host's egress proxy:
// the agent listens there once the host has sent OpEgressSetup, and sets
// the proxy environment (HTTP_PROXY…) of every command to it.
const EgressAddr = "127.0.0.1:3128"

// EgressSetup is what the guest needs to use the host's egress proxy: the
// certificate of the CA that signs the proxy's certificates for the hosts
// it intercepts (PEM), which the guest adds to its trust store. It holds
// nothing secret: the CA's key and every credential stay on the host.
type EgressSetup struct {
	CACert []byte `json:"ca_cert"`
}

// Error codes in Response.Code.
const (
	CodeNotFound = "not_found" // path or executable missing
	CodeInvalid  = "invalid"   // bad request (e.g. path is a directory)
	CodeExists   = "exists"
	CodeNoSpace  = "no_space" // the guest's file system is full (ENOSPC, EDQUOT)
	CodeInternal = "internal"
)

// Request is the first frame of every stream.
type Request struct {
	Op string `json:"op"`
	// hello: the host's wall clock, which the guest adopts, and fresh
	// entropy the guest mixes into its RNG and reseeds from (clones of one
	// snapshot must not share random state).
	TimeUnixNano int64  `json:"time_unix_nano,omitempty"`
	Seed         []byte `json:"seed,omitempty"`
	// hello: a step the guest adds to its clock, sent when the clock
	// set by the hello before lagged (see Client.fixClock).
	ClockStepNanos int64 `json:"clock_step_ns,omitempty"`

	Exec *Exec `json:"exec,omitempty"`

	Path string `json:"path,omitempty"`
	Mode uint32 `json:"mode,omitempty"`

	// attach: the PID of a command started by exec.
	PID int `json:"pid,omitempty"`
	// attach: how much of the command's output the host has received, over
	// all its streams; the guest replays from there. Without it the guest
	// replays the output no stream took (what agents before it did).
	Offsets *Offsets `json:"offsets,omitempty"`

	// watch: Recursive watches the subdirectories of Path too (those
	// made later included); Entries asks for each event's FileInfo
	// where the entry still exists.
	Recursive bool `json:"recursive,omitempty"`
	Entries   bool `json:"entries,omitempty"`

	// egress_setup: how the guest reaches the egress proxy.
	Egress *EgressSetup `json:"egress,omitempty"`
	// resolve: the name a program in the guest tried to resolve.
	Name string `json:"name,omitempty"`

	// restored: what the guest was restored from.
	Restored *Restored `json:"restored,omitempty"`

	// detach: when set, the guest writes QuietMagic, this nonce and a
	// newline on the port once its session has ended and it waits for the
	// next sync (see Client.Detach).
	Nonce string `json:"nonce,omitempty"`
}

// Exec describes a command to start.
type Exec struct {
	Argv []string `json:"argv"`
	// Env is the complete environment (KEY=VALUE); the guest adds a default
	// PATH, HOME and TERM where missing.
	Env     []string `json:"env,omitempty"`
	Cwd     string   `json:"cwd,omitempty"`
	TTY     bool     `json:"tty,omitempty"`
	Rows    int      `json:"rows,omitempty"`
	Cols    int      `json:"cols,omitempty"`
	Timeout int64    `json:"timeout_ms,omitempty"`
	// User, if set, names the guest user (of the guest's /etc/passwd)
	// the command runs as: the agent sets its uid, gid and groups (of
	// /etc/group) itself, so the guest needs no setpriv or su; HOME,
	// USER and LOGNAME are its own where Env sets none, and it starts
	// in its home where Cwd is empty. A user the guest lacks is
	// CodeNotFound. Empty: root. An agent that predates it ignores it:
	// send it only to one whose Hello has FeatureExecUser.
	User string `json:"user,omitempty"`
}

// GuestRequest is a request from a tool in the guest to the host, sent on
// the listen stream. Its Kind is one of:
//
//   - GuestPark: park this session until an event matches one of Until, or
//     Timeout (a Go duration) passes. A park that succeeds has no reply:
//     the guest is frozen, and the tool's answer is the event that wakes it.
//   - GuestToken: mint the session's identity token for Audience, living
//     TTL (a Go duration; "" for the host's default). The host always
//     replies: the token, or why not. The token exists only in memory: the
//     agent hands it to the tool and keeps no copy.
//   - GuestCheckpoint: checkpoint this session (named Name, or the host's
//     default name if ""). The guest is paused while its machine is
//     saved, this request still unanswered: the host replies once the
//     checkpoint is made (its Checkpoint) or why not. A guest restored
//     from that checkpoint later (a rollback, a fork) has the request
//     unanswered still: the host tells it so with OpRestored.
//   - GuestRollback: roll this session back to its checkpoint Name. The
//     host replies only if it cannot (an unknown name, a parked session:
//     nothing changed); a rollback that succeeds has no reply: this
//     guest is stopped, and the one restored from the checkpoint goes on.
//
// ID is unique among the requests of one guest's memory (a rollback
// restores the count), so a Restored can name the request it answers.
type GuestRequest struct {
	ID       int64    `json:"id"`
	Kind     string   `json:"kind"`
	Until    []string `json:"until,omitempty"`
	Timeout  string   `json:"timeout,omitempty"`
	Audience string   `json:"audience,omitempty"`
	TTL      string   `json:"ttl,omitempty"`
	// Name is a checkpoint's name (checkpoint, rollback).
	Name string `json:"name,omitempty"`
}

// Kinds of GuestRequest.
const (
	GuestPark       = "park"
	GuestToken      = "token"
	GuestCheckpoint = "checkpoint"
	GuestRollback   = "rollback"
)

// GuestReply answers a guest request: Error says why the host could not
// carry it out; a token request that succeeded has its Token, a
// checkpoint request its Checkpoint's name.
type GuestReply struct {
	ID         int64  `json:"id"`
	Error      string `json:"error,omitempty"`
	Token      string `json:"token,omitempty"`
	Checkpoint string `json:"checkpoint,omitempty"`
}

// LogValue keeps the token out of logs.
func (r GuestReply) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("id", r.ID), slog.String("error", r.Error), slog.Bool("token", r.Token != ""),
		slog.String("checkpoint", r.Checkpoint))
}

// Restored tells a guest that it was restored from Checkpoint, a
// checkpoint its GuestCheckpoint request Request asked for (and that the
// guest's memory holds unanswered): by a rollback of its session
// (RestoredRollback), or as a new session forked from Parent's
// (RestoredFork).
type Restored struct {
	Kind       string `json:"kind"`
	Checkpoint string `json:"checkpoint"`
	Request    int64  `json:"request"`
	Parent     string `json:"parent,omitempty"`
}

// Kinds of Restored.
const (
	RestoredRollback = "rollback"
	RestoredFork     = "fork"
)

// Response answers a request.
type Response struct {
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`

	Hello *Hello     `json:"hello,omitempty"`
	Info  *FileInfo  `json:"info,omitempty"`
	Files []FileInfo `json:"files,omitempty"`
	PID   int        `json:"pid,omitempty"`
	// Lost (attach): the output between the request's Offsets and the
	// oldest the guest still kept, which the replay skips; nil if none.
	Lost *Offsets `json:"lost,omitempty"`
}

// Offsets counts bytes of a command's stdout and stderr from its start.
type Offsets struct {
	Stdout int64 `json:"stdout"`
	Stderr int64 `json:"stderr"`
}

// Err returns the response's error, or nil.
func (r *Response) Err() error {
	if r.Error == "" {
		return nil
	}
	return &RemoteError{Code: r.Code, Message: r.Error}
}

// RemoteError is an error reported by the other side.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Hello is what the guest says about itself.
type Hello struct {
	Kernel  string `json:"kernel"` // uname release
	Version string `json:"version"`
	// UptimeMillis is the guest's uptime when it answered.
	UptimeMillis int64 `json:"uptime_ms"`
	// WallUnixNano is the guest's wall clock when it answered, once it
	// had set it; 0 from agents before it.
	WallUnixNano int64 `json:"wall_unix_nano,omitempty"`
	// Features names what the agent does that agents before it ignore
	// (FeatureExecUser), so the host can refuse rather than have them
	// ignored.
	Features []string `json:"features,omitempty"`
}

// FeatureExecUser: the agent runs a command as Exec.User. One without it
// would run it as root.
const FeatureExecUser = "exec-user"

// FileInfo describes a guest path.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode"`
	IsDir   bool      `json:"is_dir"`
	Symlink bool      `json:"symlink,omitempty"`
	ModTime time.Time `json:"mod_time"`
	// UID and GID own the file (0, root, from an agent that predates
	// them).
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
}

// WatchEvent is one change under a watched directory. Name is the
// changed entry's path relative to the watched directory; Op is one of
// the Watch* kinds. A WatchOverflow event names nothing: Dropped events
// were lost before it (the guest's queue was full, or the kernel's).
type WatchEvent struct {
	Name    string    `json:"name,omitempty"`
	Op      string    `json:"op"`
	Info    *FileInfo `json:"info,omitempty"`
	Dropped int64     `json:"dropped,omitempty"`
}

// Kinds of WatchEvent, those of E2B's envd (and fsnotify's): a move into
// the directory is a create, a move out of it a rename.
const (
	WatchCreate   = "create"
	WatchWrite    = "write"
	WatchRemove   = "remove"
	WatchRename   = "rename"
	WatchChmod    = "chmod"
	WatchOverflow = "overflow"
)

// MaxWatchQueue bounds the events one watch holds in the guest while the
// host has not taken them: a directory written faster than the events
// drain costs no more memory than that.
const MaxWatchQueue = 4096

// MaxWatches bounds the watches one guest keeps at a time.
const MaxWatches = 64

// Size is a terminal size.
type Size struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

// Exit says how a command ended.
type Exit struct {
	Code     int    `json:"code"`
	Signal   int    `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ErrFrameTooLarge is returned for a frame whose length passes MaxFrame.
var ErrFrameTooLarge = errors.New("agentproto: frame too large")

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return ErrFrameTooLarge
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if len(payload) == 0 {
		_, err := w.Write(hdr[:])
		return err
	}
	// One write keeps a frame in one yamux data frame where it fits.
	buf := make([]byte, 5+len(payload))
	copy(buf, hdr[:])
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// WriteJSON writes a frame whose payload is v as JSON.
func WriteJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("agentproto: encode frame %d: %w", typ, err)
	}
	return WriteFrame(w, typ, b)
}

// ReadFrame reads one frame into buf (grown as needed) and returns its type
// and payload. The payload aliases buf.
func ReadFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, ErrFrameTooLarge
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// ReadJSON reads one frame, checks its type, and decodes its payload into v.
func ReadJSON(r io.Reader, want byte, v any) error {
	typ, p, err := ReadFrame(r, nil)
	if err != nil {
		return err
	}
	if typ != want {
		return fmt.Errorf("agentproto: got frame type %d, want %d", typ, want)
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("agentproto: decode frame %d: %w", typ, err)
	}
	return nil
}

// DataWriter sends everything written to it as frames of type typ, in
// chunks of at most ChunkSize.
type DataWriter struct {
	W   io.Writer
	Typ byte
}

func (d DataWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), ChunkSize)
		if err := WriteFrame(d.W, d.Typ, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// DataReader reads the payloads of FrameData frames until FrameEOF.
type DataReader struct {
	R   io.Reader
	buf []byte
	cur []byte
	eof bool
}

func (d *DataReader) Read(p []byte) (int, error) {
	for len(d.cur) == 0 {
		if d.eof {
			return 0, io.EOF
		}
		typ, payload, err := ReadFrame(d.R, d.buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if cap(payload) > cap(d.buf) {
			d.buf = payload[:0]
		}
		switch typ {
		case FrameData:
			d.cur = payload
		case FrameEOF:
			d.eof = true
		default:
			return 0, fmt.Errorf("agentproto: unexpected frame type %d in data stream", typ)
		}
	}
	n := copy(p, d.cur)
	d.cur = d.cur[n:]
	return n, nil
}

// ExecSize is the size of the payload of the request frame that starts
// x: what must fit in MaxFrame. JSON escapes some bytes (control and
// invalid UTF-8 bytes, '<', '>', '&') into six, so a size is measured,
// not summed.
func ExecSize(x Exec) int {
	b, err := json.Marshal(Request{Op: OpExec, Exec: &x})
	if err != nil {
		return MaxFrame + 1 // cannot be sent at all
	}
	return len(b)
}
