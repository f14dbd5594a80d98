package session_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/session"
)

// A command's output and exit reach its client exactly once however often
// a park cuts its stream: the host counts what it received and re-attaches
// at those offsets, the guest keeps the output and the exit until then.

// sequence reads a command's stdout, which must be the lines 1, 2, 3…,
// each once and in order, and its stderr, which must stay empty.
type sequence struct {
	mu    sync.Mutex
	lines int    // guarded by mu: the lines read, all as expected
	bad   string // guarded by mu: the first thing that was not
	done  chan struct{}
}

func readSequence(p session.Process) *sequence {
	s := &sequence{done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		b, _ := io.ReadAll(p.Stderr())
		if len(b) > 0 {
			s.fail(fmt.Sprintf("stderr %q", b))
		}
	})
	wg.Go(func() {
		sc := bufio.NewScanner(p.Stdout())
		for sc.Scan() {
			s.mu.Lock()
			if s.bad == "" {
				if n, err := strconv.Atoi(sc.Text()); err != nil || n != s.lines+1 {
					s.bad = fmt.Sprintf("line %q after %d", sc.Text(), s.lines)
				} else {
					s.lines++
				}
			}
			s.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			s.fail(fmt.Sprintf("stdout after %d lines: %v", s.read(), err))
		}
	})
	go func() { wg.Wait(); close(s.done) }()
	return s
}

func (s *sequence) fail(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad == "" {
		s.bad = why
	}
}

func (s *sequence) read() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines
}

// grew reports whether the output went past line n, or went wrong (which
// check reports).
func (s *sequence) grew(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines > n || s.bad != ""
}

// wrong fails t if the output went wrong so far.
func (s *sequence) wrong(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad != "" {
		t.Fatalf("output not the sequence 1..n exactly once: %s", s.bad)
	}
}

// check waits for the end of the output and fails t unless it was the
// sequence, whole, and the command exited with code want.
func (s *sequence) check(t *testing.T, p session.Process, want int) {
	t.Helper()
	<-s.done
	st, err := p.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad != "" {
		t.Fatalf("output not the sequence 1..n exactly once: %s", s.bad)
	}
	if err != nil || st.Code != want {
		t.Fatalf("after %d lines: exit %+v, %v; want code %d", s.lines, st, err, want)
	}
	t.Logf("%d lines, each once", s.lines)
}

// TestFakeOutputExactAcrossParks: a command printing a numbered sequence
// while its session is parked and woken over and over (by Wake and by the
// command's own stdin) writes the whole sequence to its client, each line
// once, and its exit arrives.
func TestFakeOutputExactAcrossParks(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	id := r.create(api.CreateSessionRequest{}).ID
	p, err := r.mgr.Exec(ctx, id, api.ExecRequest{Argv: []string{"count"}})
	if err != nil {
		t.Fatal(err)
	}
	seq := readSequence(p)
	for i := range 10 {
		n := seq.read()
		r.eventually(fmt.Sprintf("cycle %d: output past line %d", i, n), func() bool { return seq.grew(n) })
		seq.wrong(t)
		r.park(id)
		if i%2 == 0 {
			if _, err := r.mgr.Wake(ctx, id); err != nil {
				t.Fatalf("cycle %d: wake: %v", i, err)
			}
		} else {
			r.echo(id) // wakes it
		}
	}
	n := seq.read()
	r.eventually("output after the last wake", func() bool { return seq.grew(n) })
	r.park(id)
	if err := p.Stdin().Close(); err != nil { // wakes it; count exits 0
		t.Fatal(err)
	}
	seq.check(t, p, 0)
}

// TestOutputExactAcrossParks is TestFakeOutputExactAcrossParks in a real
// guest: a shell loop printing numbers as fast as it can while the session
// is parked and woken, then told to stop by a file (which wakes it).
func TestOutputExactAcrossParks(t *testing.T) {
	r := newRig(t, rigOptions{})
	s := r.create(t, api.CreateSessionRequest{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	p, err := r.mgr.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c",
		"i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i; done; exit 7"}})
	if err != nil {
		t.Fatal(err)
	}
	seq := readSequence(p)
	grows := func(what string) {
		n := seq.read()
		if !waitFor(5*time.Minute, func() bool { return seq.grew(n) }) {
			t.Fatalf("%s: no output past line %d", what, n)
		}
		seq.wrong(t)
	}
	for i := range 8 {
		grows(fmt.Sprintf("cycle %d", i))
		if _, err := r.mgr.Park(ctx, s.ID); err != nil {
			t.Fatalf("cycle %d: park: %v", i, err)
		}
		if i%2 == 0 {
			if _, err := r.mgr.Wake(ctx, s.ID); err != nil {
				t.Fatalf("cycle %d: wake: %v", i, err)
			}
		} else {
			r.sh(t, s.ID, "true") // an exec wakes it
		}
	}
	grows("after the last wake")
	if _, err := r.mgr.Park(ctx, s.ID); err != nil {
		t.Fatalf("park: %v", err)
	}
	if err := r.mgr.WriteFile(ctx, s.ID, "/tmp/stop", 0o644, strings.NewReader("")); err != nil { // wakes it
		t.Fatalf("stop: %v", err)
	}
	seq.check(t, p, 7)
}
