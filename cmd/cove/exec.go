package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// Exit statuses of "cove exec" besides the guest command's own.
const (
	exitTimedOut = 124 // the command ran past --timeout (as timeout(1))
	exitNotFound = 127 // the command could not be found (as sh(1))
	exitSignal   = 128 // plus the signal number, as sh(1)
)

func newExecCmd(c *cli) *cobra.Command {
	var (
		env     []string
		cwd     string
		user    string
		tty     bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec ID [flags] -- CMD [ARG...]",
		Short: "Run a command in a session",
		Long: `Run a command in a session, streaming stdin to it and its output back as it
comes, and exit with its exit status: 128+N if signal N killed it, 124 if it
ran past --timeout, 127 if it could not be found, 1 if cove itself failed.

With --tty the command gets a terminal: the local one is put in raw mode
(Ctrl-C reaches the command as a byte) and its size follows the local one.
Without --tty, SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to cove are passed
on to the command; a second SIGINT makes cove give up at once.`,
		Args: usageArgs(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, argv, err := splitExecArgs(args, cmd.ArgsLenAtDash())
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			envMap, err := parseEnv(env)
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			if timeout < 0 {
				return usagef(cmd, "--timeout must not be negative")
			}
			req := api.ExecRequest{Argv: argv, Env: envMap, Cwd: cwd, TTY: tty, User: user}
			if timeout > 0 {
				req.Timeout = timeout.String()
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.exec(cmd.Context(), cl, id, req)
		},
	}
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usagef(cmd, "%v (put the command and its flags after --)", err)
	})
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory in the guest")
	f.StringVarP(&user, "user", "u", "", "run as this user of the guest's /etc/passwd (default root)")
	f.BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (e.g. 30s)")
	return cmd
}

// splitExecArgs splits exec's positional arguments into the session id and
// the command. dashAt is cobra's ArgsLenAtDash: the number of arguments
// before "--", or -1 without one. Before a "--" there must be exactly the
// id; without one, the first argument is the id.
func splitExecArgs(args []string, dashAt int) (id string, argv []string, err error) {
	if dashAt > 0 {
		if dashAt != 1 {
			return "", nil, fmt.Errorf("want exactly one session id before --, got %q", args[:dashAt])
		}
		if len(args) == 1 {
			return "", nil, errors.New("no command after --")
		}
		return args[0], args[1:], nil
	}
	if len(args) < 2 {
		return "", nil, errors.New("want a session id and a command")
	}
	return args[0], args[1:], nil
}

// exec runs one command behind the exec WebSocket and returns an
// *exitError carrying the status cove should exit with (nil for 0).
func (c *cli) exec(ctx context.Context, cl *api.Client, id string, req api.ExecRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	in := fileTerminal(c.stdin)
	if req.TTY {
		if rows, cols, ok := terminalSize(c.stdout, c.stdin); ok {
			req.Rows, req.Cols = rows, cols
		}
	}
	conn, err := cl.ExecInteractive(ctx, id, req)
	if err != nil {
		return startFailure(err)
	}
	defer conn.Close()

	if req.TTY && in != nil {
		restore, err := makeRaw(in)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		defer restore()
		stop := followResize(conn, c.stdout, c.stdin)
		defer stop()
	}

	aborted := make(chan struct{})
	stopSignals := forwardSignals(conn, func() { close(aborted); cancel() })
	defer stopSignals()

	go pumpStdin(c.stdin, conn)

	var (
		outMu  sync.Mutex // c.stderr is written by the loop and the watcher
		events atomic.Int64
	)
	stopWatch := watchParked(ctx, cl, id, &events, func(msg string) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintln(c.stderr, msg)
	})
	defer stopWatch()

	for {
		ev, err := conn.Recv()
		events.Add(1)
		if err != nil {
			select {
			case <-aborted:
				return &exitError{code: exitSignal + 2}
			default:
			}
			if errors.Is(err, io.EOF) {
				return errors.New("exec: connection closed before the command exited")
			}
			return err
		}
		switch ev.Type {
		case api.EventStdout:
			c.stdout.Write(ev.Data)
		case api.EventStderr:
			outMu.Lock()
			c.stderr.Write(ev.Data)
			outMu.Unlock()
		case api.EventExit:
			if code := exitCode(ev); code != 0 {
				return &exitError{code: code}
			}
			return nil
		case api.EventError:
			if ev.Error == nil {
				return startFailure(errors.New("exec: server sent an error event without an error"))
			}
			return startFailure(&api.Error{Code: ev.Error.Code, Message: ev.Error.Message})
		}
	}
}

