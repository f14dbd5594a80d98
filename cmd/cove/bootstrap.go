package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/cove-dev/cove/api"
)

// bootstrapTimeout bounds the requests of a bootstrap sign-in, which
// happens before the command's own.
const bootstrapTimeout = time.Minute

// bootstrapSignIn signs the CLI in on the server's host, where it found
// only the admin token (conf.adminFile), which only bootstraps: with it,
// it finds the server's first admin user (by name; the server makes one
// named admin at its first start), mints that user an API token named
// cli@HOSTNAME that works until it is revoked, keeps it as 'cove login
// --token' keeps one (the credentials file, 0600, under its lock), says
// so in one line on stderr, and returns it. Later commands find it saved
// and mint none. The token is minted under the credentials file's lock,
// after reading the file again: of commands that start at once, the
// first signs in and the others use its credential.
func (c *cli) bootstrapSignIn(ctx context.Context, conf clientConf) (string, error) {
	path := credentialsPath(c.getenv)
	if path == "" {
		return "", fmt.Errorf("no token: %s is the admin token, which only bootstraps, and there is no config dir (HOME is not set) to keep a sign-in in; set COVE_TOKEN to a token from 'cove token create --user NAME'", conf.adminFile)
	}
	ctx, cancel := context.WithTimeout(ctx, bootstrapTimeout)
	defer cancel()
	var token, user string
	err := updateCredentials(path, func(creds *credentials) error {
		if cr := creds.Servers[conf.addr]; cr != nil && cr.Token != "" { // another command signed in meanwhile
			token = cr.Token
			return nil
		}
		var err error
		if user, token, err = mintBootstrapToken(ctx, conf); err != nil {
			return err
		}
		creds.Servers[conf.addr] = &credential{Token: token}
		return nil
	})
	if err != nil {
		return "", err
	}
	if user != "" {
		fmt.Fprintf(c.stderr, "cove: signed in as %s with a new API token (bootstrapped from %s); 'cove logout' forgets it\n", user, conf.adminFile)
	}
	return token, nil
}

// mintBootstrapToken mints an API token for the first admin user with the
// admin token; it returns the user's name and the token.
func mintBootstrapToken(ctx context.Context, conf clientConf) (user, token string, err error) {
	admin := api.NewClient(conf.addr, conf.token)
	fail := func(err error) (string, string, error) {
		return "", "", fmt.Errorf("sign in with the admin token (%s): %w; set COVE_TOKEN to a user's API token, or run 'cove login'", conf.adminFile, err)
	}
	users, err := admin.ListUsers(ctx)
	if err != nil {
		return fail(fmt.Errorf("list users: %w", err))
	}
	for _, u := range users {
		if u.Kind == api.UserAdmin {
			user = u.Name
			break
		}
	}
	if user == "" {
		return fail(fmt.Errorf("no user is an admin (make one: 'cove user add NAME --kind admin', which the admin token may do)"))
	}
	t, err := admin.CreateToken(ctx, api.CreateTokenRequest{Name: bootstrapTokenName(), User: user})
	if err != nil {
		return fail(fmt.Errorf("create a token for %s: %w", user, err))
	}
	return user, t.Secret, nil
}

// notTokenName is what a token name may not hold (identity's tokenName).
var notTokenName = regexp.MustCompile(`[^A-Za-z0-9._:@/-]`)

// bootstrapTokenName names a bootstrapped token for the host it was
// minted on, so that 'cove token ls' tells where each came from:
// cli@HOSTNAME, within the 64 characters a token name may have.
func bootstrapTokenName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	name := "cli@" + notTokenName.ReplaceAllString(host, "-")
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}
