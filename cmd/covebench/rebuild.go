package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/trigger"
)

// rebuildRows measures templates that follow a repository: a signed
// GitHub push to the followed branch until the new version is live (a
// build from the last version's snapshot: restore, fetch, setup, save),
// and the same template's first build from a fresh boot.
func rebuildRows(ctx context.Context, c *api.Client, base string, n int) ([]row, error) {
	first := row{name: "template from a repo, first build (debian)", unit: "ms"}
	push := row{name: "push → next template version live (debian)", unit: "ms"}
	dir, err := os.MkdirTemp("", "covebench-repo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "bench", "app")
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-c", "user.name=bench", "-c", "user.email=bench@example.com"}, args...)...)
		cmd.Dir = src
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out)), nil
	}
	commit := func(i int) (string, error) {
		if err := os.WriteFile(filepath.Join(src, "app.txt"), fmt.Appendf(nil, "build %d\n", i), 0o644); err != nil {
			return "", err
		}
		if _, err := git("add", "app.txt"); err != nil {
			return "", err
		}
		if _, err := git("commit", "-q", "-m", fmt.Sprint("build ", i)); err != nil {
			return "", err
		}
		return git("rev-parse", "HEAD")
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	if _, err := git("init", "-q", "-b", "main"); err != nil {
		return nil, err
	}
	head, err := commit(0)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	t, err := c.CreateTemplate(ctx, api.CreateTemplateRequest{Name: "bench-repo", Image: "debian", Repo: src,
		Setup: []string{"cat /workspace/app.txt > /var/built"}})
	if err != nil {
		return nil, err
	}
	defer c.DeleteTemplate(context.Background(), t.Name)
	first.samples = append(first.samples, ms(time.Since(t0)))
	for i := 1; i <= n; i++ {
		before := head
		if head, err = commit(i); err != nil {
			return nil, err
		}
		body, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "before": before, "after": head,
			"repository": map[string]any{"full_name": "bench/app"}})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/hooks/github", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", fmt.Sprintf("bench-push-%d-%d", time.Now().UnixNano(), i))
		req.Header.Set(trigger.HeaderSignature, trigger.Sign([]byte(hookSecret), body))
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return nil, fmt.Errorf("push delivery: %s", resp.Status)
		}
		for {
			cur, err := c.GetTemplate(ctx, t.Name)
			if err != nil {
				return nil, err
			}
			if cur.Commit == head && !cur.Rebuilding {
				break
			}
			if time.Since(t0) > 5*time.Minute {
				return nil, fmt.Errorf("template %s: no version for %s after 5 minutes", t.Name, head)
			}
			time.Sleep(20 * time.Millisecond)
		}
		push.samples = append(push.samples, ms(time.Since(t0)))
		fmt.Fprintf(os.Stderr, "bench: push → version %d/%d %.0f ms\n", i, n, push.samples[len(push.samples)-1])
	}
	return []row{first, push}, nil
}
