package app

import (
	"context"
	"fmt"
	"io"

	"github.com/leadstream/leadstream/internal/config"
)

func runDemo(ctx context.Context, cfg config.Config, stdout, stderr io.Writer) error {
	return fmt.Errorf("demo: not built yet")
}
