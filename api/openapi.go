package api

import _ "embed"

// OpenAPIYAML is cove's OpenAPI 3.1 document (api/openapi.yaml), the
// published form of the HTTP contract. The API server serves it as JSON at
// GET /v1/openapi.json.
//
//go:embed openapi.yaml
var OpenAPIYAML []byte
