package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// The three-host topology of vagrant/: the same roles, hostnames and private
// addresses as the Vagrantfile and the user-data files (TestVagrantAgrees
// checks that they agree).
const (
	lanPrefix  = "192.168.56."
	lanBits    = "/24"
	serverAddr = lanPrefix + "10"
	webAddr    = lanPrefix + "11"
	clientAddr = lanPrefix + "12"

	// The interface name each host's end of its veth gets (eth1 is what a
	// Vagrant VirtualBox VM's private network is called); the user-data
	// selects the address by network, not by name.
	lanIfname = "eth1"

	// Where the client user-data's meshx-install.path looks for the package
	// (Vagrant's synced folder of ../dist).
	distDir = "/srv/meshx-dist"
)

// meshRole is one host of the topology as vagrant/ describes it.
type meshRole struct {
	Role     string // user-data file vagrant/user-data/<Role>.yaml, Vagrant machine name
	Hostname string // set by its user-data
	Addr     string // on the private network
}

var meshRoles = []meshRole{
	{Role: "server", Hostname: "mesh-server", Addr: serverAddr},
	{Role: "web", Hostname: "mesh-web", Addr: webAddr},
	{Role: "client", Hostname: "mesh-client", Addr: clientAddr},
}

// userDataPath is the user-data file of a role, beside the Vagrantfile.
func userDataPath(role string) string {
	return filepath.Join(repoRoot(), "vagrant", "user-data", role+".yaml")
}

var (
	ciRootfsOnce sync.Once
	ciRootfsPath string
	ciRootfsErr  error
)

// CloudInitRootfs returns the cached root filesystem with cloud-init
// (scripts/rootfs-cloudinit.sh: the base of RootfsTarball plus cloud-init).
func CloudInitRootfs(t *testing.T) string {
	t.Helper()
	ciRootfsOnce.Do(func() {
		cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "rootfs-cloudinit.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			ciRootfsErr = fmt.Errorf("scripts/rootfs-cloudinit.sh: %v\n%s", err, stderr.Bytes())
			return
		}
		ciRootfsPath = strings.TrimSpace(string(out))
	})
	testutil.Need(t, ciRootfsErr == nil, fmt.Sprintf("root filesystem with cloud-init: %v", ciRootfsErr))
	return ciRootfsPath
}

// meshHost is one booted host of the topology: a Machine in its own network
// namespace, plugged into the topology's bridge.
type meshHost struct {
	meshRole
	*Machine
}

// topology is the three hosts on their bridge, prepared but not booted.
type topology struct {
	t                   *testing.T
	lan                 *lan
	server, web, client *meshHost
}

// newTopology prepares the three hosts the way a hypervisor and an image would
// leave them before their first boot, and nothing more: a fresh copy of the
// cloud-init root filesystem each, with
//   - the pinned Consul binary at /usr/bin/consul (so the user-data's
//     install-consul finds it and does not go to HashiCorp's repository);
//   - on the two clients, the meshx .deb under test in /srv/meshx-dist (what
//     Vagrant's synced folder holds);
//   - a machine-id of its own;
//   - the NoCloud seed: meta-data, and the role's user-data file byte for byte;
//   - its network namespace with its private address on the bridge.
//
// All the rest (hostname, users, Consul's configuration and units, the app,
// service-configs, installing meshx, enabling and starting everything) is the
// user-data's, applied by cloud-init inside the booted container.
func newTopology(t *testing.T) *topology {
	t.Helper()
	needTools(t)
	tarball := CloudInitRootfs(t)
	consul := testutil.ConsulBinary(t)
	deb := Deb(t)

	id := randHex(3)
	top := &topology{t: t, lan: newLAN(t, "mx"+id+"-lan")}
	hosts := make([]*meshHost, len(meshRoles))
	for i, r := range meshRoles {
		name := "mx" + id + "-" + r.Role
		top.lan.attach(name, lanIfname, r.Addr+lanBits)
		hosts[i] = &meshHost{meshRole: r, Machine: &Machine{t: t, Name: name,
			Root: filepath.Join(t.TempDir(), r.Role)}}
	}
	unpack(t, tarball, hosts)
	for _, h := range hosts {
		h.linkOrCopy(consul, "/usr/bin/consul")
		if h.Role != "server" {
			h.copyFile(deb, filepath.Join(distDir, filepath.Base(deb)), 0o644)
		}
		h.WriteFile("/etc/machine-id", randHex(16)+"\n")
		h.WriteFile("/var/lib/cloud/seed/nocloud/meta-data",
			fmt.Sprintf("instance-id: %s-%s\nlocal-hostname: %s\n", h.Hostname, id, h.Hostname))
		h.copyFile(userDataPath(h.Role), "/var/lib/cloud/seed/nocloud/user-data", 0o600)
		// Cleanups run last-in first-out: the machine goes before its namespace.
		t.Cleanup(h.cleanup)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("=== provisioning of %s (%s)\n%s", h.Hostname, h.Name, h.provisioningLog())
			}
		})
	}
	top.server, top.web, top.client = hosts[0], hosts[1], hosts[2]
	return top
}

// unpack extracts the root filesystem for every host at once.
func unpack(t *testing.T, tarball string, hosts []*meshHost) {
	t.Helper()
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		if err := os.MkdirAll(h.Root, 0o755); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("tar", "--numeric-owner", "--xattrs", "-xf", tarball, "-C", h.Root).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("unpack %s into %s: %v\n%s", tarball, h.Root, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// provisioningLog is what shows how cloud-init and the units it set up fared.
func (h *meshHost) provisioningLog() string {
	var b strings.Builder
	for _, c := range [][]string{
		{"cloud-init", "status", "--long"},
		{"tail", "-n", "60", "/var/log/cloud-init-output.log"},
		{"sh", "-c", "grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 30"},
		{"systemctl", "list-units", "--all", "--no-legend", "consul*", "meshx*", "web-app*"},
		{"journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", "60", "-u", "consul.service", "-u", "meshx-install.service"},
	} {
		out, err := h.Exec(c...)
		fmt.Fprintf(&b, "--- %s (%v)\n%s\n", strings.Join(c, " "), err, out)
	}
	return b.String()
}

// boot boots the hosts given, one after the other (each Boot returns once
// systemd inside answers, not when the boot has finished).
func (top *topology) boot(hosts ...*meshHost) {
	top.t.Helper()
	for _, h := range hosts {
		h.Boot()
	}
}

// consulAPI fetches a path of the Consul server's HTTP API from the server's
// own namespace, on its private address.
func (top *topology) consulAPI(method, path, body string) (string, error) {
	args := []string{"curl", "-fsS", "--max-time", "5", "-X", method}
	if body != "" {
		args = append(args, "--data", body)
	}
	args = append(args, "http://"+serverAddr+":8500"+path)
	out, _, err := nsExec(top.server.Name, 10*time.Second, args...)
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", method, path, err, out)
	}
	return out, nil
}
