package main

import (
	"fmt"
	"strings"
)

// parseEnv turns repeated --env KEY=VALUE flags into a map; a later KEY
// wins. The value may be empty and may contain "=". It returns nil for no
// flags.
func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n\x00") {
			return nil, fmt.Errorf("invalid --env %q: want KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}
