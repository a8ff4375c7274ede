package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/testutil"
)

// packaged is what installing, upgrading or removing meshx left in a root
// filesystem: the observable effects of the package's files and maintainer
// scripts, the same for the .deb and the RPM when they behave alike.
type packaged struct {
	Version     string // meshx-init --version, run in the root
	User        string // getent passwd meshx
	Dirs        string // which of meshx's directories exist
	InitEnabled string // whether meshx-init.service is enabled: its link in multi-user.target.wants
	Instance    string // what is left of a started meshx-proxy@web: its enablement link
	Docs        string // which man pages and completions are installed
}

// inspect reads packaged from m's root.
func inspect(m *Machine) packaged {
	m.t.Helper()
	var p packaged
	p.Version = strings.TrimSpace(m.chrootAny("/usr/bin/meshx-init", "--version"))
	p.User = strings.TrimSpace(m.chrootAny("getent", "passwd", "meshx"))
	p.InitEnabled = "disabled"
	if present(m, "/etc/systemd/system/multi-user.target.wants/meshx-init.service") != "" {
		p.InitEnabled = "enabled"
	}
	p.Dirs = present(m, "/var/lib/meshx", "/run/meshx", "/etc/meshx/services.d", "/etc/meshx/meshx.yaml",
		"/var/lib/meshx/ports.json")
	p.Instance = present(m, "/etc/systemd/system/multi-user.target.wants/meshx-proxy@web.service")
	p.Docs = present(m, "/usr/share/man/man8/meshx-init.8.gz", "/usr/share/man/man8/meshx-init-run.8.gz",
		"/usr/share/man/man8/meshx-proxy.8.gz", "/usr/share/bash-completion/completions/meshx-init",
		"/usr/share/bash-completion/completions/meshx-proxy")
	return p
}

// present lists which of paths exist in m's root (links not followed).
func present(m *Machine, paths ...string) string {
	var have []string
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(m.Root, p)); err == nil {
			have = append(have, p)
		}
	}
	return strings.Join(have, " ")
}

