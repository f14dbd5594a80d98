package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// EventsDir is where the host delivers events (JSON files) into the guest,
// and where 'cove-agent event wait' takes them from. Files are named so
// that their names sort in delivery order; a taken event moves to
// EventsDir/taken.
const EventsDir = "/run/cove/events"

// ErrNoEvent is returned by WaitEvent when its context ends first.
var ErrNoEvent = errors.New("agent: no event arrived")

// WaitEvent returns the oldest event in dir not yet taken, waiting for one
// to arrive, and moves it to dir/taken so that the next call returns the
// next one. Files whose names start with "." are being written and are
// skipped. It uses inotify, so it does not spin.
func WaitEvent(ctx context.Context, dir string) ([]byte, error) {
	return WaitEventAfter(ctx, dir, "")
}

// WaitEventAfter is WaitEvent for events whose file names sort after
// after: those delivered from now on, when after is the newest name now
// pending (see NewestEvent).
func WaitEventAfter(ctx context.Context, dir, after string) ([]byte, error) {
	if err := os.MkdirAll(filepath.Join(dir, "taken"), 0o755); err != nil {
		return nil, fmt.Errorf("agent: events: %w", err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("agent: events: inotify: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_CREATE); err != nil {
		return nil, fmt.Errorf("agent: events: watch %s: %w", dir, err)
	}
	buf := make([]byte, 4096)
	for {
		// Look after arming the watch: no event can slip in between.
		if b, ok, err := takeOldest(dir, after); err != nil || ok {
			return b, err
		}
		wait := -1
		if d, ok := ctx.Deadline(); ok {
			wait = max(int(time.Until(d).Milliseconds()), 0)
		}
		if ctx.Err() != nil {
			return nil, ErrNoEvent
		}
		// Wake at least every second to notice a cancelled context.
		if wait < 0 || wait > 1000 {
			wait = 1000
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, wait); err != nil && !errors.Is(err, unix.EINTR) {
			return nil, fmt.Errorf("agent: events: poll: %w", err)
		}
		for {
			if _, err := unix.Read(fd, buf); err != nil {
				break // drained (EAGAIN)
			}
		}
		if ctx.Err() != nil {
			// One last look: an event may have arrived with the deadline.
			if b, ok, err := takeOldest(dir, after); err != nil || ok {
				return b, err
			}
			return nil, ErrNoEvent
		}
	}
}

// NewestEvent returns the name of the newest pending event, or "".
func NewestEvent(dir string) string {
	names, _ := pending(dir, "")
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

// pending lists the pending event names after after, oldest first.
func pending(dir, after string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("agent: events: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".json") && e.Name() > after {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// takeOldest moves the oldest pending event after after to dir/taken and
// returns it.
func takeOldest(dir, after string) ([]byte, bool, error) {
	names, err := pending(dir, after)
	if err != nil {
		return nil, false, err
	}
	for _, n := range names {
		src := filepath.Join(dir, n)
		b, err := os.ReadFile(src)
		if err != nil {
			continue // taken by another waiter meanwhile
		}
		if err := os.Rename(src, filepath.Join(dir, "taken", n)); err != nil {
			continue // another waiter took it first
		}
		return b, true, nil
	}
	return nil, false, nil
}
