//go:build tools

// Package tools pins the code generators `make generate` runs, so go.mod records their versions.
package tools

import (
	_ "github.com/99designs/gqlgen"
)
