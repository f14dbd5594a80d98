package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
)

// serverOIDC is the sign-in of 'cove server' with OIDC issuers: the
// verifier of their ID tokens, and what GET /auth/oidc publishes.
type serverOIDC struct {
	verifiers []identity.JWTVerifier // none without issuers
	signIn    []api.OIDCIssuer
}

// parseOIDCIssuers reads the --oidc-issuer values (each ISSUER_URL=CLIENT_ID,
// or several of them separated by commas, as COVE_OIDC_ISSUERS has them).
func parseOIDCIssuers(values []string) ([]identity.OIDCIssuer, error) {
	var out []identity.OIDCIssuer
	for _, v := range values {
		for _, one := range strings.Split(v, ",") {
			if strings.TrimSpace(one) == "" {
				continue
			}
			is, err := identity.ParseOIDCIssuer(one)
			if err != nil {
				return nil, fmt.Errorf("server: --oidc-issuer: %w", err)
			}
			out = append(out, is)
		}
	}
	return out, nil
}

// newServerOIDC makes the verifier of the issuers' ID tokens over st, and
// reads their discovery documents in the background: an issuer that is
// down is logged, and its tokens are answered 503 until it is back.
func newServerOIDC(ctx context.Context, issuers []identity.OIDCIssuer, st identity.Store, log *slog.Logger) (serverOIDC, error) {
	if len(issuers) == 0 {
		return serverOIDC{}, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v, err := identity.NewOIDC(identity.OIDCConfig{Issuers: issuers, Store: st, Log: log})
	if err != nil {
		return serverOIDC{}, fmt.Errorf("server: --oidc-issuer: %w", err)
	}
	out := serverOIDC{verifiers: []identity.JWTVerifier{v}}
	for _, is := range issuers {
		out.signIn = append(out.signIn, api.OIDCIssuer{Issuer: is.URL, ClientID: is.ClientID})
	}
	go func() {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := v.Discover(dctx); err != nil {
			log.Warn("oidc: an issuer cannot be reached now; its ID tokens are answered 503 until it can", "err", err)
		}
	}()
	return out, nil
}
