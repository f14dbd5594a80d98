package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// --gc-grace under an hour stops the server, naming the flag: uploads
// reuse a stored chunk for half of it, and the other half must outlast
// the longest upload.
func TestGCGraceFloor(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	home := t.TempDir()
	if _, err := openObjectStore(t.Context(), "", home, 30*time.Minute, log); err == nil || !strings.Contains(err.Error(), "--gc-grace 30m0s") {
		t.Fatalf("--gc-grace 30m: %v; want a refusal naming the flag", err)
	}
	if _, err := openObjectStore(t.Context(), "", home, time.Hour, log); err != nil {
		t.Fatalf("--gc-grace 1h: %v", err)
	}
}
