// Package e2e holds meshx's system tests: a debootstrapped Debian with the meshx
// .deb installed, a Consul agent unit and baked service-configs, booted with
// systemd-nspawn in its own network namespace, driven through nsenter.
//
// Run as root: `go test ./test/e2e/ -v` (CI=true turns a missing part into a
// failure). The root filesystem is cached by scripts/rootfs.sh, the Consul binary
// by scripts/build-consul.sh; the .deb is built from the working tree by
// `make -f mk/package.mk package` once per run (or taken from $MESHX_DEB).
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// Layout is what is baked into a machine's root filesystem before its first boot.
type Layout struct {
	// Files maps absolute paths inside the machine to their content (mode 0644;
	// parents created).
	Files map[string]string
	// Enable lists units to enable before boot (symlinks into
	// multi-user.target.wants, as `systemctl enable` makes for WantedBy=).
	Enable []string
	// ConsulAtBoot enables consul.service. False leaves it installed but disabled.
	ConsulAtBoot bool
	// RPM installs meshx's RPM (rpm --root from the host) instead of its .deb.
	RPM bool
}

// Machine is one booted (or bootable) systemd container.
type Machine struct {
	t     *testing.T
	Name  string // machine name, also the network namespace name
	Root  string // root filesystem on the host
	boots int

	mu      sync.Mutex
	nspawn  *exec.Cmd
	exited  chan struct{} // closed when the nspawn process is reaped
	initPID int           // the container's PID 1, seen from the host
	console *os.File
}

const (
	bootTimeout = 60 * time.Second
	execTimeout = 90 * time.Second
	pathEnv     = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

var (
	rootfsOnce sync.Once
	rootfsPath string
	rootfsErr  error
)

// repoRoot is the module root (two levels above this file).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// needTools skips (or fails under CI) when a real part of the harness is missing.
func needTools(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
	for _, tool := range []string{"systemd-nspawn", "nsenter", "ip", "tar", "chroot", "make"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" (apt-get install systemd-container)")
	}
}

// Deb returns the meshx .deb under test: $MESHX_DEB, else one built from this
// tree with mk/package.mk (once per test binary).
func Deb(t *testing.T) string { return buildPackage(t, "package", "MESHX_DEB", "0.0.0~e2e") }

// RPM returns the meshx RPM under test: $MESHX_RPM, else one built from this
// tree with mk/package.mk (once per test binary and version).
func RPM(t *testing.T) string { return buildPackage(t, "rpm", "MESHX_RPM", "0.0.0~e2e") }

// packageBuild is one `make <target> MESHX_VERSION=<version>`, done once.
type packageBuild struct {
	once sync.Once
	path string
	err  error
}

var (
	packageMu     sync.Mutex // one build at a time: they share the staging directory
	packageBuilds = map[string]*packageBuild{}
)