// chrootAny runs a command in m's root and returns its output, whatever its
// exit status (systemctl is-enabled exits 1 for "disabled").
func (m *Machine) chrootAny(args ...string) string {
	m.t.Helper()
	cmd := exec.Command("chroot", append([]string{m.Root}, args...)...)
	cmd.Env = []string{pathEnv, "LANG=C.UTF-8"}
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// startedInstance leaves what meshx-init leaves on disk for a started
// service: the instance's enablement link and the ports it allocated. (Its
// transparent-proxy drop-in lives in /run/systemd/system, which exists only
// under a running systemd; a scratch root with it would pass for a booted
// one.)
func startedInstance(m *Machine) {
	m.t.Helper()
	m.WriteFile("/var/lib/meshx/ports.json", "{}\n")
	link := filepath.Join(m.Root, "etc/systemd/system/multi-user.target.wants/meshx-proxy@web.service")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Symlink("/lib/systemd/system/meshx-proxy@.service", link); err != nil {
		m.t.Fatal(err)
	}
}

// TestRPMScratchRoot installs, upgrades and erases the RPM in a scratch root
// filesystem with `rpm --root` and, step by step, the .deb in another copy of
// the same root with dpkg; the two must leave the same things behind, except
// where RPM's conventions differ (said at each step).
//
// In a scratch root no systemd runs, so the maintainer scripts' steps for a
// running systemd (daemon-reload, stopping the instances on removal,
// restarting them on upgrade) are not exercised here; TestRPMBootedMesh boots
// an RPM-installed root, and test/e2e's .deb tests cover removal under a
// running systemd for the .deb.
func TestRPMScratchRoot(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tool := range []string{"rpm", "chroot", "tar", "make"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" (scripts/deps.sh installs it)")
	}
	rpmRoot, debRoot := scratchRoot(t), scratchRoot(t)
	both := func(step string, rpmDid, debDid func()) (packaged, packaged) {
		t.Helper()
		rpmDid()
		debDid()
		r, d := inspect(rpmRoot), inspect(debRoot)
		t.Logf("%s:\n  rpm: %+v\n  deb: %+v", step, r, d)
		return r, d
	}

	r, d := both("install", func() { t.Log(rpmRoot.installRPM(RPM(t))) }, func() { t.Log(debRoot.installDeb(Deb(t))) })
	want := packaged{
		Version:     "meshx-init 0.0.0~e2e",
		User:        "meshx:x:" + strings.SplitN(strings.TrimPrefix(r.User, "meshx:x:"), ":", 2)[0],
		Dirs:        "/var/lib/meshx /run/meshx /etc/meshx/services.d /etc/meshx/meshx.yaml",
		InitEnabled: "enabled",
		Docs: "/usr/share/man/man8/meshx-init.8.gz /usr/share/man/man8/meshx-init-run.8.gz " +
			"/usr/share/man/man8/meshx-proxy.8.gz /usr/share/bash-completion/completions/meshx-init " +
			"/usr/share/bash-completion/completions/meshx-proxy",
	}
	if !strings.HasSuffix(r.User, ":meshx Connect proxies:/:/usr/sbin/nologin") {
		t.Errorf("rpm: meshx user %q, want a system user with no login", r.User)
	}
	want.User = r.User
	if r != want {
		t.Errorf("rpm install left\n  %+v\nwant\n  %+v", r, want)
	}
	if d != r {
		t.Errorf("the .deb and the RPM differ after install:\n  deb %+v\n  rpm %+v", d, r)
	}
	if out, err := exec.Command("rpm", "--root", rpmRoot.Root, "-V", "--nodeps", "meshx").CombinedOutput(); err != nil {
		t.Errorf("rpm -V: the installed files differ from the package: %v\n%s", err, out)
	}

	// Upgrade: an administrator disabled meshx-init and edited meshx.yaml;
	// neither is undone.
	const edited = "version: 1\n# edited by the administrator\n"
	r, d = both("upgrade after disable and edit",
		func() {
			rpmRoot.chroot("systemctl", "disable", "meshx-init.service")
			rpmRoot.WriteFile("/etc/meshx/meshx.yaml", edited)
			t.Log(rpmRoot.installRPM(buildPackage(t, "rpm", "", "0.0.1~e2e")))
		},
		func() {
			debRoot.chroot("systemctl", "disable", "meshx-init.service")
			debRoot.WriteFile("/etc/meshx/meshx.yaml", edited)
			t.Log(debRoot.installDeb(buildPackage(t, "package", "", "0.0.1~e2e")))
		})
	want.Version, want.InitEnabled = "meshx-init 0.0.1~e2e", "disabled"
	if r != want || d != want {
		t.Errorf("after upgrade\n  rpm %+v\n  deb %+v\nwant\n  %+v", r, d, want)
	}
	for _, m := range []*Machine{rpmRoot, debRoot} {
		if b, _ := os.ReadFile(filepath.Join(m.Root, "etc/meshx/meshx.yaml")); string(b) != edited {
			t.Errorf("%s: the upgrade replaced the edited meshx.yaml:\n%s", m.Root, b)
		}
	}

	// Removal of a host where meshx-init had started a service and allocated
	// ports: its instance's enablement link goes, meshx-init is
	// left disabled, the state stays (as with dpkg -r; rpm has no purge).
	r, d = both("erase / remove",
		func() {
			rpmRoot.chroot("systemctl", "enable", "meshx-init.service")
			startedInstance(rpmRoot)
			t.Log(rpmRoot.withProc("rpm", "--root", rpmRoot.Root, "--nodeps", "-e", "meshx"))
		},
		func() {
			debRoot.chroot("systemctl", "enable", "meshx-init.service")
			startedInstance(debRoot)
			t.Log(debRoot.withProc("chroot", debRoot.Root, "dpkg", "-r", "meshx"))
		})
	gone := packaged{
		Version:     "chroot: failed to run command ‘/usr/bin/meshx-init’: No such file or directory",
		User:        want.User, // kept, as Debian keeps system users
		InitEnabled: "disabled",
		// The state stays with both, and so does the edited configuration: in
		// place for dpkg (a conffile, until purge), saved aside by rpm.
		Dirs: "/var/lib/meshx /run/meshx /var/lib/meshx/ports.json",
	}
	if r != gone {
		t.Errorf("rpm -e left\n  %+v\nwant\n  %+v", r, gone)
	}
	gone.Dirs = "/var/lib/meshx /run/meshx /etc/meshx/meshx.yaml /var/lib/meshx/ports.json"
	if d != gone {
		t.Errorf("dpkg -r left\n  %+v\nwant\n  %+v", d, gone)
	}
	if b, err := os.ReadFile(filepath.Join(rpmRoot.Root, "etc/meshx/meshx.yaml.rpmsave")); err != nil || string(b) != edited {
		t.Errorf("rpm -e did not save the edited meshx.yaml as .rpmsave: %v %q", err, b)
	}
}

// TestRPMBootedMesh boots a root filesystem with meshx installed from its RPM
// (rpm --root, as an image build would) under a real systemd: the units it
// puts in /usr/lib/systemd/system (on this merged-/usr root the same directory
// as /lib/systemd/system, so systemd names them by that path), meshx-init
// enabled by the RPM's preset and nothing else, the two baked services in the
// mesh and a request through it. What
// cannot be shown: rpm -e under the running systemd (Debian's root filesystem
// has no rpm to run inside the container); the maintainer scripts' steps for
// a running systemd are the .deb's, proven by TestBootedMesh.
func TestRPMBootedMesh(t *testing.T) {
	_, err := exec.LookPath("rpm")
	testutil.Need(t, err == nil, "rpm (scripts/deps.sh installs it)")
	l := meshLayout(clientYAML)
	l.RPM = true
	m := NewMachine(t, l)
	m.Boot()
	if state := m.WaitSystemRunning(meshTimeout); state != "running" {
		t.Errorf("system %s after boot, want running; failed units:\n%s", state, m.MustExec("systemctl", "--failed", "--no-legend"))
	}
	waitMeshUp(t, m, webID, clientID)
	for _, unit := range []string{"meshx-init.service", "meshx-proxy@web.service", "meshx-proxy@client.service"} {
		if s := m.Show(unit, "ActiveState"); s != "active" {
			t.Errorf("%s is %s, want active", unit, s)
		}
	}
	if s := m.Show("meshx-init.service", "UnitFileState"); s != "enabled" {
		t.Errorf("meshx-init.service is %s, want enabled by the RPM's preset", s)
	}
	if out := m.MustExec("meshx-proxy", "--version"); out != "meshx-proxy 0.0.0~e2e\n" {
		t.Errorf("meshx-proxy --version: %q", out)
	}
}
