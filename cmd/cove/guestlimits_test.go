package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// The bounds on what a guest asks for itself are the server's flags (and
// environment): a value that would bound nothing or refuse everything
// stops the server before it touches anything, naming the flag; values
// in range go on to the start (here stopped next by a policy file that
// is missing, which is checked first thing).
func TestServerGuestLimitFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.cedar")
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"--max-checkpoints", "0"}, want: "--max-checkpoints is 0: it must be at least 1"},
		{args: []string{"--guest-checkpoint-burst", "-3"}, want: "--guest-checkpoint-burst is -3: it must be at least 1"},
		{args: []string{"--guest-checkpoints-at-once", "0"}, want: "--guest-checkpoints-at-once is 0: it must be at least 1"},
		{args: []string{"--guest-checkpoint-every", "10ms"}, want: "--guest-checkpoint-every is 10ms: it must be at least 1s"},
		{env: map[string]string{"COVE_MAX_CHECKPOINTS": "0"}, want: "--max-checkpoints is 0"},
		{env: map[string]string{"COVE_GUEST_CHECKPOINT_EVERY": "0s"}, want: "--guest-checkpoint-every is 0s"},
		{args: []string{"--max-checkpoints", "4", "--guest-checkpoint-burst", "1", "--guest-checkpoint-every", "1m", "--guest-checkpoints-at-once", "1"},
			env:  map[string]string{"COVE_GUEST_CHECKPOINT_BURST": "0"}, // the flag wins
			want: "server: --policy:"},
	} {
		t.Run(strings.Join(c.args, " ")+envString(c.env), func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			home := filepath.Join(t.TempDir(), "home")
			cmd := newServerCmd()
			cmd.SetArgs(append([]string{"--home", home, "--listen", "127.0.0.1:0", "--policy", missing}, c.args...))
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("server with %v %v: %v; want an error saying %q", c.args, c.env, err, c.want)
			}
		})
	}
}

func envString(env map[string]string) string {
	var b strings.Builder
	for k, v := range env {
		b.WriteString(" " + k + "=" + v)
	}
	return b.String()
}