// buildPackage returns the package `make target` builds for version from
// this tree; $env, when set, is the package of version 0.0.0~e2e.
func buildPackage(t *testing.T, target, env, version string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" && version == "0.0.0~e2e" {
		_, err := os.Stat(p)
		testutil.Need(t, err == nil, "meshx package at $"+env+"="+p)
		return p
	}
	packageMu.Lock()
	defer packageMu.Unlock()
	key := target + " " + version
	b := packageBuilds[key]
	if b == nil {
		b = &packageBuild{}
		packageBuilds[key] = b
	}
	b.once.Do(func() {
		cmd := exec.Command("make", "--no-print-directory", "-f", "mk/package.mk", target, "MESHX_VERSION="+version)
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("make %s: %v\n%s", target, err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		b.path = filepath.Join(repoRoot(), lines[len(lines)-1])
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// RootfsTarball returns the cached debootstrapped root filesystem, building it
// the first time (scripts/rootfs.sh, about two minutes).
func RootfsTarball(t *testing.T) string {
	t.Helper()
	rootfsOnce.Do(func() {
		cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "rootfs.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			rootfsErr = fmt.Errorf("scripts/rootfs.sh: %v\n%s", err, stderr.Bytes())
			return
		}
		rootfsPath = strings.TrimSpace(string(out))
	})
	testutil.Need(t, rootfsErr == nil, fmt.Sprintf("debootstrapped root filesystem: %v", rootfsErr))
	return rootfsPath
}

// NewMachine unpacks a fresh copy of the cached root filesystem, installs the
// meshx .deb (dpkg -i in a chroot), the Consul binary, the example consul.service
// with a single-server agent config, and l; it creates the machine's network
// namespace. It does not boot: call Boot.
func NewMachine(t *testing.T, l Layout) *Machine {
	t.Helper()
	needTools(t)
	consul := testutil.ConsulBinary(t)

	m := scratchRoot(t)
	m.Name = "mx-" + randHex(4)
	// The package, the way an image build would install it.
	if l.RPM {
		m.installRPM(RPM(t))
	} else {
		m.installDeb(Deb(t))
	}

	// Consul: the pinned binary, a system user, the example unit, a one-server agent.
	m.linkOrCopy(consul, "/usr/bin/consul")
	m.chroot("useradd", "--system", "--user-group", "--home-dir", "/var/lib/consul", "--shell", "/usr/sbin/nologin", "consul")
	m.copyFile(filepath.Join(m.Root, "usr/share/doc/meshx/examples/consul.service"), "/etc/systemd/system/consul.service", 0o644)
	m.WriteFile("/etc/consul.d/agent.hcl", consulAgentConfig)
	if l.ConsulAtBoot {
		m.enable("consul.service")
	}
	for p, content := range l.Files {
		m.WriteFile(p, content)
	}
	for _, u := range l.Enable {
		m.enable(u)
	}

	m.host("ip", "netns", "add", m.Name)
	t.Cleanup(func() {
		// The machine is gone by now (cleanups run in reverse order).
		_ = exec.Command("ip", "netns", "del", m.Name).Run()
	})
	t.Cleanup(m.cleanup)
	return m
}

// scratchRoot unpacks a fresh copy of the cached root filesystem: a Machine
// that is not booted (no name, no network namespace) until NewMachine makes
// it one.
func scratchRoot(t *testing.T) *Machine {
	t.Helper()
	tarball := RootfsTarball(t)
	m := &Machine{t: t, Root: filepath.Join(t.TempDir(), "root")}
	if err := os.MkdirAll(m.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	m.host("tar", "--numeric-owner", "--xattrs", "-xf", tarball, "-C", m.Root)
	return m
}

// installDeb installs (or upgrades to) a .deb with dpkg in a chroot.
func (m *Machine) installDeb(deb string) string {
	m.t.Helper()
	m.copyFile(deb, "/tmp/meshx.deb", 0o644)
	defer m.chroot("rm", "/tmp/meshx.deb")
	return m.withProc("chroot", m.Root, "dpkg", "-i", "/tmp/meshx.deb")
}

// installRPM installs (or upgrades to) an RPM with the host's rpm into the
// root filesystem; rpm runs the scriptlets chrooted into it. --nodeps: the
// root's RPM database knows none of the Debian packages that provide systemd
// and glibc.
func (m *Machine) installRPM(rpm string) string {
	m.t.Helper()
	return m.withProc("rpm", "--root", m.Root, "--nodeps", "-U", rpm)
}

// withProc runs a host command with /proc mounted in the root filesystem, as
// on an image being built: systemd-tmpfiles and systemctl in the maintainer
// scripts need it. The mount lives in a mount namespace of the command's own
// and ends with it.
func (m *Machine) withProc(args ...string) string {
	m.t.Helper()
	script := `mount -t proc proc "$0/proc" && exec "$@"`
	return m.host(append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, m.Root}, args...)...)
}

// consulAgentConfig is a dev-like single server: bootstrapped alone, on
// loopback, Connect on, its data kept in /var/lib/consul across reboots. It
// joins itself: Consul sends READY=1 (consul.service is Type=notify) only after
// a successful join.
const consulAgentConfig = `server           = true
bootstrap_expect = 1
retry_join       = ["127.0.0.1"]
node_name        = "meshx-vm"
bind_addr        = "127.0.0.1"
client_addr      = "127.0.0.1"
data_dir         = "/var/lib/consul"
log_level        = "INFO"
disable_update_check = true
connect {
  enabled = true
}
ports {
  grpc = 8502
}
performance {
  raft_multiplier = 1
}
`

// Boot boots the machine (again, after PowerOff) and waits until systemd inside
// answers; it does not wait for the boot to finish (WaitSystemRunning does).
func (m *Machine) Boot() {
	m.t.Helper()
	m.mu.Lock()
	if m.nspawn != nil {
		m.mu.Unlock()
		m.t.Fatal("Boot: already running")
	}
	m.boots++
	console, err := os.Create(filepath.Join(filepath.Dir(m.Root), fmt.Sprintf("console-%d.log", m.boots)))
	if err != nil {
		m.mu.Unlock()
		m.t.Fatal(err)
	}
	// --register=no --keep-unit: no host system bus here (see docs/systemd.md).
	// CAP_NET_ADMIN: the container owns its network namespace; meshx's
	// transparent proxy (and `ip`) need it there.
	cmd := exec.Command("systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
		"--machine="+m.Name, "--directory="+m.Root, "--boot",
		"--capability=CAP_NET_ADMIN", "--network-namespace-path=/run/netns/"+m.Name,
		"--console=passive")
	cmd.Stdin = nil
	// /proc/sys/net writable, as on a VM (nspawn mounts /proc/sys read-only):
	// the CNI plugins behind network.namespace set ip_forward and
	// route_localnet. It is the container's own network namespace.
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network")
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		console.Close()
		m.mu.Unlock()
		m.t.Fatalf("start systemd-nspawn: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	m.nspawn, m.exited, m.console, m.initPID = cmd, exited, console, 0
	m.mu.Unlock()

	testutil.Eventually(m.t, bootTimeout, func() error {
		select {
		case <-exited:
			m.t.Fatalf("systemd-nspawn exited during boot:\n%s", m.consoleTail())
		default:
		}
		pid, err := containerInit(cmd.Process.Pid)
		if err != nil {
			return err
		}
		m.mu.Lock()
		m.initPID = pid
		m.mu.Unlock()
		out, err := m.Exec("systemctl", "is-system-running")
		switch strings.TrimSpace(out) {
		case "initializing", "starting", "running", "degraded", "maintenance":
			return nil
		}
		return fmt.Errorf("systemctl is-system-running: %q %v", out, err)
	})
}

// containerInit finds the container's PID 1: the child of nspawn running systemd.
func containerInit(nspawnPID int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawnPID, nspawnPID))
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "systemd" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no systemd child of nspawn %d yet", nspawnPID)
}

