// Package qmp speaks the QEMU Machine Protocol over a unix socket: the
// greeting, capability negotiation, commands with ids (answers matched to
// requests), asynchronous events, and file descriptor passing (getfd).
//
// It is written here rather than taken from a library: the Go QMP clients
// available either lack SCM_RIGHTS descriptor passing (needed to hand QEMU a
// migration target under -sandbox spawn=deny) or deliver events and
// answers on one channel without ordering.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxLine bounds one QMP message; QEMU's answers are small.
const maxLine = 4 << 20

// Event is an asynchronous QMP event.
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Error is an error answered by QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

type message struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	ID     *uint64         `json:"id"`
}

type reply struct {
	ret json.RawMessage
	err error
}

// Conn is a QMP connection. It is safe for concurrent use.
type Conn struct {
	c *net.UnixConn

	wmu sync.Mutex // serializes writes

	mu      sync.Mutex
	nextID  uint64                // guarded by mu
	pending map[uint64]chan reply // guarded by mu
	subs    []chan Event          // guarded by mu
	err     error                 // guarded by mu: set when the read loop ends

	done chan struct{}
}

// Dial connects to the QMP socket at path, reads the greeting and
// negotiates capabilities. It retries until the socket accepts or ctx ends.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	var nc net.Conn
	for {
		var err error
		nc, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w", path, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	c := &Conn{c: nc.(*net.UnixConn), pending: map[uint64]chan reply{}, done: make(chan struct{})}
	r := bufio.NewReaderSize(c.c, 64<<10)
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Now()) })
	line, err := readLine(r)
	if err == nil {
		var greet message
		if err = json.Unmarshal(line, &greet); err == nil && greet.QMP == nil {
			err = errors.New("no greeting")
		}
	}
	if !stop() || err != nil {
		c.c.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("qmp: greeting from %s: %w", path, err)
	}
	go c.readLoop(r)
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, errors.New("qmp: message too long")
		}
		if !isPrefix {
			return line, nil
		}
	}
}

func (c *Conn) readLoop(r *bufio.Reader) {
	var err error
	defer func() {
		c.mu.Lock()
		c.err = fmt.Errorf("qmp: connection closed: %w", err)
		for id, ch := range c.pending {
			ch <- reply{err: c.err}
			delete(c.pending, id)
		}
		for _, s := range c.subs {
			close(s)
		}
		c.subs = nil
		c.mu.Unlock()
		close(c.done)
	}()
	for {
		var line []byte
		line, err = readLine(r)
		if err != nil {
			return
		}
		var m message
		if jerr := json.Unmarshal(line, &m); jerr != nil {
			continue // a line QEMU should never send; skip it
		}
		if m.Event != "" {
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				c.mu.Lock()
				for _, s := range c.subs {
					select {
					case s <- ev:
					default: // a slow subscriber loses events rather than stall QMP
					}
				}
				c.mu.Unlock()
			}
			continue
		}
		if m.ID == nil {
			continue
		}
		c.mu.Lock()
		ch := c.pending[*m.ID]
		delete(c.pending, *m.ID)
		c.mu.Unlock()
		if ch == nil {
			continue
		}
		if m.Error != nil {
			ch <- reply{err: m.Error}
		} else {
			ch <- reply{ret: m.Return}
		}
	}
}

// Events subscribes to events from now on. The channel is closed when the
// connection ends. It is buffered; a subscriber that falls 64 events
// behind loses events.
func (c *Conn) Events() <-chan Event {
	ch := make(chan Event, 64)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		close(ch)
		return ch
	}
	c.subs = append(c.subs, ch)
	return ch
}

// Done is closed when the connection ends (QEMU exited or closed it).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Execute runs a command and returns its raw "return" value.
func (c *Conn) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return c.execute(ctx, cmd, args, nil)
}

// ExecuteWithFile runs a command, passing f to QEMU with SCM_RIGHTS in the
// same message (as getfd and add-fd expect).
func (c *Conn) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	return c.execute(ctx, cmd, args, f)
}

func (c *Conn) execute(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if f != nil {
		_, _, err = c.c.WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = c.c.Write(b)
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp: send %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("qmp: %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
	}
}

func (c *Conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }
