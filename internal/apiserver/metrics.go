package apiserver

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cove-dev/cove/api"
)

// secondsBuckets spans 1 ms to 60 s.
var secondsBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60}

// listTimeout bounds the Sessions.List call of one scrape.
const listTimeout = 5 * time.Second

// Metrics is cove's Prometheus metrics, in a registry of its own, served at
// GET /metrics:
//
//	cove_sessions{state}                gauge, from Sessions.List at scrape time;
//	                                    every state in api.States, zero or not
//	cove_boot_seconds                   histogram of VM boot times
//	cove_exec_seconds                   histogram of exec durations (start to exit)
//	cove_park_seconds                   histogram of successful parks
//	cove_wake_seconds                   histogram of successful wakes
//	cove_store_seconds                  histogram of parked sessions' snapshot uploads
//	                                    to the object store, done (durable)
//	cove_store_added_bytes_total        what those uploads added to the object store
//	cove_cache_evictions_total          parked sessions' snapshot files evicted from
//	                                    the node cache (--cache-size)
//	cove_cache_evicted_bytes_total      the bytes those evictions freed
//	cove_cache_bytes                    gauge: what parked sessions' snapshot files take
//	                                    on the host, as the evictor last counted
//	cove_cache_size_bytes               gauge: the bound (--cache-size); both only
//	                                    with a bound (WatchCache)
//	cove_http_requests_total{code,method}
//	cove_webhooks_total{code}           webhook deliveries (POST /v1/hooks/…)
//	                                    by the status they were answered with
//
// plus the Go runtime and process collectors. Make one with NewMetrics.
type Metrics struct {
	reg      *prometheus.Registry
	handler  http.Handler
	boot     prometheus.Histogram
	exec     prometheus.Histogram
	park     prometheus.Histogram
	wake     prometheus.Histogram
	store    prometheus.Histogram
	added    prometheus.Counter
	evicts   prometheus.Counter
	evicted  prometheus.Counter
	cache    *cacheCollector
	requests *prometheus.CounterVec
	webhooks *prometheus.CounterVec
	sessions *sessionsCollector
}

// NewMetrics makes a set of metrics with a fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		boot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cove_boot_seconds",
			Help:    "Time from VM spawn to the guest agent's first answer.",
			Buckets: secondsBuckets,
		}),
		exec: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cove_exec_seconds",
			Help:    "Time from starting a command in a session to its exit, as the API server saw it.",
			Buckets: secondsBuckets,
		}),
		park: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cove_park_seconds",
			Help:    "Time to park a session (save its VM to disk and end it): every park, whoever asked for it.",
			Buckets: secondsBuckets,
		}),
		wake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cove_wake_seconds",
			Help:    "Time to wake a parked session until its agent answers: every wake, whoever asked for it (an exec's auto-wake, an event, a timeout too).",
			Buckets: secondsBuckets,
		}),
		store: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cove_store_seconds",
			Help:    "Time to upload a parked session's snapshot to the object store until it is durable there (stored): every upload done, after a park or at a restart.",
			Buckets: secondsBuckets,
		}),
		added: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cove_store_added_bytes_total",
			Help: "Bytes the snapshot uploads added to the object store: new chunks, compressed, and manifests.",
		}),
		evicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cove_cache_evictions_total",
			Help: "Stored parked sessions whose snapshot files were removed from this host's node cache (--cache-size).",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cove_cache_evicted_bytes_total",
			Help: "Bytes (allocated blocks) those evictions freed on this host.",
		}),
		cache: &cacheCollector{
			bytes: prometheus.NewDesc("cove_cache_bytes", "Bytes (allocated blocks) that parked sessions' snapshot files take on this host, as the node cache's evictor last counted them.", nil, nil),
			size:  prometheus.NewDesc("cove_cache_size_bytes", "The node cache's bound (--cache-size).", nil, nil),
		},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cove_http_requests_total",
			Help: "HTTP requests answered by the API server, by status code and method.",
		}, []string{"code", "method"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cove_webhooks_total",
			Help: "Webhook deliveries answered by the API server, by status code.",
		}, []string{"code"}),
		sessions: &sessionsCollector{desc: prometheus.NewDesc(
			"cove_sessions", "Sessions by state, at scrape time.", []string{"state"}, nil)},
	}
	m.reg.MustRegister(m.boot, m.exec, m.park, m.wake, m.store, m.added, m.evicts, m.evicted, m.cache,
		m.requests, m.webhooks, m.sessions,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	})
	return m
}

