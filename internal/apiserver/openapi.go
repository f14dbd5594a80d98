package apiserver

import (
	"fmt"
	"net/http"

	"sigs.k8s.io/yaml"

	"github.com/cove-dev/cove/api"
)

// openAPIJSON converts the embedded OpenAPI document to JSON.
func openAPIJSON() ([]byte, error) {
	b, err := yaml.YAMLToJSON(api.OpenAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("openapi: convert api/openapi.yaml to JSON: %w", err)
	}
	return b, nil
}

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) error {
	if s.openAPIErr != nil {
		return s.openAPIErr
	}
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(s.openAPIJSON)
	return reported(err)
}
