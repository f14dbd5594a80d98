package e2b

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/cove-dev/cove/api"
)

// Users. The SDK names the guest user a call runs as where its caller
// passes `user`: RPCs send Authorization: Basic base64("USER:"), /files
// sends ?username=USER. A call that names none runs as E2B's envd runs
// it: as its template's user, "user" (uid 1000, home /home/user,
// passwordless sudo), which cove's debian image has (image.DebianUser),
// and as root where the guest has no such user (the tiny image, an
// image of one's own). Another user's commands run as it: the guest
// agent sets its uid, gid and groups, HOME, USER and LOGNAME itself
// (api.ExecRequest.User; no setpriv, whose busybox build in the tiny
// image changes no uids), starting in its home, and the file calls
// that change something run as commands of that user, so the guest's
// permissions hold and what they make is the user's: a write (parents
// included), makeDir, rename and remove. Stat, list and watches read as
// root. Relative paths start in the user's home.
//
// The user is looked up in the guest's /etc/passwd at each call. "user",
// named, is made on first use where the guest lacks it (useradd, with a
// home and bash; the image needs useradd, as debian has). Any other
// unknown user is unauthenticated (401), as envd answers it.

// guestUser is a user of the guest.
type guestUser struct {
	Name     string
	UID, GID int
	Home     string
}

var rootUser = guestUser{Name: "root", Home: homeDir}

// e2bUser is the user E2B's templates have: the default where the guest
// has it, made on first use where a call names it.
const e2bUser = "user"

// errUnknownUser is a user the guest does not have.
type errUnknownUser struct{ name string }

func (e *errUnknownUser) Error() string {
	return fmt.Sprintf("invalid username: %q is no user of the sandbox", e.name)
}

// requestedUser is the user a request names, "" if none.
func requestedUser(r *http.Request) (string, error) {
	if !isRPC(r) {
		return r.URL.Query().Get("username"), nil
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	enc, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		return "", fmt.Errorf("authorization: want Basic base64(USER:)")
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", fmt.Errorf("authorization: %v", err)
	}
	name, _, _ := strings.Cut(string(b), ":")
	return name, nil
}

// resolveUser finds the user name in the guest ("root": root; "":
// e2bUser where the guest has it, else root), making e2bUser if it is
// named and missing.
func (s *Server) resolveUser(ctx context.Context, id, name string) (guestUser, error) {
	if name == "root" {
		return rootUser, nil
	}
	if name == "" {
		passwd, err := s.guestFile(ctx, id, "/etc/passwd")
		switch {
		case api.IsCode(err, api.CodeNotFound):
			return rootUser, nil
		case err != nil:
			return guestUser{}, err
		}
		if u, ok := lookupPasswd(passwd, e2bUser); ok {
			return u, nil
		}
		return rootUser, nil
	}
	if !validUserName(name) {
		return guestUser{}, &errUnknownUser{name}
	}
	for try := 0; ; try++ {
		passwd, err := s.guestFile(ctx, id, "/etc/passwd")
		if err != nil {
			return guestUser{}, err
		}
		if u, ok := lookupPasswd(passwd, name); ok {
			return u, nil
		}
		if name != e2bUser || try > 0 {
			return guestUser{}, &errUnknownUser{name}
		}
		if _, err := s.output(ctx, id, []string{"useradd", "--create-home", "--shell", "/bin/bash", "--user-group", e2bUser}, nil); err != nil {
			// Made by a call beside this one, or no useradd: look again.
			s.log.InfoContext(ctx, "e2b: make the guest's user", "session", id, "user", e2bUser, "err", err)
		}
	}
}

// validUserName is a name useradd would take (and no option or path).
func validUserName(name string) bool {
	if name == "" || len(name) > 32 || name[0] == '-' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// lookupPasswd finds name in an /etc/passwd.
func lookupPasswd(passwd []byte, name string) (guestUser, bool) {
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] != name {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			return guestUser{}, false
		}
		home := f[5]
		if !path.IsAbs(home) {
			home = "/"
		}
		return guestUser{Name: name, UID: uid, GID: gid, Home: home}, true
	}
	return guestUser{}, false
}

type userKey struct{}

// userOf is the user the request runs as (serveSandbox resolved it).
func userOf(r *http.Request) guestUser {
	if u, ok := r.Context().Value(userKey{}).(guestUser); ok {
		return u
	}
	return rootUser
}

// path makes p absolute and clean for the request's user: relative to
// its home, "~" being its home.
func (s *Server) path(r *http.Request, p string) string {
	return guestPathIn(userOf(r).Home, p)
}

// execUser is the ExecRequest.User that runs a command as u: "" for
// root (and any user of uid 0), which every guest agent runs as.
func execUser(u guestUser) string {
	if u.UID == 0 {
		return ""
	}
	return u.Name
}

// asUserFailed turns a failed file command of a user into the API's
// error: a permission refusal is 403.
func asUserFailed(err error) error {
	if err != nil && (strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "Operation not permitted")) {
		return api.Errorf(api.CodeForbidden, "%v", err)
	}
	return err
}

// writeAs writes r to the guest file p as u, making its parents: the
// file and the directories made are u's.
func (s *Server) writeAs(ctx context.Context, id string, u guestUser, p string, r io.Reader) error {
	script := `mkdir -p -- "$(dirname -- "$1")" && cat > "$1"`
	_, err := s.outputAs(ctx, id, u, []string{"sh", "-c", script, "sh", p}, r)
	return asUserFailed(err)
}
