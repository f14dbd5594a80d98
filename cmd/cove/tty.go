package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/cove-dev/cove/api"
)

// fileTerminal returns r as a file if it is a terminal, else nil.
func fileTerminal(r any) *os.File {
	f, ok := r.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return f
}

// terminalSize returns the size of the first of out and in that is a
// terminal.
func terminalSize(out io.Writer, in io.Reader) (rows, cols int, ok bool) {
	for _, s := range []any{out, in} {
		if f := fileTerminal(s); f != nil {
			if cols, rows, err := term.GetSize(int(f.Fd())); err == nil && rows > 0 && cols > 0 {
				return rows, cols, true
			}
		}
	}
	return 0, 0, false
}

// makeRaw puts the terminal f in raw mode and returns what restores it.
func makeRaw(f *os.File) (restore func(), err error) {
	st, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("raw terminal: %w", err)
	}
	return func() { term.Restore(int(f.Fd()), st) }, nil
}

// followResize sends a resize event each time the local terminal's size
// changes (SIGWINCH), until stop is called.
func followResize(conn eventSender, out io.Writer, in io.Reader) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				if rows, cols, ok := terminalSize(out, in); ok {
					conn.Send(api.ExecEvent{Type: api.EventResize, Rows: rows, Cols: cols})
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
