package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshx/meshx/internal/boot"
	"github.com/meshx/meshx/internal/term"
)

// InitMain is meshx-init.
func InitMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return execute(ctx, initRoot(stderr), args, stdout, stderr)
}

// initRoot is meshx-init's command tree; its commands log to stderr.
func initRoot(stderr io.Writer) *cobra.Command {
	var g globals
	root := &cobra.Command{
		Use:   "meshx-init",
		Short: "Bring this host's services into the Consul service mesh",
		Long: `meshx-init reads every service-config in <config-dir>/services.d, validates all
of them before touching anything, allocates local ports (kept across reboots),
registers each service with its Connect sidecar and TTL check with the local
Consul agent, and starts one meshx-proxy per service.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (usage or configuration).`,
		// Runnable with an Args check, so that an unknown command is a usage
		// error (exit 2); cobra's own check returns a plain error (exit 1).
		Args: unknownCommand,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	g.bind(root)
	withVersion(root)
	env := func(c *cobra.Command) (boot.Env, error) {
		log, err := g.logger(stderr)
		return boot.Env{Dirs: g.dirs, Log: log, Stdout: c.OutOrStdout(), Stderr: c.ErrOrStderr()}, err
	}
	root.AddCommand(validateCmd(env), renderCmd(env), runCmd(env, &g), statusCmd(env),
		stopCmd(env), connectCmd(env), disconnectCmd(env), versionCmd(), netnsCmd(env))
	for _, c := range root.Commands() {
		switch c.Name() {
		case "render":
			c.ValidArgsFunction = g.completeServices(true)
		case "stop", "connect", "disconnect":
			c.ValidArgsFunction = g.completeServices(false)
		}
	}
	return root
}

// unknownCommand refuses arguments to the root command, which are a
// mistyped subcommand.
func unknownCommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return usageError{errors.New(msg)}
}

type envFunc func(*cobra.Command) (boot.Env, error)

// withEnv gives a command's body the Env its flags describe.
func withEnv(env envFunc, body func(c *cobra.Command, e boot.Env, args []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		e, err := env(c)
		if err != nil {
			return err
		}
		return body(c, e, args)
	}
}

func validateCmd(env envFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check meshx.yaml and every service-config; change nothing",
		Args:  exactArgs(0, "no arguments"),
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, _ []string) error {
			l, err := boot.Load(e, true)
			if err != nil {
				return err
			}
			for _, pl := range l.Plans {
				fmt.Fprintf(e.Stdout, "ok\t%s\t%s\t%s\n", pl.File, pl.Name, pl.ID)
			}
			if len(l.Set.Broken) > 0 {
				return l.Set.Err()
			}
			return nil
		}),
	}
}

func renderCmd(env envFunc) *cobra.Command {
	var diff bool
	c := &cobra.Command{
		Use:   "render [service...]",
		Short: "Print each service's final registration JSON and proxy argv; change nothing",
		Long: `render prints, for each service (or those named), the registration meshx
would send to the agent and the proxy argv meshx-proxy would run. It changes
nothing.

With --diff it asks the agent instead and prints what "meshx-init run" would
change there: for each service "register", "update", "unchanged" or "refused"
(registered by someone else), and the fields that would change
("+ field: new", "- field: old", "~ field: old -> new"); then each owned
registration a run would deregister.`,
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, args []string) error {
			if diff {
				return boot.Diff(c.Context(), e, args)
			}
			l, err := boot.Load(e, true)
			if err != nil {
				return err
			}
			want := map[string]bool{}
			for _, a := range args {
				want[a] = true
			}
			out := []any{} // "[]", not "null", when nothing matches
			for _, pl := range l.Plans {
				if len(args) == 0 || want[pl.Name] {
					v := map[string]any{"service": pl.Name, "file": pl.File,
						"registration": pl.Registration, "proxy_argv": pl.Proxy.Argv, "upstreams": pl.Upstreams}
					if pl.Netns != nil {
						v["netns"] = boot.NetnsView(pl.Netns)
					}
					out = append(out, v)
				}
			}
			enc := json.NewEncoder(e.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return err
			}
			if len(l.Set.Broken) > 0 {
				return l.Set.Err()
			}
			return nil
		}),
	}
	c.Flags().BoolVar(&diff, "diff", false, "show what a run would change against what the agent has")
	return c
}

