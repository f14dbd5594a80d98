package apiserver

import (
	"net/http"
	"strings"

	"github.com/cove-dev/cove/api"
)

// templateList is the answer of GET /v1/templates.
type templateList struct {
	Templates []api.Template `json:"templates"`
}

// createTemplate answers once the template is built: boot, setup and save
// take seconds to minutes, so the server's deadlines are lifted.
func (s *Server) createTemplate(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateTemplateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := validateCreateTemplate(req); err != nil {
		return err
	}
	if id, _, ok := strings.Cut(req.FromCheckpoint, ":"); ok {
		// The template holds the session's whole machine: taking it is
		// the session's checkpoint action.
		if err := s.decide(r.Context(), Action{Verb: "session.checkpoint", SessionID: id}); err != nil {
			return err
		}
	}
	liftDeadlines(w)
	t, err := s.sessions.CreateTemplate(r.Context(), owner(r.Context()), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, t)
}

// listTemplates lists the templates the caller may read (template.get).
func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) error {
	list, err := s.sessions.ListTemplates(r.Context())
	if err != nil {
		return err
	}
	shown := make([]api.Template, 0, len(list))
	for _, t := range list {
		ok, err := s.visible(r.Context(), Action{Verb: "template.get", Template: t.Name})
		if err != nil {
			return err
		}
		if ok {
			shown = append(shown, t)
		}
	}
	return writeJSON(w, http.StatusOK, templateList{shown})
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateTemplateName("name", name); err != nil {
		return err
	}
	t, err := s.sessions.GetTemplate(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, t)
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateTemplateName("name", name); err != nil {
		return err
	}
	if err := s.sessions.DeleteTemplate(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// templateVersionList is the answer of GET /v1/templates/{name}/versions.
type templateVersionList struct {
	Versions []api.TemplateVersion `json:"versions"`
}

func (s *Server) listTemplateVersions(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateTemplateName("name", name); err != nil {
		return err
	}
	vs, err := s.sessions.TemplateVersions(r.Context(), name)
	if err != nil {
		return err
	}
	if vs == nil {
		vs = []api.TemplateVersion{}
	}
	return writeJSON(w, http.StatusOK, templateVersionList{vs})
}

// setTemplatePool sets the size of a template's warm pool.
func (s *Server) setTemplatePool(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateTemplateName("name", name); err != nil {
		return err
	}
	var req api.SetPoolRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Size == nil {
		return api.Errorf(api.CodeInvalid, "size: required (0..64)")
	}
	if *req.Size < 0 || *req.Size > 64 {
		return api.Errorf(api.CodeInvalid, "size %d: want 0..64", *req.Size)
	}
	t, err := s.sessions.SetTemplatePool(r.Context(), name, *req.Size)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, t)
}

// rebuildTemplate answers 202 at once: the build runs in the background
// and its version shows in the template's versions.
func (s *Server) rebuildTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateTemplateName("name", name); err != nil {
		return err
	}
	t, err := s.sessions.RebuildTemplate(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, t)
}
