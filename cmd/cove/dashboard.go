package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"path/filepath"

	"github.com/cove-dev/cove/internal/dashboard"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/keyfile"
)

// newDashboard serves the web dashboard at / in front of the API's
// handler (internal/dashboard), its sign-in cookies sealed with
// HOME/dashboard.key (made at the first start, kept so that sign-ins
// outlast a restart). Its sign-in form offers the OpenID Connect issuers
// the API accepts (--oidc-issuer), in the authorization code flow.
func newDashboard(home string, apiHandler http.Handler, issuers []identity.OIDCIssuer, log *slog.Logger) (http.Handler, error) {
	key, err := dashboardKey(filepath.Join(home, "dashboard.key"))
	if err != nil {
		return nil, err
	}
	h, err := dashboard.New(dashboard.Config{API: apiHandler, Key: key, Log: log, OIDC: issuers})
	if err != nil {
		return nil, err
	}
	if !dashboard.Built(dashboard.Embedded()) {
		log.Warn("dashboard: " + dashboard.NotBuilt)
	}
	return h, nil
}

// dashboardKey reads the dashboard's key (base64 of 32 bytes, mode 0600)
// at path, made there first if missing.
func dashboardKey(path string) ([]byte, error) {
	for range 2 {
		s, err := keyfile.Read(path)
		if err == nil {
			key, err := base64.StdEncoding.DecodeString(s)
			if err != nil || len(key) < 32 {
				return nil, fmt.Errorf("dashboard key %s: want base64 of 32 bytes", path)
			}
			return key, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dashboard key: %w", err)
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		err = keyfile.Create(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("dashboard key: %w", err)
		}
	}
	return nil, fmt.Errorf("dashboard key: %s: could not be read nor made", path)
}
