package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"

	"github.com/leadstream/leadstream/internal/apperr"
)

// MaxBody is the largest request body accepted, like every other input.
const MaxBody = 1 << 20

func badInput(format string, args ...any) error {
	return apperr.New(apperr.BadUserInput, format, args...)
}

// decode reads a JSON object body into v (a pointer to a struct). Every
// field not in v is an error naming them all; so is a body over MaxBody.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return badInput("could not read the body")
	}
	if len(body) > MaxBody {
		return badInput("the body is over 1 MiB")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badInput("the body is empty; send a JSON object")
	}
	var unknown []string
	if err := unknownFields(body, reflect.TypeOf(v).Elem(), "", &unknown); err != nil {
		return err
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		inv := make(map[string]string, len(unknown))
		for _, k := range unknown {
			inv[k] = "unknown field"
		}
		return &apperr.Error{Code: apperr.BadUserInput, Message: "unknown field(s) in the body: " + strings.Join(unknown, ", "), Invalid: inv}
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return &apperr.Error{Code: apperr.BadUserInput, Message: fmt.Sprintf("%s must be %s, not %s", te.Field, kind(te.Type), te.Value),
				Invalid: map[string]string{te.Field: "must be " + kind(te.Type)}}
		}
		return badInput("the body is not valid JSON")
	}
	return nil
}

var rawType = reflect.TypeOf(json.RawMessage(nil))

// unknownFields collects the keys of a JSON object (recursively, for
// nested objects) that t has no field for; json.RawMessage takes anything.
func unknownFields(raw []byte, t reflect.Type, prefix string, out *[]string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		if prefix == "" {
			if json.Valid(raw) {
				return badInput("the body must be a JSON object")
			}
			return badInput("the body is not valid JSON")
		}
		return nil // a type mismatch, reported when decoding
	}
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = f.Type
		}
	}
	for k, v := range obj {
		ft, ok := fields[k]
		if !ok {
			*out = append(*out, prefix+k)
			continue
		}
		if ft != rawType && string(v) != "null" {
			if err := unknownFields(v, ft, prefix+k+".", out); err != nil {
				return err
			}
		}
	}
	return nil
}

// kind names a Go type in JSON's words.
func kind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Pointer:
		return kind(t.Elem())
	default:
		return "a number"
	}
}
