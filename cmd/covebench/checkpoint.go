package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
)

// checkpointRows measures checkpoints of a running tiny session: the
// pause its guest sees, the bytes a checkpoint after a small change adds,
// checkpoint → rollback → first exec, and fork -n forks → all of them
// answering an exec.
func checkpointRows(ctx context.Context, c *api.Client, n, forks int) ([]row, error) {
	s, err := c.CreateSession(ctx, api.CreateSessionRequest{IdleTimeout: "0s"})
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.DeleteSession(context.WithoutCancel(ctx), s.ID) }()
	pause := row{name: "checkpoint: the guest's pause", unit: "ms", target: 150}
	create := row{name: "checkpoint create (API call)", unit: "ms"}
	full := row{name: "checkpoint: bytes it adds after a 4 KiB write, at its create (a full RAM copy)", unit: "MiB"}
	added := row{name: "checkpoint: bytes it adds after a 4 KiB write, its RAM shared", unit: "MiB"}
	encode := row{name: "checkpoint: create → its RAM shared (background)", unit: "ms"}
	back := row{name: "checkpoint → rollback → first exec", unit: "ms"}
	fork := row{name: fmt.Sprintf("fork -n %d → all %d answering an exec", forks, forks), unit: "ms"}
	// A first checkpoint holds all the guest touched since boot; the
	// next ones, once their RAM is re-encoded, what changed since the one
	// before.
	if _, err := c.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{Name: "base"}); err != nil {
		return nil, err
	}
	if _, err := waitShared(ctx, c, s.ID, "base"); err != nil {
		return nil, err
	}
	for i := range n {
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("head -c 4096 /dev/urandom > /root/f%d; sync", i)}}); err != nil {
			return nil, err
		}
		t0 := time.Now()
		ck, err := c.CreateCheckpoint(ctx, s.ID, api.CheckpointRequest{})
		if err != nil {
			return nil, err
		}
		create.samples = append(create.samples, ms(time.Since(t0)))
		pause.samples = append(pause.samples, float64(ck.PauseMillis))
		full.samples = append(full.samples, float64(ck.Bytes)/(1<<20))
		t0 = time.Now()
		if ck, err = waitShared(ctx, c, s.ID, ck.Name); err != nil {
			return nil, err
		}
		encode.samples = append(encode.samples, ms(time.Since(t0)))
		added.samples = append(added.samples, float64(ck.Bytes)/(1<<20))
		// The rollback reads the RAM back from the chain.
		t0 = time.Now()
		if _, err := c.Rollback(ctx, s.ID, ck.Name); err != nil {
			return nil, err
		}
		if _, err := c.Exec(ctx, s.ID, api.ExecRequest{Argv: []string{"true"}}); err != nil {
			return nil, err
		}
		back.samples = append(back.samples, ms(time.Since(t0)))
		fmt.Fprintf(os.Stderr, "bench: checkpoint/rollback %d/%d\n", i+1, n)
	}
	for range 3 {
		t0 := time.Now()
		ss, err := c.Fork(ctx, s.ID, api.ForkRequest{N: forks, From: "base"})
		if err != nil {
			return nil, err
		}
		var wg sync.WaitGroup
		errs := make([]error, len(ss))
		for i, f := range ss {
			wg.Go(func() {
				_, errs[i] = c.Exec(ctx, f.ID, api.ExecRequest{Argv: []string{"true"}})
			})
		}
		wg.Wait()
		fork.samples = append(fork.samples, ms(time.Since(t0)))
		for i, f := range ss {
			if errs[i] != nil {
				return nil, errs[i]
			}
			_ = c.DeleteSession(ctx, f.ID)
		}
		fmt.Fprintf(os.Stderr, "bench: fork -n %d\n", forks)
	}
	return []row{pause, create, full, added, encode, back, fork}, nil
}

// waitShared returns checkpoint name of session id once its RAM is
// re-encoded (mem_shared), polling.
func waitShared(ctx context.Context, c *api.Client, id, name string) (api.Checkpoint, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ck, err := c.GetCheckpoint(ctx, id, name)
		if err != nil || ck.MemShared {
			return ck, err
		}
		if time.Now().After(deadline) {
			return ck, fmt.Errorf("checkpoint %s of %s: its RAM was not re-encoded in 2 minutes", name, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
