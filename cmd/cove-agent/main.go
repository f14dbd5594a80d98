// Command cove-agent is cove's guest agent. Started as PID 1 in a microVM it
// sets the guest up (modules, root disk) and serves the host over the
// virtio-serial port named agentproto.PortName.
package main

import (
	"context"
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
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(agent.Version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "cove-agent: runs as the guest's init (PID 1); subcommands: version")
		os.Exit(2)
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
	port, err := agent.FindPort(agentproto.PortName, 10*time.Second)
	if err != nil {
		return err
	}
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