// Exec runs a command inside the booted machine (all its namespaces) with a
// clean environment and returns its combined output.
func (m *Machine) Exec(args ...string) (string, error) {
	m.mu.Lock()
	pid := m.initPID
	m.mu.Unlock()
	if pid == 0 {
		return "", errors.New("machine not booted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	full := append([]string{"-t", strconv.Itoa(pid), "-a", "--", "env", "-i", pathEnv,
		"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "LANG=C.UTF-8"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s", strings.Join(args, " "), execTimeout)
	}
	return string(out), err
}

// MustExec is Exec that fails the test on a non-zero exit.
func (m *Machine) MustExec(args ...string) string {
	m.t.Helper()
	out, err := m.Exec(args...)
	if err != nil {
		m.t.Fatalf("in %s: %s: %v\n%s", m.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Sh runs a shell command line inside the machine.
func (m *Machine) Sh(script string) (string, error) { return m.Exec("sh", "-c", script) }

// WaitSystemRunning waits until the boot has finished (no jobs left) and returns
// systemd's verdict: "running", or "degraded" when a unit failed.
func (m *Machine) WaitSystemRunning(timeout time.Duration) string {
	m.t.Helper()
	var state string
	testutil.Eventually(m.t, timeout, func() error {
		out, _ := m.Exec("systemctl", "is-system-running")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			return nil
		}
		jobs, _ := m.Exec("systemctl", "list-jobs", "--no-legend")
		return fmt.Errorf("system %q, jobs:\n%s", state, jobs)
	})
	return state
}

// PowerOff shuts the machine down cleanly and waits for nspawn to exit.
func (m *Machine) PowerOff() {
	m.t.Helper()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	if exited == nil {
		return
	}
	_, _ = m.Exec("systemctl", "--no-block", "poweroff")
	select {
	case <-exited:
	case <-time.After(bootTimeout):
		m.kill()
		m.t.Fatalf("%s did not power off within %s:\n%s", m.Name, bootTimeout, m.consoleTail())
	}
	m.reset()
}

// Reboot powers the machine off and boots the same root filesystem again. As
// on a VM, the kernel's network state does not survive: the network namespace
// is made anew, so addresses, routes and iptables rules start empty.
func (m *Machine) Reboot() {
	m.t.Helper()
	m.PowerOff()
	m.bootAgain()
}

// PowerLoss ends the machine at once, with no shutdown at all (SIGKILL to its
// PID 1: a power cut), and boots it again, as Reboot does.
func (m *Machine) PowerLoss() {
	m.t.Helper()
	m.kill()
	m.bootAgain()
}

func (m *Machine) bootAgain() {
	m.t.Helper()
	m.host("ip", "netns", "del", m.Name)
	m.host("ip", "netns", "add", m.Name)
	m.Boot()
}

func (m *Machine) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.console != nil {
		m.console.Close()
	}
	m.nspawn, m.exited, m.initPID, m.console = nil, nil, 0, nil
}

// kill ends the machine at once: SIGKILL to its PID 1 takes its whole PID
// namespace down, then nspawn follows.
func (m *Machine) kill() {
	m.mu.Lock()
	cmd, pid, exited := m.nspawn, m.initPID, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	m.reset()
}

// cleanup dumps diagnostics when the test failed, then powers off (or kills).
func (m *Machine) cleanup() {
	m.mu.Lock()
	running := m.nspawn != nil
	exited := m.exited
	m.mu.Unlock()
	if !running {
		return
	}
	if m.t.Failed() {
		m.t.Logf("=== diagnostics of %s\n%s", m.Name, m.Diagnostics())
	}
	_, _ = m.Exec("systemctl", "--no-block", "poweroff")
	select {
	case <-exited:
		m.reset()
	case <-time.After(bootTimeout):
		m.kill()
	}
}

// Diagnostics is what a failing test shows: failed units, meshx's units, and
// the journal of meshx, Consul and the apps for this boot.
func (m *Machine) Diagnostics() string {
	var b strings.Builder
	for _, c := range [][]string{
		{"systemctl", "--failed", "--no-legend"},
		{"systemctl", "list-units", "--all", "--no-legend", "meshx*", "consul*", "*app*"},
		{"systemctl", "status", "--no-pager", "--lines=0", "meshx-init.service", "meshx-proxy@*.service"},
		{"meshx-init", "status"},
		{"curl", "-s", "--max-time", "3", "http://127.0.0.1:8500/v1/agent/checks"},
		{"journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", "300",
			"-u", "meshx-init.service", "-u", "meshx-proxy@*.service", "-u", "*app*"},
		{"journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", "60", "-u", "consul.service"},
	} {
		out, err := m.Exec(c...)
		fmt.Fprintf(&b, "--- %s (%v)\n%s\n", strings.Join(c, " "), err, out)
	}
	return b.String()
}

func (m *Machine) consoleTail() string {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(m.Root), fmt.Sprintf("console-%d.log", m.boots)))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// WriteFile writes a file into the machine's root filesystem (from the host;
// use it before boot, or for paths not under a tmpfs).
func (m *Machine) WriteFile(path, content string) {
	m.t.Helper()
	p := filepath.Join(m.Root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

func (m *Machine) enable(unit string) {
	m.t.Helper()
	link := filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants", unit)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		m.t.Fatal(err)
	}
	target := "/etc/systemd/system/" + unit
	if _, err := os.Stat(filepath.Join(m.Root, target)); err != nil {
		target = "/lib/systemd/system/" + unit
	}
	if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
		m.t.Fatal(err)
	}
}

