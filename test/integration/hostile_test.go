package integration

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/config/configtest"
	"github.com/meshx/meshx/internal/testutil"
)

// TestHostileCorpusAgainstAgent runs every case of the hostile-input corpus
// through `meshx-init run` against a real Consul agent: exit 2, the problem
// located at its file and field, no secret echoed, and nothing changed: the
// agent holds no service and the state dir holds no file.
func TestHostileCorpusAgainstAgent(t *testing.T) {
	c := testutil.StartConsul(t, "")
	// One client for all cases: a client per query would leave its idle
	// connections open, and the agent refuses a client IP past 200 (429).
	agent := newHost(t, c, "").client().Agent()
	for _, tc := range configtest.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			h := newHost(t, c, "")
			if err := tc.Write(h.dirs.Config); err != nil {
				t.Fatal(err)
			}
			r := h.init("run", "--systemd=no")
			if r.code != 2 {
				t.Errorf("exit %d, want 2", r.code)
			}
			want := tc.Path(h.dirs.Config) + strings.ReplaceAll(tc.Want, "{{dir}}", h.dirs.Config)
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
			if tc.Secret != "" && strings.Contains(r.stdout+r.stderr, tc.Secret) {
				t.Errorf("the output echoes the secret %q", tc.Secret)
			}
			if s, err := agent.Services(); err != nil || len(s) != 0 {
				t.Errorf("the agent holds %v (%v)", keys(s), err)
			}
			if files := filesUnder(t, h.dirs.State); len(files) != 0 {
				t.Errorf("files written to the state dir: %v", files)
			}
		})
	}
}

// filesUnder lists the files (not directories) below dir; none when it does
// not exist.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnreadableConfig: a service-config or a meshx.yaml that meshx-init may
// not read (permissions) is bad input of that file, located, exit 2.
// meshx-init runs as nobody here: root reads every file.
func TestUnreadableConfig(t *testing.T) {
	testutil.NeedRoot(t)
	for _, file := range []string{"services.d/web.yaml", "meshx.yaml"} {
		t.Run(file, func(t *testing.T) {
			h := newHost(t, nil, "")
			h.service("web.yaml", "version: 1\nservice: {name: web}\n")
			path := filepath.Join(h.dirs.Config, file)
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
			// Let nobody reach the config dir (t.TempDir makes its dirs 0700).
			for d := filepath.Dir(h.dirs.Config); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(filepath.Join(binDir, "meshx-init"), append(h.flags(), "validate")...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Errorf("exit %v, want 2", err)
			}
			if want := path + ": cannot read: permission denied"; !strings.Contains(string(out), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		})
	}
}

// TestExhaustingFileRejectedAlone: a file whose upstreams do not fit in what
// is left of the port range is rejected alone, located at its upstreams; the
// files before and after it are registered.
func TestExhaustingFileRejectedAlone(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "") // a range of 50 ports
	h.service("a.yaml", "version: 1\nservice: {name: a}\nupstreams: [{name: db}]\n")
	var ups strings.Builder
	for i := range 45 { // 48 ports with its own three: fits the range, not what a leaves
		fmt.Fprintf(&ups, "  - name: u%d\n", i)
	}
	b := h.service("b.yaml", "version: 1\nservice: {name: b}\nupstreams:\n"+ups.String())
	h.service("c.yaml", "version: 1\nservice: {name: c}\nupstreams: [{name: db}]\n")
	r := h.init("run", "--systemd=no")
	if r.code != 2 {
		t.Errorf("exit %d, want 2", r.code)
	}
	if want := b + ":3: upstreams: no port left for this service"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr lacks %q", want)
	}
	s := h.services()
	if s["a-testhost"] == nil || s["c-testhost"] == nil || s["b-testhost"] != nil {
		t.Errorf("registered %v, want a and c only", keys(s))
	}
	ports, _ := os.ReadFile(filepath.Join(h.dirs.State, "ports.json"))
	if strings.Contains(string(ports), "b-testhost") {
		t.Errorf("ports allocated for b:\n%s", ports)
	}
}

// TestLoopbackNotAdvertised: a service whose app listens on loopback
// (service.address: 127.0.0.1) is registered without an address, so the
// catalog gives callers on other hosts this node's address, for the service
// and its sidecar; the sidecar still reaches the app on loopback. A routable
// service.address is advertised as written.
func TestLoopbackNotAdvertised(t *testing.T) {
	c := testutil.StartConsul(t, "")
	for _, tc := range []struct{ addr, advertised string }{{"127.0.0.1", ""}, {"localhost", ""}, {"10.11.12.13", "10.11.12.13"}} {
		t.Run(tc.addr, func(t *testing.T) {
			h := newHost(t, c, "")
			h.service("web.yaml", fmt.Sprintf("version: 1\nservice: {name: web, address: %q, port: 18090}\n", tc.addr))
			if r := h.init("run", "--systemd=no"); r.code != 0 {
				t.Fatalf("exit %d", r.code)
			}
			t.Cleanup(func() { h.init("stop", "web") })
			cat := h.client().Catalog()
			for _, name := range []string{"web", "web-sidecar-proxy"} {
				inst, _, err := cat.Service(name, "", nil)
				if err != nil || len(inst) != 1 {
					t.Fatalf("catalog %s: %v %v", name, inst, err)
				}
				if inst[0].ServiceAddress != tc.advertised {
					t.Errorf("catalog %s: ServiceAddress %q, want %q", name, inst[0].ServiceAddress, tc.advertised)
				}
				for tag, a := range inst[0].ServiceTaggedAddresses {
					if a.Address != "" && !config.Advertisable(a.Address) {
						t.Errorf("catalog %s: tagged address %s = %q", name, tag, a.Address)
					}
				}
			}
			sc := h.services()["web-testhost-sidecar-proxy"]
			if sc == nil || sc.Proxy == nil || sc.Proxy.LocalServiceAddress != tc.addr {
				t.Errorf("the sidecar does not reach the app at %s: %+v", tc.addr, sc)
			}
			// What a caller on another host is given: the node's address.
			hc, _, err := h.client().Health().Connect("web", "", false, nil)
			if err != nil || len(hc) != 1 {
				t.Fatalf("connect health: %v %v", hc, err)
			}
			if got := hc[0].Service.Address; got != tc.advertised {
				t.Errorf("callers are given %q (node %s), want %q", got, hc[0].Node.Address, tc.advertised)
			}
		})
	}
}