// ObserveBoot records one VM boot. The API server records the boots of the
// sessions it creates itself (from Session.BootMillis); the session manager
// calls this for boots the server does not see.
func (m *Metrics) ObserveBoot(d time.Duration) { m.boot.Observe(d.Seconds()) }

// ObservePark records one park. The session manager calls it (and
// ObserveWake) for every park and wake it does, whoever asked: the API,
// idle parking, an exec's auto-wake, an event (session.Config.OnEvent,
// through session.ObserveDurations); the server's handlers record none, so
// each counts once.
func (m *Metrics) ObservePark(d time.Duration) { m.park.Observe(d.Seconds()) }

// ObserveWake records one wake; see ObservePark.
func (m *Metrics) ObserveWake(d time.Duration) { m.wake.Observe(d.Seconds()) }

// ObserveStore records one snapshot upload done and the bytes it added to
// the object store; see ObservePark.
func (m *Metrics) ObserveStore(d time.Duration, added int64) {
	m.store.Observe(d.Seconds())
	m.added.Add(float64(max(added, 0)))
}

// ObserveEviction records one eviction from the node cache and the bytes
// it freed; see ObservePark.
func (m *Metrics) ObserveEviction(freed int64) {
	m.evicts.Inc()
	m.evicted.Add(float64(max(freed, 0)))
}

// WatchCache makes cove_cache_bytes and cove_cache_size_bytes report what
// usage returns at scrape time: the bytes the node cache holds and its
// bound. Without it they are not reported. The last call wins.
func (m *Metrics) WatchCache(usage func() (bytes, size int64)) {
	m.cache.mu.Lock()
	m.cache.usage = usage
	m.cache.mu.Unlock()
}

// watchSessions makes cove_sessions count the sessions list returns. The
// last call wins.
func (m *Metrics) watchSessions(list func(context.Context) ([]api.Session, error)) {
	m.sessions.mu.Lock()
	m.sessions.list = list
	m.sessions.mu.Unlock()
}

func (m *Metrics) countRequest(method string, status int) {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodPatch, http.MethodOptions:
	default:
		method = "other" // keep the label set small
	}
	m.requests.WithLabelValues(strconv.Itoa(status), method).Inc()
}

func (m *Metrics) countWebhook(status int) {
	m.webhooks.WithLabelValues(strconv.Itoa(status)).Inc()
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) error {
	s.metrics.handler.ServeHTTP(w, r)
	return nil
}

// sessionsCollector reports cove_sessions from a list of sessions taken at
// scrape time.
type sessionsCollector struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	list func(context.Context) ([]api.Session, error) // guarded by mu
}

func (c *sessionsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *sessionsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	list := c.list
	c.mu.Unlock()
	if list == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	ss, err := list(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	counts := make(map[string]int, len(api.States))
	for _, st := range api.States {
		counts[st] = 0
	}
	for _, s := range ss {
		counts[s.State]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), st)
	}
}

// cacheCollector reports the node cache's gauges from its usage at scrape
// time.
type cacheCollector struct {
	bytes, size *prometheus.Desc
	mu          sync.Mutex
	usage       func() (bytes, size int64) // guarded by mu
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.bytes; ch <- c.size }

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	usage := c.usage
	c.mu.Unlock()
	if usage == nil {
		return
	}
	b, size := usage()
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(b))
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(size))
}
