package nodelink

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Joins with a wrong (or no) join token are limited per source address,
// so that the join token cannot be guessed at the speed of the network:
// each source has a bucket of JoinFailuresBurst failures, refilled at
// one every JoinFailureEvery. While a source's bucket is empty every
// join from it, a right token included (else a guess could go on
// unslowed, its success told apart), is refused 429 with Retry-After,
// before its token is read. A join with the right token takes nothing
// from the bucket. The source is the connection's address: behind a
// proxy, its.
const (
	JoinFailuresBurst = 10
	JoinFailureEvery  = 6 * time.Second
)

// maxJoinSources bounds the buckets kept: past it, those full again are
// dropped (a full bucket is as good as none).
const maxJoinSources = 4096

// joinLimiter is the buckets of failed joins, by source.
type joinLimiter struct {
	mu      sync.Mutex
	sources map[string]*rate.Limiter // guarded by mu
}

// source is the address r came from, without its port.
func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// wait is how long src must wait before its next join is heard: 0 when
// it may join now.
func (l *joinLimiter) wait(src string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.sources[src]
	if lim == nil || lim.TokensAt(now) >= 1 {
		return 0
	}
	r := lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return max(d, time.Second)
}

// failed takes one failure from src's bucket.
func (l *joinLimiter) failed(src string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sources == nil {
		l.sources = map[string]*rate.Limiter{}
	}
	lim := l.sources[src]
	if lim == nil {
		if len(l.sources) >= maxJoinSources {
			for k, v := range l.sources {
				if v.TokensAt(now) >= JoinFailuresBurst {
					delete(l.sources, k)
				}
			}
		}
		lim = rate.NewLimiter(rate.Every(JoinFailureEvery), JoinFailuresBurst)
		l.sources[src] = lim
	}
	lim.AllowN(now, 1)
}
