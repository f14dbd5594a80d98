// The guest's CPUs never change under the agent: no recount of them every
// second (sched_getaffinity and cgroup reads, which a woken guest would run
// afresh, translated, under emulation).
//
//go:debug updatemaxprocs=0

// Command cove-agent is cove's guest agent. Started as PID 1 in a microVM it
// sets the guest up (modules, root disk) and serves the host over the
// virtio-serial port named agentproto.PortName.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/agentproto"
)

func main() {
	if os.Getpid() != 1 {
		os.Exit(command(os.Args[1:]))
	}
	err := agent.Init()
	log := slog.New(slog.NewTextHandler(logOutput(), nil))
	if err == nil {
		err = serve(log)
	}
	if err != nil {
		log.Error("agent stopped", "err", err)
		// Whatever the log level, say why on the kernel log: it reaches the
		// console the host keeps.
		if f, ferr := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); ferr == nil {
			fmt.Fprintf(f, "<3>cove-agent: %v\n", err)
			f.Close()
		}
	}
	// PID 1 must never exit: the kernel would panic. Power off instead, so
	// the host sees the VM end.
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func serve(log *slog.Logger) error {
	a := agent.New(log)
	go func() {
		if err := a.ServeTools(context.Background()); err != nil {
			log.Error("tools socket", "err", err)
		}
	}()
	port, err := agent.FindPort(agentproto.PortName, 10*time.Second)
	if err != nil {
		return err
	}
	agent.Mark("port " + port + " found")
	return a.Serve(context.Background(), port)
}

// logOutput is the console when the kernel command line asks for
// cove.debug, else nothing: the console is slow under emulation.
func logOutput() io.Writer {
	b, _ := os.ReadFile("/proc/cmdline")
	if !strings.Contains(string(b), "cove.debug") {
		return io.Discard
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		return f
	}
	return io.Discard
}

const usage = `usage:
  cove-agent event wait [--timeout D]   print the next event delivered to this
                                        session (JSON) once it arrives
  cove-agent park --until EXPR… [--timeout D]
                                        park this session until an event matches;
                                        returns (prints) that event once woken
  cove-agent token --audience AUD [--ttl D]
                                        print this session's identity token (a JWT
                                        for AUD, from the host; never written to
                                        disk); as root only
  cove-agent checkpoint [--name N]      checkpoint this session (its whole machine;
                                        paused meanwhile) and print the name: exit 0.
                                        In a guest later rolled back to it, the
                                        same call returns again, printing "rolled
                                        back to N": exit 3; in a fork made from
                                        it, "forked from SESSION at N": exit 4
  cove-agent rollback [--again] N       roll this session back to its checkpoint
                                        N: this guest stops and N's goes on (see
                                        checkpoint). Refused (exit 3, nothing
                                        done) where checkpoint said "rolled back
                                        to N" and no checkpoint was taken since,
                                        unless --again; an unknown N: exit 1
  cove-agent version
(As PID 1, cove-agent is the guest's init.)`

// Exit statuses of 'cove-agent checkpoint' in a guest restored from its
// checkpoint, and of a 'cove-agent rollback' refused there.
const (
	exitRolledBack = 3
	exitForked     = 4
)

// command runs cove-agent as a tool inside the guest and returns its exit
// status.
func command(args []string) int {
	switch {
	case len(args) == 1 && args[0] == "version":
		fmt.Println(agent.Version)
		return 0
	case len(args) >= 2 && args[0] == "event" && args[1] == "wait":
		fs := flag.NewFlagSet("event wait", flag.ContinueOnError)
		timeout := fs.Duration("timeout", 0, "give up after this long (exit 124); 0 waits forever")
		dir := fs.String("dir", agent.EventsDir, "events directory")
		if err := fs.Parse(args[2:]); err != nil || fs.NArg() != 0 {
			fmt.Fprintln(os.Stderr, usage)
			return 2
		}
		ctx := context.Background()
		if *timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		ev, err := agent.WaitEvent(ctx, *dir)
		if errors.Is(err, agent.ErrNoEvent) {
			fmt.Fprintf(os.Stderr, "cove-agent: no event within %s\n", *timeout)
			return 124
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cove-agent:", err)
			return 1
		}
		os.Stdout.Write(ev)
		if len(ev) > 0 && ev[len(ev)-1] != '\n' {
			fmt.Println()
		}
		return 0
	case len(args) >= 1 && args[0] == "park":
		fs := flag.NewFlagSet("park", flag.ContinueOnError)
		var until multi
		fs.Var(&until, "until", "trigger expression (repeatable)")
		timeout := fs.String("timeout", "", "wake with a timeout event after this long (e.g. 6h)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || (len(until) == 0 && *timeout == "") {
			fmt.Fprintln(os.Stderr, usage)
			return 2
		}
		ev, err := agent.Park(context.Background(), until, *timeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cove-agent:", err)
			return 1
		}
		os.Stdout.Write(ev)
		if len(ev) > 0 && ev[len(ev)-1] != '\n' {
			fmt.Println()
		}
		return 0
	case len(args) >= 1 && args[0] == "checkpoint":
		fs := flag.NewFlagSet("checkpoint", flag.ContinueOnError)
		name := fs.String("name", "", "the checkpoint's name (default: the host's ckpt-N)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
			fmt.Fprintln(os.Stderr, usage)
			return 2
		}
		return checkpoint(*name)
	case len(args) >= 1 && args[0] == "rollback":
		fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
		again := fs.Bool("again", false, "roll back even to the checkpoint this guest was rolled back to already")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 || fs.Arg(0) == "" {
			fmt.Fprintln(os.Stderr, usage)
			return 2
		}
		err := agent.Rollback(context.Background(), fs.Arg(0), *again)
		fmt.Fprintln(os.Stderr, "cove-agent:", err)
		if errors.Is(err, agent.ErrAlreadyRolledBack) {
			return exitRolledBack
		}
		return 1
	case len(args) >= 1 && args[0] == "token":
		fs := flag.NewFlagSet("token", flag.ContinueOnError)
		audience := fs.String("audience", "", "the token's aud: who will verify it (required)")
		ttl := fs.Duration("ttl", 0, "how long the token lives (the server's default if 0; at most 1h)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *audience == "" || *ttl < 0 {
			fmt.Fprintln(os.Stderr, usage)
			return 2
		}
		var ttlArg string
		if *ttl > 0 {
			ttlArg = ttl.String()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		tok, err := agent.Token(ctx, *audience, ttlArg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cove-agent:", err)
			return 1
		}
		fmt.Println(tok)
		return 0
	default:
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
}

// checkpoint runs 'cove-agent checkpoint': see usage for what it prints
// and returns in each timeline.
func checkpoint(name string) int {
	r, err := agent.Checkpoint(context.Background(), name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cove-agent:", err)
		return 1
	}
	switch r.Restored {
	case agentproto.RestoredRollback:
		fmt.Println("rolled back to", r.Name)
		return exitRolledBack
	case agentproto.RestoredFork:
		fmt.Printf("forked from %s at %s\n", r.Parent, r.Name)
		return exitForked
	default:
		fmt.Println(r.Name)
		return 0
	}
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return fmt.Sprint(*m) }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
