package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// Prefix is the path under which Handler serves a driver; every route
// named below is under it.
const Prefix = "/node/v1/vmm/"

// Routes, relative to Prefix. A route marked "call" upgrades to a call
// stream (see the package doc); "agent" upgrades to the guest agent's
// byte stream.
const (
	pathInfo       = "info"              // GET → infoResp
	pathBoot       = "boot"              // POST bootReq → vmInfo
	pathAdopt      = "adopt"             // POST adoptReq → vmInfo
	pathKillVMs    = "kill"              // call killReq; callbacks "match" → killResp
	pathSweep      = "sweep"             // call killReq; callbacks "keep" → killResp
	pathPrewarm    = "prewarm"           // POST prewarmReq
	pathOverlay    = "disks/overlay"     // POST overlayReq
	pathRebase     = "disks/rebase"      // POST rebaseReq
	pathFlatten    = "disks/flatten"     // POST flattenReq
	pathBacking    = "disks/backing"     // POST backingReq → backingResp
	pathDiff       = "disks/diff"        // POST diffReq
	pathRaw        = "disks/raw"         // POST rawReq
	pathRestore    = "restore"           // call restoreReq; callbacks "started", "before_load", "before_run" → restoreResp
	pathAgent      = "vms/%s/agent"      // agent upgrade
	pathStop       = "vms/%s/stop"       // POST stopReq
	pathRelease    = "vms/%s/release"    // POST
	pathDone       = "vms/%s/done"       // GET: answers once the VMM process exited
	pathConsole    = "vms/%s/console"    // GET → consoleResp
	pathDiagnose   = "vms/%s/diagnose"   // GET → diagnoseResp
	pathStatus     = "vms/%s/status"     // GET → statusResp
	pathResume     = "vms/%s/resume"     // POST
	pathSave       = "vms/%s/save"       // POST saveReq → vmm.SaveStats
	pathCheckpoint = "vms/%s/checkpoint" // call checkpointReq; callback "while_paused" → checkpointResp
	pathDisk       = "vms/%s/disk"       // GET → diskResp
	pathFreeze     = "vms/%s/freeze"     // POST
	pathThaw       = "vms/%s/thaw"       // POST
)

// Upgrade protocols, in the Upgrade header.
const (
	protoCall  = "cove-vmm-call"
	protoAgent = "cove-vmm-agent"
)

// MaxBody bounds a request or answer body, and each message of a call
// stream: none carries more than paths, a handle and a few numbers.
const MaxBody = 1 << 20

