package systemd

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/meshx/meshx/internal/atomicfile"
)

// Instance is one meshx-proxy@ instance meshx-init wants enabled and running.
type Instance struct {
	// Service is the service name (not escaped); it names the instance.
	Service string
	// TransparentProxy gives the instance CAP_NET_ADMIN and netlink through a
	// runtime drop-in; false removes that drop-in.
	TransparentProxy bool
	// Namespace runs the instance in the service's network namespace: its
	// meshx-netns@ unit is started (and waited for) first, and the drop-in
	// joins the instance to it.
	Namespace bool
}

// Action is what Reconcile did for one instance.
type Action struct {
	Service string // service name
	Unit    string // meshx-proxy@<escaped service>.service
	Did     string // one of the Did* constants
	Err     error  // nil when Did fully happened
}

// What an Action did.
const (
	// DidStarted: enabled, start job finished with "done" (the proxy sent READY=1).
	DidStarted = "started"
	// DidStartQueued: enabled, start job enqueued but not waited for, because
	// the instance is ordered after the unit this process is starting in
	// (meshx-init.service at boot); waiting would deadlock.
	DidStartQueued = "start queued"
	// DidAlreadyActive: enabled and already running with the right drop-ins.
	DidAlreadyActive = "already active"
	// DidRestarted: its drop-in changed (transparent proxy turned on or off),
	// so it was restarted to pick that up.
	DidRestarted = "restarted"
	// DidStoppedDisabled: no longer wanted: stopped, disabled, drop-in removed.
	DidStoppedDisabled = "stopped+disabled"
)

// Bus is the part of go-systemd's *dbus.Conn that Reconcile uses (tests fake it).
type Bus interface {
	ListUnitsByPatternsContext(ctx context.Context, states, patterns []string) ([]sdbus.UnitStatus, error)
	GetUnitPropertyContext(ctx context.Context, unit, property string) (*sdbus.Property, error)
	GetUnitNameByPID(ctx context.Context, pid uint32) (string, error)
	EnableUnitFilesContext(ctx context.Context, files []string, runtime, force bool) (bool, []sdbus.EnableUnitFileChange, error)
	DisableUnitFilesContext(ctx context.Context, files []string, runtime bool) ([]sdbus.DisableUnitFileChange, error)
	ReloadContext(ctx context.Context) error
	StartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	StopUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	RestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	ReloadOrRestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	ResetFailedUnitContext(ctx context.Context, name string) error
}

// Options tune ReconcileWith. The zero value is what Reconcile uses.
type Options struct {
	// Bus is the connection to systemd. Nil means Dial one and close it at the end.
	Bus Bus
	// Log gets one line per action. Nil discards.
	Log *slog.Logger
	// UnitDir is where enablement symlinks live (<target>.wants/); instances
	// enabled there but not loaded are found through it. "" means
	// /etc/systemd/system.
	UnitDir string
	// RuntimeDir is where the per-instance runtime drop-ins are written (and
	// found). "" means /run/systemd/system.
	RuntimeDir string
	// JobTimeout bounds the wait for the stop jobs and for the start and restart
	// jobs together. Zero means 2 minutes.
	JobTimeout time.Duration
	// PID is the process whose unit is checked for being mid-start (so that no
	// job ordered after it is waited for). Zero means this process.
	PID int
}

func (o *Options) defaults() {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.UnitDir == "" {
		o.UnitDir = "/etc/systemd/system"
	}
	if o.RuntimeDir == "" {
		o.RuntimeDir = "/run/systemd/system"
	}
	if o.JobTimeout == 0 {
		o.JobTimeout = 2 * time.Minute
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
}

// Dial connects to the systemd manager: over the system bus, else (root only)
// over systemd's private socket.
func Dial(ctx context.Context) (*sdbus.Conn, error) {
	conn, err := sdbus.NewWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
	}
	return conn, nil
}