func runCmd(env envFunc, g *globals) *cobra.Command {
	var o boot.RunOptions
	c := &cobra.Command{
		Use:   "run",
		Short: "The boot job: register every service and start its meshx-proxy",
		Long: `run validates everything, registers each valid service with the local agent
(retrying while the agent is unreachable), deregisters services whose config is
gone, and starts meshx-proxy@<service>.service units over D-Bus. A broken
service-config blocks only its own service; run then exits 2 after bringing up
the others. With --foreground it instead supervises one meshx-proxy child per
service and stays up until SIGINT or SIGTERM (hosts without systemd).`,
		Args: exactArgs(0, "no arguments"),
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, _ []string) error {
			switch o.Systemd {
			case "auto", "yes", "no":
			default:
				return usageError{fmt.Errorf("--systemd must be auto, yes or no, not %q", o.Systemd)}
			}
			o.ProxyArgs = []string{"--config-dir", g.dirs.Config, "--state-dir", g.dirs.State,
				"--runtime-dir", g.dirs.Runtime, "--log-level", g.logLevel}
			return boot.Run(c.Context(), e, o)
		}),
	}
	c.Flags().BoolVar(&o.Force, "force", false, "take over services with the same id registered by someone else")
	c.Flags().StringVar(&o.Systemd, "systemd", "auto", "start meshx-proxy@ units: auto, yes or no")
	c.Flags().BoolVar(&o.Foreground, "foreground", false, "supervise meshx-proxy children until SIGINT/SIGTERM")
	c.Flags().StringVar(&o.ProxyBinary, "proxy-binary", "", "meshx-proxy binary for --foreground (default: next to meshx-init, else PATH)")
	return c
}

func statusCmd(env envFunc) *cobra.Command {
	var o boot.StatusOptions
	var watch bool
	c := &cobra.Command{
		Use:   "status",
		Short: "One row per owned service: id, ports, check, meshx-proxy and proxy pids, restarts",
		Long: `status shows one row per service meshx owns here: its id and ports, its check
in the agent, its meshx-proxy's and proxy's pids and the proxy's restarts.

On a terminal the check's state is coloured (unless NO_COLOR is set); piped,
the output has no colour codes. With --watch it refreshes every --interval
until Ctrl-C: on a terminal in place, piped one table after another.`,
		Args: exactArgs(0, "no arguments"),
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, _ []string) error {
			if !watch {
				o.Watch = 0
			} else if o.Watch <= 0 {
				return usageError{fmt.Errorf("--interval must be positive, not %s", o.Watch)}
			}
			o.Color = term.Color(e.Stdout)
			o.Clear = watch && term.IsTerminal(e.Stdout)
			return boot.Status(c.Context(), e, o)
		}),
	}
	c.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	c.Flags().BoolVar(&watch, "watch", false, "refresh until Ctrl-C")
	c.Flags().DurationVar(&o.Watch, "interval", 2*time.Second, "how often --watch refreshes")
	return c
}

func stopCmd(env envFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "stop <service>",
		Short: "Stop a service's meshx-proxy and deregister it (ports stay allocated)",
		Args:  exactArgs(1, "one service name"),
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, args []string) error {
			return boot.Stop(c.Context(), e, args[0])
		}),
	}
}

func netnsCmd(env envFunc) *cobra.Command {
	c := &cobra.Command{
		Use:   "netns",
		Short: "Set up or remove a service's network namespace (what meshx-netns@<service> runs)",
		Args:  exactArgs(0, "up or down"),
		RunE:  func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	for _, v := range []struct {
		verb, short string
		do          func(context.Context, boot.Env, string) error
	}{
		{"up", "Create the namespace with CNI ADD, or check it (CNI CHECK) and leave it", boot.NetnsUp},
		{"down", "Remove the namespace with CNI DEL", boot.NetnsDown},
	} {
		c.AddCommand(&cobra.Command{
			Use:   v.verb + " <service>",
			Short: v.short,
			Args:  exactArgs(1, "one service name"),
			RunE: withEnv(env, func(c *cobra.Command, e boot.Env, args []string) error {
				return v.do(c.Context(), e, args[0])
			}),
		})
	}
	return c
}

func connectCmd(env envFunc) *cobra.Command {
	return upstreamsCmd(env, "connect", "Add upstreams (name[:port[:datacenter]]) to a running service; prints each local address", boot.Connect)
}

func disconnectCmd(env envFunc) *cobra.Command {
	return upstreamsCmd(env, "disconnect", "Remove upstreams added with connect", boot.Disconnect)
}

// upstreamsCmd is `<verb> <service> <upstream>...`.
func upstreamsCmd(env envFunc, verb, short string, do func(context.Context, boot.Env, string, []string) error) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " <service> <upstream>...",
		Short: short,
		Args:  minArgs(2, "a service name and at least one upstream"),
		RunE: withEnv(env, func(c *cobra.Command, e boot.Env, args []string) error {
			return do(c.Context(), e, args[0], args[1:])
		}),
	}
}
