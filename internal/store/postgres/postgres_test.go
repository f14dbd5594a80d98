package postgres_test

import (
	"os"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/pgtest"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/postgres"
	"github.com/cove-dev/cove/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// mustOpen opens the store at url, failing t if it cannot.
func mustOpen(t *testing.T, url string) *postgres.Store {
	t.Helper()
	st, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return st
}

// TestConformance runs the store.Store suite, a fresh database per store
// directory the suite gives: reopening a directory reopens its database.
func TestConformance(t *testing.T) {
	var (
		mu  sync.Mutex
		dbs = map[string]string{} // the suite's dir → database URL
	)
	storetest.Run(t, func(t *testing.T, dir string) store.Store {
		t.Helper()
		mu.Lock()
		url, ok := dbs[dir]
		if !ok {
			url = pgtest.NewDatabase(t)
			dbs[dir] = url
		}
		mu.Unlock()
		return mustOpen(t, url)
	})
}
