// Package api holds cove's public REST types, its OpenAPI document and the Go
// client that the CLI uses. It depends on nothing inside cove.
package api

import "time"

// Session states. A session moves creating → running → stopping → (deleted),
// or to failed from any state when its VM dies or never answers.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateFailed   = "failed"
)

// Session is one microVM and the agent inside it.
type Session struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Image     string            `json:"image"`
	MemoryMiB int               `json:"memory_mib"`
	CPUs      int               `json:"cpus"`
	Env       map[string]string `json:"env,omitempty"`
	Accel     string            `json:"accel,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// Error says why a session is failed.
	Error string `json:"error,omitempty"`
	// BootMillis is how long the VM took from spawn to the agent's first answer.
	BootMillis int64 `json:"boot_ms,omitempty"`
}

// CreateSessionRequest is the body of POST /v1/sessions. Zero fields take
// the server's defaults (image "tiny", 512 MiB, 1 CPU).
type CreateSessionRequest struct {
	Image     string            `json:"image,omitempty"`
	MemoryMiB int               `json:"memory_mib,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// BootTimeout is a Go duration ("60s"); the default is the server's.
	BootTimeout string `json:"boot_timeout,omitempty"`
}

// ExecRequest is the body of POST /v1/sessions/{id}/exec and the first
// message of the exec WebSocket.
type ExecRequest struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
	// Stdin is given to the command whole, then closed (buffered and NDJSON
	// forms). The WebSocket form streams stdin instead.
	Stdin []byte `json:"stdin,omitempty"`
	// Timeout is a Go duration; the command is killed when it passes.
	Timeout string `json:"timeout,omitempty"`
	TTY     bool   `json:"tty,omitempty"`
	Rows    int    `json:"rows,omitempty"`
	Cols    int    `json:"cols,omitempty"`
}

// ExecResult is the answer of the buffered exec form.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
	// Signal names the signal that ended the command, if one did.
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Truncated is set when output passed the buffered form's limit.
	Truncated  bool  `json:"truncated,omitempty"`
	DurationMs int64 `json:"duration_ms"`
}

// ExecEvent is one line of the NDJSON exec stream and one message of the
// exec WebSocket (both directions).
//
// Server → client types: "stdout", "stderr" (Data), "exit" (ExitCode,
// Signal, TimedOut), "error" (Error).
// Client → server types (WebSocket only): "stdin" (Data), "stdin_close",
// "resize" (Rows, Cols), "signal" (Signal, e.g. "INT").
type ExecEvent struct {
	Type     string     `json:"type"`
	Data     []byte     `json:"data,omitempty"`
	ExitCode int        `json:"exit_code,omitempty"`
	Signal   string     `json:"signal,omitempty"`
	TimedOut bool       `json:"timed_out,omitempty"`
	Rows     int        `json:"rows,omitempty"`
	Cols     int        `json:"cols,omitempty"`
	Error    *ErrorBody `json:"error,omitempty"`
}

// Exec event types.
const (
	EventStdout     = "stdout"
	EventStderr     = "stderr"
	EventExit       = "exit"
	EventError      = "error"
	EventStdin      = "stdin"
	EventStdinClose = "stdin_close"
	EventResize     = "resize"
	EventSignal     = "signal"
)

// FileInfo describes one path in a guest.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode"` // permission bits
	IsDir   bool      `json:"is_dir"`
	Symlink bool      `json:"symlink,omitempty"`
	ModTime time.Time `json:"mod_time"`
}

// Image is a read-only base disk that sessions boot from.
type Image struct {
	Name string `json:"name"`
	// Key is the hash of everything the image was built from; a build with
	// the same inputs reuses the cached image.
	Key       string    `json:"key"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	BuildMs   int64     `json:"build_ms,omitempty"`
}

// ImageBuildEvent is one line of the NDJSON progress stream of
// POST /v1/images/{name}/build. The last line has Type "done" (Image set) or
// "error" (Error set).
type ImageBuildEvent struct {
	Type    string     `json:"type"` // "progress", "done", "error"
	Message string     `json:"message,omitempty"`
	Image   *Image     `json:"image,omitempty"`
	Error   *ErrorBody `json:"error,omitempty"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the inside of ErrorResponse.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	Code int
	// Signal names the signal that killed the command ("KILL"), if one did.
	Signal   string
	TimedOut bool
}
