package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/spf13/cobra"
	"golang.org/x/oauth2"
	"golang.org/x/term"

	"github.com/cove-dev/cove/api"
)

// deviceCodeGrant is the grant type of RFC 8628's token requests.
const deviceCodeGrant = "urn:ietf:params:oauth:grant-type:device_code"

// loginScopes are the scopes 'cove login' asks an issuer for: an ID token
// with a name and email, and a refresh token to renew it.
var loginScopes = []string{oidc.ScopeOpenID, "profile", "email", oidc.ScopeOfflineAccess}

func newLoginCmd(c *cli) *cobra.Command {
	var (
		withToken bool
		issuer    string
		scopes    []string
	)
	cmd := &cobra.Command{
		Use:   "login [--token] [--issuer URL] [--scope SCOPE]...",
		Short: "Sign in to the server, and keep the credential for later commands",
		Long: `Sign in to the server at $COVE_ADDR and keep the credential in the user's
config dir (cove/credentials.json there, mode 0600), one per server address.
Later commands use it when COVE_TOKEN is not set, before $COVE_HOME/admin.token.

Where the server accepts an OIDC issuer's ID tokens (cove server
--oidc-issuer) and the issuer offers the device authorization flow (RFC
8628), login prints a URL and a code: open the URL, enter the code and
sign in there; login then gets the ID token (and a refresh token, which
later commands use to renew it). Otherwise, or with --token, it reads an
API token (cove token create) from stdin. Either way the server is asked
who the credential is, and nothing is kept if it refuses it.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.login(cmd.Context(), withToken, issuer, scopes)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&withToken, "token", false, "sign in with an API token read from stdin, not with the OIDC device flow")
	f.StringVar(&issuer, "issuer", "", "the OIDC issuer to sign in at, of those the server accepts (default: the first)")
	f.StringArrayVar(&scopes, "scope", nil, "ask the issuer for another scope too (such as groups); repeat for more")
	return cmd
}

func newLogoutCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Forget the credential 'cove login' kept for the server",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr := clientAddr(c.getenv)
			path := credentialsPath(c.getenv)
			if path == "" {
				return errors.New("logout: no config dir (HOME is not set)")
			}
			errNotIn := errors.New("not signed in")
			err := updateCredentials(path, func(creds *credentials) error {
				if creds.Servers[addr] == nil {
					return errNotIn
				}
				delete(creds.Servers, addr)
				return nil
			})
			switch {
			case errors.Is(err, errNotIn):
				fmt.Fprintf(c.stdout, "Not signed in to %s.\n", addr)
				return nil
			case err != nil:
				return err
			}
			fmt.Fprintf(c.stdout, "Signed out of %s.\n", addr)
			return nil
		},
	}
}

// login signs in to the server at $COVE_ADDR and saves the credential.
func (c *cli) login(ctx context.Context, withToken bool, issuer string, scopes []string) error {
	addr := clientAddr(c.getenv)
	path := credentialsPath(c.getenv)
	if path == "" {
		return errors.New("login: no config dir to keep the credential in (HOME is not set)")
	}
	// A broken file stops login before the server is asked.
	if _, err := loadCredentials(path); err != nil {
		return err
	}
	var cr *credential
	var err error
	if withToken {
		cr, err = c.tokenLogin()
	} else {
		cr, err = c.oidcLogin(ctx, addr, issuer, scopes)
	}
	if err != nil {
		return err
	}
	who, err := api.NewClient(addr, cr.Token).WhoAmI(ctx)
	if err != nil {
		return fmt.Errorf("login: %s refuses the credential: %w", addr, err)
	}
	// Signing in may take minutes: save into the file as it is now.
	if err := updateCredentials(path, func(creds *credentials) error {
		creds.Servers[addr] = cr
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "Signed in to %s as %s; the credential is in %s.\n", addr, describeWho(who), path)
	return nil
}

// describeWho names a principal: "alice (engineer; teams platform)".
func describeWho(w api.WhoAmI) string {
	if w.User == nil {
		return w.Kind
	}
	more := []string{w.User.Kind}
	if len(w.User.Teams) > 0 {
		more = append(more, "teams "+strings.Join(w.User.Teams, ", "))
	}
	if len(w.Scopes) > 0 {
		more = append(more, "scopes "+strings.Join(w.Scopes, ", "))
	}
	return fmt.Sprintf("%s (%s)", w.User.Name, strings.Join(more, "; "))
}

// tokenLogin reads an API token from stdin: without echo from a terminal,
// else its first line.
func (c *cli) tokenLogin() (*credential, error) {
	var tok string
	if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(c.stderr, "API token: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return nil, fmt.Errorf("login: read the token: %w", err)
		}
		tok = string(b)
	} else {
		line, err := bufio.NewReader(io.LimitReader(c.stdin, 64<<10)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("login: read the token: %w", err)
		}
		tok = line
	}
	if tok = strings.TrimSpace(tok); tok == "" {
		return nil, errors.New("login: no token on stdin (make one with 'cove token create')")
	}
	return &credential{Token: tok}, nil
}

// oidcLogin signs in with the device flow at the issuer the server names,
// or falls back to a token where it names none or the issuer offers no
// device flow.
func (c *cli) oidcLogin(ctx context.Context, addr, issuer string, extra []string) (*credential, error) {
	si, err := api.NewClient(addr, "").SignIn(ctx)
	if err != nil {
		return nil, fmt.Errorf("login: ask %s how to sign in: %w", addr, err)
	}
	var is *api.OIDCIssuer
	for i := range si.OIDC {
		if issuer == "" || si.OIDC[i].Issuer == issuer {
			is = &si.OIDC[i]
			break
		}
	}
	switch {
	case is == nil && issuer != "":
		return nil, fmt.Errorf("login: %s accepts no issuer %s (it accepts: %s)", addr, issuer, issuerList(si.OIDC))
	case is == nil:
		fmt.Fprintf(c.stderr, "%s accepts no OIDC sign-in; give an API token (cove token create).\n", addr)
		return c.tokenLogin()
	}
	// Every request to the issuer is bounded; the device flow's polling
	// ends when its code expires.
	ctx = oidc.ClientContext(ctx, &http.Client{Timeout: 30 * time.Second})
	prov, err := oidc.NewProvider(ctx, is.Issuer)
	if err != nil {
		return nil, fmt.Errorf("login: issuer %s: %w", is.Issuer, err)
	}
	var meta struct {
		Device string   `json:"device_authorization_endpoint"`
		Grants []string `json:"grant_types_supported"`
	}
	if err := prov.Claims(&meta); err != nil {
		return nil, fmt.Errorf("login: issuer %s: discovery document: %w", is.Issuer, err)
	}
	if meta.Device == "" || meta.Grants != nil && !slices.Contains(meta.Grants, deviceCodeGrant) {
		fmt.Fprintf(c.stderr, "Issuer %s offers no device sign-in; give an API token (cove token create).\n", is.Issuer)
		return c.tokenLogin()
	}
	ep := prov.Endpoint()
	conf := oauth2.Config{ClientID: is.ClientID, Scopes: append(slices.Clone(loginScopes), extra...),
		Endpoint: oauth2.Endpoint{DeviceAuthURL: meta.Device, TokenURL: ep.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		return nil, fmt.Errorf("login: issuer %s: device authorization: %w", is.Issuer, err)
	}
	fmt.Fprintf(c.stderr, "To sign in to %s, open %s and enter the code %s\n", addr, da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(c.stderr, "(or open %s)\n", da.VerificationURIComplete)
	}
	fmt.Fprintln(c.stderr, "Waiting for you to sign in…")
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return nil, fmt.Errorf("login: issuer %s: %w", is.Issuer, err)
	}
	cr := &credential{Issuer: is.Issuer, ClientID: is.ClientID, TokenURL: ep.TokenURL}
	if err := cr.setOIDC(tok); err != nil {
		return nil, fmt.Errorf("login: issuer %s: %w", is.Issuer, err)
	}
	return cr, nil
}

func issuerList(iss []api.OIDCIssuer) string {
	if len(iss) == 0 {
		return "none"
	}
	names := make([]string, len(iss))
	for i, is := range iss {
		names[i] = is.Issuer
	}
	return strings.Join(names, ", ")
}
