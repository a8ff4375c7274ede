// Package cli holds meshx's two command lines. Each entry point takes its
// arguments and output streams and returns an exit code, so tests call them
// directly; the mains only wire signals and os.Exit.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/meshx/meshx/internal/boot"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/sidecar"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/supervisor"
	"github.com/meshx/meshx/internal/systemd"
	"github.com/meshx/meshx/internal/version"
)

// Exit codes, the same for both commands.
const (
	ExitOK      = 0 // done
	ExitFailure = 1 // runtime failure (agent unreachable, registration refused, ...)
	ExitInvalid = 2 // bad input: usage, configuration (nothing was changed)
	// ExitGaveUp: meshx-proxy restarted its proxy max_restarts times and gave
	// up; its check stays critical with the reason. The unit does not restart
	// on it (RestartPreventExitStatus=), so it shows failed in systemctl, and
	// `systemctl restart` (within any start limit) starts it afresh.
	ExitGaveUp = 3
)

// Guard runs a main and turns a panic in it into a runtime failure: the
// stack on stderr and exit 1, never the 2 Go's runtime exits with, which for
// meshx means "bad input, nothing changed" and which systemd does not restart.
func Guard(name string, stderr io.Writer, main func() int) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "%s: internal error: panic: %v\n%s", name, r, debug.Stack())
			code = ExitFailure
		}
	}()
	return main()
}

// globals are the flags every command shares.
type globals struct {
	dirs     state.Dirs
	logLevel string
}

func (g *globals) bind(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&g.dirs.Config, "config-dir", "/etc/meshx", "directory holding meshx.yaml and services.d/")
	f.StringVar(&g.dirs.State, "state-dir", "/var/lib/meshx", "persistent state: rendered plans, allocated ports")
	f.StringVar(&g.dirs.Runtime, "runtime-dir", "/run/meshx", "runtime state: live meshx-proxy status")
	f.StringVar(&g.logLevel, "log-level", "info", "debug, info, warn or error")
}

// completeServices completes a service name: one with a rendered plan in
// --state-dir. Only the first argument is a service, unless every is.
func (g *globals) completeServices(every bool) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 && !every {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		names, _ := g.dirs.PlanNames()
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func (g *globals) logger(w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	return slog.New(systemd.LogHandler(w, lv)), nil
}

// usageError marks errors in how the command was called (exit 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return ExitOK
	case errors.As(err, &ue), errors.Is(err, config.ErrInvalid), errors.Is(err, sidecar.ErrConfig),
		errors.Is(err, boot.ErrUnknownService):
		return ExitInvalid
	case errors.Is(err, boot.ErrBroken):
		return ExitInvalid
	case errors.Is(err, supervisor.ErrGaveUp):
		return ExitGaveUp
	}
	return ExitFailure
}

// withVersion gives a root command --version, printing "<name> <version>".
func withVersion(root *cobra.Command) {
	root.Version = version.String()
	root.SetVersionTemplate(versionLine)
}

// versionLine is the cobra template of the --version output.
const versionLine = "{{.Name}} {{.Version}}\n"

// versionCmd is `version`: the same line as --version.
func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version this binary was built as",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(c.OutOrStdout(), "%s %s\n", c.Root().Name(), version.String())
			return err
		},
	}
}

// execute runs a cobra root with args and streams, and prints a failure once.
func execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SilenceUsage = true
	root.SilenceErrors = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	err := root.ExecuteContext(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	}
	return exitCode(err)
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s: expected %s", c.CommandPath(), what)}
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{fmt.Errorf("%s: expected %s", c.CommandPath(), what)}
		}
		return nil
	}
}
