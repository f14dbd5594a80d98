package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// revokeSession is the kill switch: every identity token the session was
// given dies at once; the VM runs on.
func (s *Server) revokeSession(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.sessions.Revoke(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, sess)
}

// serveIssuer serves cove's OpenID issuer documents (Config.Issuer).
func (s *Server) serveIssuer(w http.ResponseWriter, r *http.Request) error {
	if s.issuer == nil {
		return api.Errorf(api.CodeNotFound, "this server issues no session tokens")
	}
	s.issuer.ServeHTTP(w, r)
	return nil
}