// Reconcile makes the meshx-proxy@ instances match want: each wanted instance is
// enabled (WantedBy=multi-user.target, so it comes back at boot), given or rid of
// its transparent-proxy drop-in, and started (restarted when the drop-in
// changed); every other meshx-proxy@ instance that is loaded, enabled or has a
// drop-in is stopped, disabled and its drop-in removed.
//
// Start jobs are waited for (their result must be "done": the proxy is ready),
// except when the instance is ordered after the unit this process is starting
// in — at boot meshx-proxy@ is After=meshx-init.service and meshx-init.service is
// a oneshot still starting, so that wait could never end; those are enqueued
// only (DidStartQueued).
//
// One Action is returned per instance touched, in service order. err joins every
// Action's error with any failure that stopped the whole run; the Actions
// returned are valid either way.
func Reconcile(ctx context.Context, want []Instance, log *slog.Logger) ([]Action, error) {
	return ReconcileWith(ctx, want, Options{Log: log})
}

// ReconcileWith is Reconcile with options.
func ReconcileWith(ctx context.Context, want []Instance, o Options) ([]Action, error) {
	if err := validate(want); err != nil {
		return nil, fmt.Errorf("reconcile meshx-proxy@ units: %w", err)
	}
	o.defaults()
	if o.Bus == nil {
		conn, err := Dial(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		o.Bus = conn
	}
	r := &reconciler{Options: o}
	return r.run(ctx, want)
}

type reconciler struct {
	Options
	reload bool // unit files or drop-ins changed: daemon-reload before starting
}

// plan is the state of one wanted instance while it is reconciled.
type plan struct {
	Action
	in      Instance
	restart bool // drop-in changed while it ran: restart it
	stopped bool // stopped to remove its drop-in: start it again
	// leftNetns: its service no longer has a namespace of its own; the
	// namespace's meshx-netns@ unit is stopped once the instance runs without.
	leftNetns bool
	job       string // "start" or "restart" once enqueued
	wait      bool
	ch        chan string
}

func (r *reconciler) run(ctx context.Context, want []Instance) ([]Action, error) {
	present, err := r.present(ctx)
	if err != nil {
		return nil, err
	}
	wanted := make(map[string]bool, len(want))
	for _, in := range want {
		wanted[UnitName(in.Service)] = true
	}

	var actions []Action
	for _, u := range present {
		if wanted[u] {
			continue
		}
		svc, _ := ServiceOf(u)
		a := Action{Service: svc, Unit: u, Did: DidStoppedDisabled}
		a.Err = r.retire(ctx, u)
		r.logAction(a)
		actions = append(actions, a)
	}

	plans := make([]*plan, 0, len(want))
	for _, in := range want {
		p := &plan{in: in, Action: Action{Service: in.Service, Unit: UnitName(in.Service)}}
		p.Err = r.syncDropIn(ctx, p)
		plans = append(plans, p)
	}
	slices.SortFunc(plans, func(a, b *plan) int { return cmp.Compare(a.Service, b.Service) })

	r.enable(ctx, plans)
	if r.reload {
		if err := r.Bus.ReloadContext(ctx); err != nil {
			err = fmt.Errorf("daemon-reload: %w", err)
			for _, p := range plans {
				p.Err = errors.Join(p.Err, err)
			}
		}
	}

	r.startNetns(ctx, plans)
	self := r.selfStarting(ctx)
	for _, p := range plans {
		if p.Err == nil {
			p.Err = r.startOrRestart(ctx, p, self)
		}
	}
	r.waitJobs(ctx, plans)
	for _, p := range plans {
		if p.leftNetns {
			p.Err = errors.Join(p.Err, r.stop(ctx, NetnsUnitName(p.Service)))
		}
	}

	var errs []error
	for _, a := range actions {
		errs = append(errs, a.Err)
	}
	for _, p := range plans {
		r.logAction(p.Action)
		actions = append(actions, p.Action)
		errs = append(errs, p.Err)
	}
	slices.SortStableFunc(actions, func(a, b Action) int { return cmp.Compare(a.Service, b.Service) })
	return actions, errors.Join(errs...)
}

// present lists every meshx-proxy@ instance meshx may have to act on: loaded and
// not simply inactive, enabled, or carrying a meshx drop-in.
func (r *reconciler) present(ctx context.Context) ([]string, error) {
	set := map[string]bool{}
	units, err := r.Bus.ListUnitsByPatternsContext(ctx, nil, []string{proxyPrefix + "*" + unitSuffix})
	if err != nil {
		return nil, fmt.Errorf("list meshx-proxy@ units: %w", err)
	}
	for _, u := range units {
		if _, ok := ServiceOf(u.Name); !ok {
			continue
		}
		if u.ActiveState != "inactive" || u.JobId != 0 {
			set[u.Name] = true
		}
	}
	globs := []string{
		filepath.Join(r.UnitDir, "*.wants", proxyPrefix+"*"+unitSuffix),
		filepath.Join(r.UnitDir, "*.requires", proxyPrefix+"*"+unitSuffix),
		filepath.Join(r.RuntimeDir, proxyPrefix+"*"+unitSuffix+".d", dropInName),
	}
	for _, g := range globs {
		matches, _ := filepath.Glob(g) // the patterns are well-formed
		for _, m := range matches {
			name := filepath.Base(m)
			if name == dropInName {
				name = filepath.Base(filepath.Dir(m))
				name = name[:len(name)-len(".d")]
			}
			if _, ok := ServiceOf(name); ok {
				set[name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

// retire stops, disables and un-drop-ins an instance that is no longer wanted.
func (r *reconciler) retire(ctx context.Context, u string) error {
	var errs []error
	if err := r.stopInstance(ctx, u); err != nil {
		errs = append(errs, err)
	}
	if _, err := r.Bus.DisableUnitFilesContext(ctx, []string{u}, false); err != nil {
		errs = append(errs, fmt.Errorf("disable %s: %w", u, err))
	}
	r.reload = true
	if state, err := r.activeState(ctx, u); err == nil && state == "failed" {
		if err := r.Bus.ResetFailedUnitContext(ctx, u); err != nil {
			errs = append(errs, fmt.Errorf("reset-failed %s: %w", u, err))
		}
	}
	if err := r.removeDropIn(u); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// startNetns starts the meshx-netns@ unit of every namespaced instance, or
// reloads it when it is active (its ExecReload is `netns up` again: CNI CHECK,
// and a repair when the namespace is broken or the plan changed it), all jobs
// enqueued at once, and waits for them: they are not ordered after
// meshx-init, so this cannot deadlock at boot, and each instance that joins a
// namespace starts only once it exists. A failure is its instance's error.
func (r *reconciler) startNetns(ctx context.Context, plans []*plan) {
	chs := map[*plan]chan string{}
	for _, p := range plans {
		if p.Err != nil || !p.in.Namespace {
			continue
		}
		u := NetnsUnitName(p.Service)
		ch := make(chan string, 1)
		if _, err := r.Bus.ReloadOrRestartUnitContext(ctx, u, "replace", ch); err != nil {
			p.Err = fmt.Errorf("start %s: %w", u, err)
			continue
		}
		chs[p] = ch
	}
	ctx, cancel := context.WithTimeout(ctx, r.JobTimeout)
	defer cancel()
	for _, p := range plans {
		ch, ok := chs[p]
		if !ok {
			continue
		}
		u := NetnsUnitName(p.Service)
		select {
		case res := <-ch:
			if res != "done" {
				p.Err = fmt.Errorf("start %s: job %s (see journalctl -u %s)", u, res, u)
			}
		case <-ctx.Done():
			p.Err = fmt.Errorf("start %s: job not finished: %w", u, ctx.Err())
		}
	}
}

// stopInstance stops a meshx-proxy@ instance and then, when its drop-in
// joins it to a network namespace, that namespace's meshx-netns@ unit
// (whose stop removes the namespace with CNI DEL).
func (r *reconciler) stopInstance(ctx context.Context, u string) error {
	if err := r.stop(ctx, u); err != nil {
		return err
	}
	cur, err := os.ReadFile(r.dropInPath(u))
	if err != nil || !bytes.Contains(cur, []byte("NetworkNamespacePath=")) {
		return nil
	}
	svc, _ := ServiceOf(u)
	return r.stop(ctx, NetnsUnitName(svc))
}

// stop stops a unit and waits (bounded) for the stop job. Stop jobs never wait
// for a unit that is starting, so this cannot deadlock.
func (r *reconciler) stop(ctx context.Context, u string) error {
	ch := make(chan string, 1)
	if _, err := r.Bus.StopUnitContext(ctx, u, "replace", ch); err != nil {
		return fmt.Errorf("stop %s: %w", u, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.JobTimeout)
	defer cancel()
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("stop %s: job %s", u, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: job not finished: %w", u, ctx.Err())
	}
}

// syncDropIn writes or removes the instance's transparent-proxy drop-in, and
// notes whether the running instance must be restarted to pick the change up.
// Removing it from a running instance stops the instance first, so its
// ExecStopPost cleanup still has CAP_NET_ADMIN to remove the iptables rules.
func (r *reconciler) syncDropIn(ctx context.Context, p *plan) error {
	path := r.dropInPath(p.Unit)
	cur, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read drop-in of %s: %w", p.Unit, err)
	}
	_, content := DropIn(p.in)
	p.leftNetns = !p.in.Namespace && bytes.Contains(cur, []byte("NetworkNamespacePath="))
	_, lerr := os.Stat(filepath.Join(filepath.Dir(path), legacyDropInName))
	if bytes.Equal(cur, []byte(content)) && lerr != nil {
		return nil
	}
	state, err := r.activeState(ctx, p.Unit)
	if err != nil {
		return err
	}
	running := state != "inactive" && state != "failed"
	if content == "" {
		if running {
			if err := r.stopInstance(ctx, p.Unit); err != nil {
				return err
			}
			p.stopped = true
		}
		if err := r.removeDropIn(p.Unit); err != nil {
			return err
		}
		r.reload = true
		return nil
	}
	if _, err := atomicfile.Write(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write drop-in of %s: %w", p.Unit, err)
	}
	_ = os.Remove(filepath.Join(filepath.Dir(path), legacyDropInName)) // replaced by this one
	r.reload = true
	p.restart = running
	return nil
}

func (r *reconciler) dropInPath(u string) string {
	return filepath.Join(r.RuntimeDir, u+".d", dropInName)
}

// removeDropIn removes meshx's drop-in of u, and its directory if that is then
// empty (an administrator's own drop-ins stay).
func (r *reconciler) removeDropIn(u string) error {
	path := r.dropInPath(u)
	for _, p := range []string{path, filepath.Join(filepath.Dir(path), legacyDropInName)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove drop-in of %s: %w", u, err)
		}
	}
	if err := os.Remove(filepath.Dir(path)); err == nil {
		r.reload = true
	}
	return nil
}

// enable enables every wanted instance in one call.
func (r *reconciler) enable(ctx context.Context, plans []*plan) {
	var units []string
	for _, p := range plans {
		if p.Err == nil {
			units = append(units, p.Unit)
		}
	}
	if len(units) == 0 {
		return
	}
	_, changes, err := r.Bus.EnableUnitFilesContext(ctx, units, false, false)
	if err != nil {
		err = fmt.Errorf("enable: %w", err)
		for _, p := range plans {
			if p.Err == nil {
				p.Err = err
			}
		}
		return
	}
	if len(changes) > 0 {
		r.reload = true
	}
}

// selfStarting returns the unit this process runs in when that unit is itself
// starting or reloading (so jobs ordered after it cannot finish before we
// return), else "".
func (r *reconciler) selfStarting(ctx context.Context) string {
	self, err := r.Bus.GetUnitNameByPID(ctx, uint32(r.PID))
	if err != nil || self == "" {
		return ""
	}
	state, err := r.activeState(ctx, self)
	if err != nil || (state != "activating" && state != "reloading") {
		return ""
	}
	return self
}

func (r *reconciler) startOrRestart(ctx context.Context, p *plan, self string) error {
	state, err := r.activeState(ctx, p.Unit)
	if err != nil {
		return err
	}
	// "activating" (a queued boot job running, or an automatic restart) and
	// "deactivating" get a start job too: it merges with or follows theirs.
	up := state == "active" || state == "reloading"
	switch {
	case p.restart && state != "inactive" && state != "failed":
		p.job, p.Did = "restart", DidRestarted
	case up:
		p.Did = DidAlreadyActive
		return nil
	case p.stopped:
		p.job, p.Did = "start", DidRestarted
	default:
		p.job, p.Did = "start", DidStarted
	}
	if state == "failed" {
		// A unit that hit its start limit refuses to start until reset.
		if err := r.Bus.ResetFailedUnitContext(ctx, p.Unit); err != nil {
			return fmt.Errorf("reset-failed %s: %w", p.Unit, err)
		}
	}
	p.wait = true
	if self != "" {
		after, err := r.after(ctx, p.Unit)
		if err != nil || slices.Contains(after, self) {
			p.wait = false // see Reconcile: waiting here would deadlock
		}
	}
	p.ch = make(chan string, 1)
	if p.job == "restart" {
		_, err = r.Bus.RestartUnitContext(ctx, p.Unit, "replace", p.ch)
	} else {
		_, err = r.Bus.StartUnitContext(ctx, p.Unit, "replace", p.ch)
	}
	if err != nil {
		p.wait = false
		return fmt.Errorf("%s %s: %w", p.job, p.Unit, err)
	}
	if !p.wait && p.Did == DidStarted {
		p.Did = DidStartQueued
	}
	return nil
}

// waitJobs waits, all under one JobTimeout, for the jobs enqueued to be waited for.
func (r *reconciler) waitJobs(ctx context.Context, plans []*plan) {
	ctx, cancel := context.WithTimeout(ctx, r.JobTimeout)
	defer cancel()
	for _, p := range plans {
		if !p.wait {
			continue
		}
		select {
		case res := <-p.ch:
			if res != "done" {
				p.Err = fmt.Errorf("%s %s: job %s (see journalctl -u %s)", p.job, p.Unit, res, p.Unit)
			}
		case <-ctx.Done():
			p.Err = fmt.Errorf("%s %s: job not finished after %s: %w", p.job, p.Unit, r.JobTimeout, ctx.Err())
		}
	}
}

func (r *reconciler) activeState(ctx context.Context, u string) (string, error) {
	prop, err := r.Bus.GetUnitPropertyContext(ctx, u, "ActiveState")
	if err != nil {
		return "", fmt.Errorf("state of %s: %w", u, err)
	}
	s, ok := prop.Value.Value().(string)
	if !ok {
		return "", fmt.Errorf("state of %s: unexpected %s", u, prop.Value.Signature())
	}
	return s, nil
}

func (r *reconciler) after(ctx context.Context, u string) ([]string, error) {
	prop, err := r.Bus.GetUnitPropertyContext(ctx, u, "After")
	if err != nil {
		return nil, fmt.Errorf("ordering of %s: %w", u, err)
	}
	after, ok := prop.Value.Value().([]string)
	if !ok {
		return nil, fmt.Errorf("ordering of %s: unexpected %s", u, prop.Value.Signature())
	}
	return after, nil
}

func (r *reconciler) logAction(a Action) {
	if a.Err != nil {
		r.Log.Error("meshx-proxy unit", "service", a.Service, "unit", a.Unit, "did", a.Did, "err", a.Err)
		return
	}
	r.Log.Info("meshx-proxy unit", "service", a.Service, "unit", a.Unit, "did", a.Did)
}
