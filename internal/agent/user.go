package agent

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// guestUser is a user of the guest a command runs as (agentproto.Exec's
// User): the agent sets its credentials in the child itself, between
// fork and exec, so no setpriv, su or sudo need be in the image (the
// tiny image's busybox setpriv cannot change uids).
type guestUser struct {
	cred *syscall.Credential
	home string
	// env is its HOME, USER and LOGNAME, under the command's own.
	env []string
}

// lookupUser finds name in the guest's /etc/passwd, and its groups in
// /etc/group (os/user reads both files itself: the agent is built
// without cgo). A user the guest lacks is os.ErrNotExist.
func lookupUser(name string) (guestUser, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	switch {
	case errors.As(err, &unknown):
		return guestUser{}, fmt.Errorf("user %q: no such user in the guest: %w", name, os.ErrNotExist)
	case err != nil:
		return guestUser{}, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return guestUser{}, fmt.Errorf("user %q: uid %q, gid %q: %w", name, u.Uid, u.Gid, os.ErrInvalid)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	// Its supplementary groups, as login and setpriv --init-groups give
	// them; none (setgroups of none: not root's) where /etc/group
	// cannot be read.
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	home := u.HomeDir
	if home == "" {
		home = "/"
	}
	return guestUser{cred: cred, home: home, env: []string{"HOME=" + home, "USER=" + u.Username, "LOGNAME=" + u.Username}}, nil
}
