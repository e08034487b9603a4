package app

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/leadstream/leadstream/internal/config"
)

// Main is the whole program behind server.go: flags, configuration, the
// gateway (or the demo), until ctx ends.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	demo := fs.Bool("demo", false, "also run a fake Marketo producing lead activities, with a demo organization and instance")
	fake := fs.String("fake-marketo", "", "run only a fake Marketo on this address (for example 127.0.0.1:9090) to provision against")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *fake != "" {
		return runFakeMarketo(ctx, *fake, stdout)
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	if *demo {
		return runDemo(ctx, cfg, stdout, stderr)
	}
	a, err := New(ctx, cfg, stdout, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Run(ctx, nil); err != nil {
		return fmt.Errorf("%w", err)
	}
	return nil
}
