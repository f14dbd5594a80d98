package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/oauth2"
)

// credentialsFile is where 'cove login' keeps what it signed in with, in
// the user's config dir: configDir(getenv)/cove/credentials.json, 0600.
const credentialsFile = "credentials.json"

// credentials are the saved sign-ins, one per server address.
type credentials struct {
	Servers map[string]*credential `json:"servers"`
}

// credential is one server's sign-in: an API token, or an OIDC ID token
// with what renews it.
type credential struct {
	// Token is the bearer token: an API token, or an OIDC ID token.
	Token string `json:"token"`
	// Issuer, ClientID and TokenURL say where an ID token came from and
	// where RefreshToken renews it; empty for an API token.
	Issuer       string `json:"issuer,omitempty"`
	ClientID     string `json:"client_id,omitempty"`
	TokenURL     string `json:"token_url,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	// Expiry is the ID token's exp; zero for an API token.
	Expiry time.Time `json:"expiry,omitzero"`
}

// LogValue keeps the tokens out of logs.
func (c credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("issuer", c.Issuer), slog.Time("expiry", c.Expiry),
		slog.Bool("refreshable", c.RefreshToken != ""))
}

// configDir is os.UserConfigDir on Linux (cove's one platform), read
// through getenv so that tests choose it: $XDG_CONFIG_HOME, else
// $HOME/.config; "" when the environment names neither.
func configDir(getenv func(string) string) string {
	if x := getenv("XDG_CONFIG_HOME"); filepath.IsAbs(x) {
		return x
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config")
	}
	return ""
}

// credentialsPath is the credentials file, or "" when there is no config
// dir.
func credentialsPath(getenv func(string) string) string {
	d := configDir(getenv)
	if d == "" {
		return ""
	}
	return filepath.Join(d, "cove", credentialsFile)
}

// loadCredentials reads the credentials file; a missing one is empty. A
// file others may read is refused: it holds tokens.
func loadCredentials(path string) (credentials, error) {
	creds := credentials{Servers: map[string]*credential{}}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return creds, nil
	}
	if err != nil {
		return creds, fmt.Errorf("credentials: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return creds, fmt.Errorf("credentials: %s may be read by others (mode %04o); chmod 600 it, or remove it and run 'cove login'", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return creds, fmt.Errorf("credentials: %w", err)
	}
	if err := json.Unmarshal(b, &creds); err != nil {
		return creds, fmt.Errorf("credentials: %s: %w (remove it and run 'cove login')", path, err)
	}
	if creds.Servers == nil {
		creds.Servers = map[string]*credential{}
	}
	return creds, nil
}

// saveCredentials writes the credentials file, 0600 in a 0700 dir,
// replacing it whole (a new file renamed over the old).
func saveCredentials(path string, creds credentials) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	b, err := json.MarshalIndent(creds, "", "  ")
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".credentials-*")
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	defer os.Remove(f.Name()) // after the rename, nothing
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("credentials: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("credentials: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	return nil
}

// updateCredentials changes the credentials file under its lock (the one
// renewals take): it reads the file afresh, applies change and writes it
// back, so that what another cove command saved meanwhile (a renewed
// sign-in to another server, say) is kept, not overwritten with what this
// one read before. A change that fails writes nothing.
func updateCredentials(path string, change func(*credentials) error) error {
	unlock, err := lockCredentials(path)
	if err != nil {
		return err
	}
	defer unlock()
	creds, err := loadCredentials(path)
	if err != nil {
		return err
	}
	if err := change(&creds); err != nil {
		return err
	}
	return saveCredentials(path, creds)
}

// refreshBefore is how long before its expiry a saved ID token is renewed.
const refreshBefore = time.Minute

// savedToken is the token 'cove login' saved for the server at addr, and
// whether there is one. An ID token near its expiry is renewed with its
// refresh token first, and the renewed one saved.
func savedToken(getenv func(string) string, addr string) (string, bool, error) {
	path := credentialsPath(getenv)
	if path == "" {
		return "", false, nil
	}
	creds, err := loadCredentials(path)
	if err != nil {
		return "", false, err
	}
	cr := creds.Servers[addr]
	if cr == nil || cr.Token == "" {
		return "", false, nil
	}
	if fresh(cr) {
		return cr.Token, true, nil
	}
	// Renew under the lock, reading the file again: another command may
	// have renewed it meanwhile, spending the refresh token.
	unlock, err := lockCredentials(path)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if creds, err = loadCredentials(path); err != nil {
		return "", false, err
	}
	if cr = creds.Servers[addr]; cr == nil || cr.Token == "" { // signed out meanwhile
		return "", false, nil
	}
	if fresh(cr) {
		return cr.Token, true, nil
	}
	if cr.RefreshToken == "" || cr.TokenURL == "" {
		return "", false, fmt.Errorf("your sign-in to %s expired at %s; run 'cove login'", addr, cr.Expiry.Format(time.RFC3339))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cr.refresh(ctx); err != nil {
		return "", false, fmt.Errorf("your sign-in to %s expired at %s and could not be renewed (%v); run 'cove login'", addr, cr.Expiry.Format(time.RFC3339), err)
	}
	if err := saveCredentials(path, creds); err != nil {
		return "", false, err
	}
	return cr.Token, true, nil
}

// fresh reports whether cr's token is used as it is: an API token, or an
// ID token not near its expiry.
func fresh(cr *credential) bool {
	return cr.Expiry.IsZero() || time.Until(cr.Expiry) > refreshBefore
}

// lockCredentials takes the lock beside the credentials file (flock on
// credentials.json.lock), held while the file is read and written again:
// while an ID token is renewed, and by login and logout
// (updateCredentials).
func lockCredentials(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("credentials: lock: %w", err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// refresh renews the ID token with the refresh token, at the issuer's
// token endpoint.
func (cr *credential) refresh(ctx context.Context) error {
	conf := oauth2.Config{ClientID: cr.ClientID, Endpoint: oauth2.Endpoint{TokenURL: cr.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: cr.RefreshToken}).Token()
	if err != nil {
		return err
	}
	return cr.setOIDC(tok)
}

// setOIDC takes the ID token (and a new refresh token, if any) of an
// issuer's token answer.
func (cr *credential) setOIDC(tok *oauth2.Token) error {
	id, _ := tok.Extra("id_token").(string)
	if id == "" {
		return errors.New("the issuer's answer has no ID token (was the openid scope granted?)")
	}
	exp, err := jwtExpiry(id)
	if err != nil {
		return err
	}
	cr.Token, cr.Expiry = id, exp
	if tok.RefreshToken != "" {
		cr.RefreshToken = tok.RefreshToken
	}
	return nil
}

// jwtExpiry reads a JWT's exp without checking it: the server checks the
// token; this only says when to renew it.
func jwtExpiry(raw string) (time.Time, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("the ID token is not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Exp float64 `json:"exp"`
	}
	if err != nil || json.Unmarshal(b, &c) != nil || c.Exp <= 0 {
		return time.Time{}, errors.New("the ID token has no expiry (exp)")
	}
	return time.Unix(int64(c.Exp), 0).UTC(), nil
}
