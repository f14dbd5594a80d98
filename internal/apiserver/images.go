package apiserver

import (
	"net/http"

	"github.com/cove-dev/cove/api"
)

// imageList is the answer of GET /v1/images.
type imageList struct {
	Images []api.Image `json:"images"`
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	if s.images == nil {
		return api.Errorf(api.CodeUnavailable, "image.list: this server has no image builder")
	}
	list, err := s.images.List(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.Image{}
	}
	return writeJSON(w, http.StatusOK, imageList{list})
}

// buildImage streams the build's progress as NDJSON api.ImageBuildEvent
// lines; the last one is "done" or "error".
func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := validateImageName("name", name); err != nil {
		return err
	}
	if s.images == nil {
		return api.Errorf(api.CodeUnavailable, "image.build: this server has no image builder")
	}
	// Once the stream starts the status is 200; what is known to fail
	// must fail before.
	if err := s.images.Known(name); err != nil {
		return err
	}
	liftDeadlines(w)
	out := startNDJSON(w)
	defer out.close()
	img, err := s.images.Build(r.Context(), name, func(msg string) {
		_ = out.send(api.ImageBuildEvent{Type: "progress", Message: msg})
	})
	if err != nil {
		body := s.errorBody(r.Context(), "image.build", err)
		_ = out.send(api.ImageBuildEvent{Type: "error", Error: &body})
		return reported(err)
	}
	return reported(out.send(api.ImageBuildEvent{Type: "done", Image: &img}))
}