// parkCheck is how long a command's stream stays silent before exec asks
// whether its session was parked, and how often it asks again while the
// silence lasts.
const parkCheck = 5 * time.Second

// watchParked tells the user, through say, when the command's stream has
// been silent because its session is parked (or parking): the command is
// paused in the frozen guest, not hung, and goes on when the session wakes.
// events counts what the stream delivered; the session's state is only
// asked for while it does not move. It says so once per park.
func watchParked(ctx context.Context, cl *api.Client, id string, events *atomic.Int64, say func(string)) (stop func()) {
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(parkCheck)
		defer tick.Stop()
		last, told := events.Load(), false
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if n := events.Load(); n != last {
				last, told = n, false
				continue
			}
			s, err := cl.GetSession(ctx, id)
			if err != nil {
				continue
			}
			switch s.State {
			case api.StateParking, api.StateParked:
				if !told {
					say(fmt.Sprintf("cove: session %s is %s: the command is paused until the session wakes (cove wake %s)", id, s.State, id))
					told = true
				}
			case api.StateRunning:
				told = false
			}
		}
	}()
	return func() { close(done) }
}

// eventSender is the half of *api.ExecConn that pumps use.
type eventSender interface {
	Send(api.ExecEvent) error
}

// stdinChunk bounds one stdin message: base64 in JSON, it stays under the
// 32 KiB that a WebSocket server accepts by default (coder/websocket's).
const stdinChunk = 16 << 10

// pumpStdin forwards r to the command as it arrives, then closes the
// command's stdin at EOF (or a read error). A nil r is an empty stdin.
func pumpStdin(r io.Reader, conn eventSender) {
	if r != nil {
		buf := make([]byte, stdinChunk)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if conn.Send(api.ExecEvent{Type: api.EventStdin, Data: buf[:n]}) != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
	}
	conn.Send(api.ExecEvent{Type: api.EventStdinClose})
}

// forwardSignals passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the
// command until stop is called. A second SIGINT calls abort instead.
func forwardSignals(conn eventSender, abort func()) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	done := make(chan struct{})
	go func() {
		ints := 0
		for {
			select {
			case <-done:
				return
			case s := <-ch:
				name := signalName(s.(syscall.Signal))
				if name == "INT" {
					if ints++; ints > 1 {
						abort()
						return
					}
				}
				conn.Send(api.ExecEvent{Type: api.EventSignal, Signal: name})
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// linuxSignals numbers the guest's (Linux's) signals, whatever the host.
var linuxSignals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6,
	"BUS": 7, "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12,
	"PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18,
	"STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24,
	"XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29,
	"PWR": 30, "SYS": 31,
}

// signalName names a host signal the way ExecEvent does ("INT").
func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "INT"
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGHUP:
		return "HUP"
	case syscall.SIGQUIT:
		return "QUIT"
	}
	return strconv.Itoa(int(s))
}

// signalNumber parses a guest signal as "INT", "SIGINT" or "2".
func signalNumber(name string) (int, bool) {
	name = strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(name)), "SIG")
	if n, ok := linuxSignals[name]; ok {
		return n, true
	}
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 128 {
		return n, true
	}
	return 0, false
}

// exitCode maps an exit event to cove's exit status: 124 for a timeout,
// 128+N for signal N, else the command's code (1 if out of range).
func exitCode(ev api.ExecEvent) int {
	if ev.TimedOut {
		return exitTimedOut
	}
	if ev.Signal != "" {
		if n, ok := signalNumber(ev.Signal); ok {
			return exitSignal + n
		}
	}
	if ev.ExitCode < 0 || ev.ExitCode > 255 {
		return 1
	}
	if ev.ExitCode == 0 && ev.Signal != "" {
		return 1 // killed by a signal we cannot number; never report success
	}
	return ev.ExitCode
}

// startFailure wraps an error from starting (or running) a command: status
// 127 when it says the program was not found, else 1.
func startFailure(err error) error {
	return &exitError{code: startFailureCode(err), err: err}
}

// startFailureCode is 127 when err says the guest could not find the
// program (the server answers invalid_argument "exec: …: no such file"),
// else 1. An unknown session is not_found "session … not found", which
// stays 1.
func startFailureCode(err error) int {
	var e *api.Error
	if !errors.As(err, &e) {
		return 1
	}
	msg := strings.ToLower(e.Message)
	switch {
	case strings.Contains(msg, "no such file"), strings.Contains(msg, "executable file not found"):
		return exitNotFound
	case e.Code != api.CodeNotFound && strings.Contains(msg, "not found"):
		return exitNotFound
	}
	return 1
}
