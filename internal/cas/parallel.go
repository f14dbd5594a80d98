package cas

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// forEach hands items, in order, to n workers, each made by newWorker (so
// that it may keep a buffer of its own). The first error a worker returns
// cancels the context the others get and stops the feeding; forEach
// returns it once every worker is done. A ctx cancelled from outside ends
// it early too, with ctx's error.
func forEach[T any](ctx context.Context, n int, items []T, newWorker func() func(context.Context, T) error) error {
	g, gctx := errgroup.WithContext(ctx)
	ch := make(chan T)
	for range n {
		work := newWorker()
		g.Go(func() error {
			for it := range ch {
				if err := work(gctx, it); err != nil {
					return err
				}
			}
			return nil
		})
	}
feed:
	for _, it := range items {
		select {
		case ch <- it:
		case <-gctx.Done():
			break feed
		}
	}
	close(ch)
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
