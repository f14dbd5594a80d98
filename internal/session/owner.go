package session

import (
	"regexp"

	"github.com/cove-dev/cove/api"
)

// Every session and template records its owner and its agent. The owner
// is the id of the user whose request created it (store.OwnerAdmin for
// the admin token), passed to Create and CreateTemplate by the caller,
// which authenticated the request; the manager never guesses it. A
// clone's owner and agent are its own creator's and its own request's,
// never its template's, and a pool clone takes them when it is claimed.
// Park, wake, an event's wake and a template's rebuild keep them.

// agentName is the shape of an agent's name: the same as a template's.
var agentName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// CheckAgent refuses an agent name (field names it in the message) that
// is not lowercase letters, digits, '.', '_' or '-', at most 64, starting
// with a letter or digit. The empty name, no agent, is fine.
func CheckAgent(field, name string) error {
	if name != "" && !agentName.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "%s: %q is not an agent name (%s)", field, name, agentName)
	}
	return nil
}
