package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes, each with one HTTP status (see Status).
const (
	CodeInvalid      = "invalid_argument" // 400
	CodeUnauthorized = "unauthorized"     // 401
	CodeForbidden    = "forbidden"        // 403
	CodeNotFound     = "not_found"        // 404
	CodeConflict     = "conflict"         // 409
	// CodeTooManyRequests: the caller is over a rate limit (its answer
	// says when to try again, Retry-After).
	CodeTooManyRequests = "too_many_requests" // 429
	CodeTooLarge        = "payload_too_large" // 413
	CodeUnsupported     = "unsupported_media" // 415
	CodeInternal        = "internal"          // 500
	CodeUnavailable     = "unavailable"       // 503
	CodeTimeout         = "timeout"           // 504
	// CodeInsufficientStorage: the guest's disk is full (a write or an
	// upload found no space), or the host's has no room for a
	// checkpoint's or a fork's copies; the message says what was being
	// written.
	CodeInsufficientStorage = "insufficient_storage" // 507
)

// Error is an error with a code that maps to an HTTP status. Packages below
// the API server return it (wrapped or not) to say what kind of failure a
// client sees; anything else becomes CodeInternal.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or
// CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsCode reports whether err carries the given code.
func IsCode(err error, code string) bool { return err != nil && CodeOf(err) == code }

// Status returns the HTTP status for a code.
func Status(code string) int {
	switch code {
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeTooManyRequests:
		return http.StatusTooManyRequests
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnsupported:
		return http.StatusUnsupportedMediaType
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeTimeout:
		return http.StatusGatewayTimeout
	case CodeInsufficientStorage:
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}
