package e2b

import (
	"context"
	"regexp"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

// Snapshots that outlive their sandbox. A checkpoint goes with its
// session, and an E2B snapshot outlives its sandbox: so when a sandbox
// is removed (kill, or its end time), each of its snapshots is first made
// a cove template (from_checkpoint: the checkpoint's memory, processes
// and disk, copied out of the session), named keptPrefix+SANDBOX+"."+NAME
// and owned by the sandbox's owner. The snapshot keeps its id,
// SANDBOX:NAME: listSnapshots lists it, a create from it is a create
// from that template (a clone, as a snapshot's create is a fork), and
// deleteSnapshot deletes the template. cove sees them as the templates
// they are (cove template ls). A snapshot whose template name would be
// over 64 characters (a name over 43) is not kept, and the log says so.

// keptPrefix starts the names of the templates that keep snapshots.
const keptPrefix = "snap."

// templateNameRE is cove's template name rule (session.CreateTemplate's).
var templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// keptName is the template keeping snapshot name of sandbox id.
func keptName(id, name string) (string, bool) {
	t := keptPrefix + id + "." + name
	return t, templateNameRE.MatchString(t) && !strings.Contains(id, ".")
}

// parseKept reads a template name made by keptName.
func parseKept(t string) (id, name string, ok bool) {
	rest, ok := strings.CutPrefix(t, keptPrefix)
	if !ok {
		return "", "", false
	}
	id, name, ok = strings.Cut(rest, ".")
	return id, name, ok && id != "" && name != ""
}

// keepSnapshots makes a template of each snapshot of the sandbox id,
// about to be removed. One it cannot keep is logged and lost, as the
// removal goes on.
func (s *Server) keepSnapshots(ctx context.Context, id string) {
	ss, err := s.cfg.Sessions.Get(ctx, id)
	if err != nil {
		return // gone already: the removal says so
	}
	cs, err := s.cfg.Sessions.ListCheckpoints(ctx, id)
	if err != nil {
		s.log.WarnContext(ctx, "e2b: list the snapshots of a sandbox being removed: they go with it", "session", id, "err", err)
		return
	}
	for _, c := range cs {
		if strings.HasPrefix(c.Name, "fork-") {
			continue // a fork's own checkpoint, no snapshot
		}
		name, ok := keptName(id, c.Name)
		if !ok {
			s.log.WarnContext(ctx, "e2b: a snapshot's name is too long to keep it as a template: it goes with its sandbox", "session", id, "snapshot", c.Name)
			continue
		}
		if err := s.announce(ctx, audit.Actor{Kind: audit.ActorCove}, "template.create", audit.Target{Session: id, Template: name}); err != nil {
			s.log.WarnContext(ctx, "e2b: keep a snapshot: not recorded in the audit log, so not kept", "session", id, "snapshot", c.Name, "err", err)
			continue
		}
		if _, err := s.cfg.Sessions.CreateTemplate(ctx, ss.Owner, api.CreateTemplateRequest{Name: name, FromCheckpoint: snapshotID(id, c.Name)}); err != nil {
			s.log.WarnContext(ctx, "e2b: keep a snapshot of a sandbox being removed", "session", id, "snapshot", c.Name, "err", err)
			continue
		}
		s.log.InfoContext(ctx, "e2b: snapshot kept as a template", "session", id, "snapshot", c.Name, "template", name)
	}
}
