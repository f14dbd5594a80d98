package session_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
)

// logBook is a slog.Handler that keeps the messages a manager logs, so a
// test can count what the manager did that leaves no other trace (a
// rebuild that found nothing to build).
type logBook struct {
	mu   sync.Mutex
	msgs []string // guarded by mu
}

func (b *logBook) Enabled(context.Context, slog.Level) bool { return true }

func (b *logBook) Handle(_ context.Context, r slog.Record) error {
	b.mu.Lock()
	b.msgs = append(b.msgs, r.Message)
	b.mu.Unlock()
	return nil
}

func (b *logBook) WithAttrs([]slog.Attr) slog.Handler { return b }
func (b *logBook) WithGroup(string) slog.Handler      { return b }

// count is how many messages were msg.
func (b *logBook) count(msg string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func (b *logBook) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.msgs, "; ")
}