func (m *Machine) copyFile(src, dst string, mode os.FileMode) {
	m.t.Helper()
	in, err := os.Open(src)
	if err != nil {
		m.t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(m.Root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	out, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		m.t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		m.t.Fatal(err)
	}
}

// linkOrCopy hard-links a big read-only file (Consul, 178 MB) into the root
// filesystem when both are on one file system, else copies it.
func (m *Machine) linkOrCopy(src, dst string) {
	m.t.Helper()
	p := filepath.Join(m.Root, dst)
	_ = os.Remove(p)
	if err := os.Link(src, p); err == nil {
		return
	}
	m.copyFile(src, dst, 0o755)
}

func (m *Machine) host(args ...string) string {
	m.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (m *Machine) chroot(args ...string) string {
	m.t.Helper()
	cmd := exec.Command("chroot", append([]string{m.Root}, args...)...)
	cmd.Env = []string{pathEnv, "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		m.t.Fatalf("chroot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Show returns one property of a unit (systemctl show -P).
func (m *Machine) Show(unit, prop string) string {
	m.t.Helper()
	return strings.TrimSpace(m.MustExec("systemctl", "show", "-P", prop, unit))
}

// GetJSON fetches a path of the Consul agent's HTTP API inside the machine.
func (m *Machine) GetJSON(path string, v any) error {
	out, err := m.Exec("curl", "-fsS", "--max-time", "5", "http://127.0.0.1:8500"+path)
	if err != nil {
		return fmt.Errorf("GET %s: %v: %s", path, err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("GET %s: %v: %s", path, err, out)
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
