package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// collectGarbage serves POST /v1/admin/gc: one garbage collection of the
// object store, now, whatever the server's schedule (--gc-interval).
func (s *Server) collectGarbage(w http.ResponseWriter, r *http.Request) error {
	if s.gc == nil {
		return api.Errorf(api.CodeUnavailable, "objects.gc: this server collects no object store's garbage")
	}
	res, err := s.gc(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}