// wireSpec is vmm.Spec on the wire: the hooks travel as callbacks of a
// call stream instead.
type wireSpec struct {
	ID        string `json:"id"`
	Dir       string `json:"dir"`
	Kernel    string `json:"kernel"`
	Initrd    string `json:"initrd,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	Disk      string `json:"disk"`
	MemoryMiB int    `json:"memory_mib"`
	CPUs      int    `json:"cpus"`
}

func toWire(s vmm.Spec) wireSpec {
	return wireSpec{ID: s.ID, Dir: s.Dir, Kernel: s.Kernel, Initrd: s.Initrd, Cmdline: s.Cmdline,
		Disk: s.Disk, MemoryMiB: s.MemoryMiB, CPUs: s.CPUs}
}

func (s wireSpec) spec() vmm.Spec {
	return vmm.Spec{ID: s.ID, Dir: s.Dir, Kernel: s.Kernel, Initrd: s.Initrd, Cmdline: s.Cmdline,
		Disk: s.Disk, MemoryMiB: s.MemoryMiB, CPUs: s.CPUs}
}

// check refuses a spec no driver could boot.
func (s wireSpec) check() error {
	switch {
	case s.ID == "":
		return invalid("spec: no id")
	case s.MemoryMiB <= 0 || s.CPUs <= 0:
		return invalid("spec: memory_mib and cpus must be positive")
	}
	return absolute(map[string]string{"spec.dir": s.Dir, "spec.kernel": s.Kernel, "spec.disk": s.Disk})
}

type infoResp struct {
	Accel        string `json:"accel"`
	Snapshotter  bool   `json:"snapshotter"`
	Checkpointer bool   `json:"checkpointer"`
}

// vmInfo names a VM the node holds: Ref is the node's name for it in the
// vms/ routes (a handle is the driver's, and may be long).
type vmInfo struct {
	Ref    string `json:"ref"`
	Handle []byte `json:"handle"`
	PID    int    `json:"pid"`
}

type bootReq struct {
	Spec wireSpec `json:"spec"`
}

type adoptReq struct {
	Handle []byte `json:"handle"`
}

type killReq struct {
	DirRoot string `json:"dir_root"`
}

type prewarmReq struct {
	MemoryMiB int `json:"memory_mib"`
	CPUs      int `json:"cpus"`
}

type killResp struct {
	PIDs []int `json:"pids"`
}

type overlayReq struct {
	Path          string `json:"path"`
	Backing       string `json:"backing"`
	BackingFormat string `json:"backing_format"`
}

type rebaseReq struct {
	Path          string `json:"path"`
	Backing       string `json:"backing"`
	BackingFormat string `json:"backing_format"`
	Copy          bool   `json:"copy"`
}

type flattenReq struct {
	Src        string `json:"src"`
	Dst        string `json:"dst"`
	Base       string `json:"base"`
	BaseFormat string `json:"base_format"`
}

type diffReq struct {
	Path          string `json:"path"`
	Src           string `json:"src"`
	Backing       string `json:"backing"`
	BackingFormat string `json:"backing_format"`
}

type rawReq struct {
	Src       string `json:"src"`
	SrcFormat string `json:"src_format"`
	Dst       string `json:"dst"`
}

type backingReq struct {
	Path string `json:"path"`
}

type backingResp struct {
	File   string `json:"file"`
	Format string `json:"format"`
}

// restoreReq says which of the spec's hooks the caller set: only those
// are called back.
type restoreReq struct {
	Spec       wireSpec `json:"spec"`
	State      string   `json:"state"`
	Started    bool     `json:"started,omitempty"`
	BeforeLoad bool     `json:"before_load,omitempty"`
	BeforeRun  bool     `json:"before_run,omitempty"`
}

type restoreResp struct {
	VM    vmInfo           `json:"vm"`
	Stats vmm.RestoreStats `json:"stats"`
}

// stopReq carries the caller's deadline as a grace period: the node stops
// gracefully within it, then by force, even if the connection drops.
type stopReq struct {
	GraceMS int64 `json:"grace_ms,omitempty"`
}

type consoleResp struct {
	Tail string `json:"tail"`
}

type diagnoseResp struct {
	Line string `json:"line"`
}

type statusResp struct {
	Status vmm.Status `json:"status"`
}

type saveReq struct {
	State string `json:"state"`
}

type checkpointReq struct {
	State       string `json:"state"`
	NewDisk     string `json:"new_disk"`
	WhilePaused bool   `json:"while_paused,omitempty"`
}

type checkpointResp struct {
	Stats  vmm.CheckpointStats `json:"stats"`
	Handle []byte              `json:"handle"`
}

type diskResp struct {
	Disk string `json:"disk"`
}

// callMsg is one message of a call stream. The node sends callbacks
// (Call set) and, last, the outcome (Done set); the caller answers each
// callback with Reply set.
type callMsg struct {
	Call   string          `json:"call,omitempty"`   // node → caller: a callback's name
	Handle []byte          `json:"handle,omitempty"` // "started": the VM's handle
	ID     string          `json:"id,omitempty"`     // "match": the VM id
	Reply  bool            `json:"reply,omitempty"`  // caller → node: the answer to the last callback
	Match  bool            `json:"match,omitempty"`  // the answer to "match" or "keep"
	Done   bool            `json:"done,omitempty"`   // node → caller: the call's outcome
	Result json.RawMessage `json:"result,omitempty"`
	Error  *wireError      `json:"error,omitempty"` // a failed callback (Reply), or call (Done)
}

// Callbacks of a call stream.
const (
	cbStarted     = "started"
	cbBeforeLoad  = "before_load"
	cbBeforeRun   = "before_run"
	cbMatch       = "match"
	cbKeep        = "keep"
	cbWhilePaused = "while_paused"
)

// wireError is an error on the wire: the API's error envelope's code and
// message, with the sentinel errors it wraps named in Marks so that the
// other side's errors.Is still finds them.
type wireError struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Marks   []string `json:"marks,omitempty"`
}

type errorResp struct {
	Error wireError `json:"error"`
}

// ErrUnknownVM marks a call about a VM the node does not hold (never
// booted or adopted there, released, or gone a while ago).
var ErrUnknownVM = errors.New("the node holds no such VM")

// CodeUnimplemented is the code of a call the node's driver cannot make
// (not a vmm.Snapshotter, say): status 501. Its error wraps
// errors.ErrUnsupported.
const CodeUnimplemented = "unimplemented"

// marks are the sentinel errors that cross the wire by name.
var marks = []struct {
	name string
	err  error
}{
	{"not_qcow2", vmm.ErrNotQcow2},
	{"guest_stalled", vmm.ErrGuestStalled},
	{"not_run", vmm.ErrNotRun},
	{"unknown_vm", ErrUnknownVM},
	{"unsupported", errors.ErrUnsupported},
	{"canceled", context.Canceled},
	{"deadline_exceeded", context.DeadlineExceeded},
}

// encodeError is err on the wire.
func encodeError(err error) *wireError {
	w := &wireError{Code: api.CodeOf(err), Message: err.Error()}
	for _, m := range marks {
		if errors.Is(err, m.err) {
			w.Marks = append(w.Marks, m.name)
		}
	}
	if w.Code == api.CodeInternal && errors.Is(err, ErrUnknownVM) {
		w.Code = api.CodeNotFound
	}
	if w.Code == api.CodeInternal && errors.Is(err, errors.ErrUnsupported) {
		w.Code = CodeUnimplemented
	}
	return w
}

// status is the HTTP status of an error's code.
func (w *wireError) status() int {
	if w.Code == CodeUnimplemented {
		return http.StatusNotImplemented
	}
	return api.Status(w.Code)
}

// Error is an error the node answered: Code is the API's error code
// (invalid_argument for bad input, not_found for an unknown VM,
// unimplemented, internal for the driver's own failures), and errors.Is
// finds the sentinel errors the node's error wrapped (vmm.ErrNotQcow2,
// context.Canceled, ErrUnknownVM...) and any error the caller's own
// callbacks returned during the call.
type Error struct {
	Code    string
	Message string
	wrapped []error
}

func (e *Error) Error() string   { return e.Message }
func (e *Error) Unwrap() []error { return e.wrapped }

// decode is the error w describes, wrapping also extra.
func (w *wireError) decode(extra ...error) *Error {
	e := &Error{Code: w.Code, Message: w.Message}
	for _, name := range w.Marks {
		for _, m := range marks {
			if m.name == name {
				e.wrapped = append(e.wrapped, m.err)
			}
		}
	}
	e.wrapped = append(e.wrapped, extra...)
	return e
}

// coded is err with an API code: its message is code's, and errors.Is
// finds what err wraps.
type coded struct {
	code *api.Error
	err  error
}

func (c coded) Error() string   { return c.code.Message }
func (c coded) Unwrap() []error { return []error{c.code, c.err} }

func invalid(format string, args ...any) error {
	return api.Errorf(api.CodeInvalid, format, args...)
}

// absolute checks that each named path is set and absolute: the node
// resolves no path against a working directory the caller cannot see.
func absolute(paths map[string]string) error {
	for name, p := range paths {
		if p == "" || !strings.HasPrefix(p, "/") {
			return invalid("%s: %q is not an absolute path", name, p)
		}
	}
	return nil
}

// answerError reads a failed answer's error.
func answerError(resp *http.Response) *Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	var e errorResp
	if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
		return e.Error.decode()
	}
	return &Error{Code: api.CodeInternal, Message: fmt.Sprintf("remote vmm: %s: %s", resp.Status, strings.TrimSpace(string(b)))}
}
