package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/testutil"
)

// userData is the part of a cloud-config these checks read.
type userData struct {
	Hostname   string `yaml:"hostname"`
	WriteFiles []struct {
		Path    string `yaml:"path"`
		Content string `yaml:"content"`
	} `yaml:"write_files"`
}

func readUserData(t *testing.T, role string) (raw []byte, ud userData) {
	t.Helper()
	raw, err := os.ReadFile(userDataPath(role))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &ud); err != nil {
		t.Fatalf("%s: %v", userDataPath(role), err)
	}
	return raw, ud
}

// file returns the content the user-data writes to path, and whether it does.
func (ud userData) file(path string) (string, bool) {
	for _, f := range ud.WriteFiles {
		if f.Path == path {
			return f.Content, true
		}
	}
	return "", false
}

// topLevelKeys are the cloud-config keys the user-data files may use. cloud-init
// 22.4's schema check lets an unknown top-level key (a typo) through silently;
// this list does not.
var topLevelKeys = []string{"hostname", "fqdn", "manage_etc_hosts", "users", "groups", "write_files",
	"runcmd", "bootcmd", "packages", "package_update", "apt", "final_message"}

// TestUserDataSchema: every user-data file of vagrant/ is a valid cloud-config
// as Debian's cloud-init sees it (`cloud-init schema --config-file`), with known
// top-level keys only.
func TestUserDataSchema(t *testing.T) {
	_, err := exec.LookPath("cloud-init")
	testutil.Need(t, err == nil, "cloud-init (apt-get install -y cloud-init; scripts/deps.sh does)")
	for _, r := range meshRoles {
		t.Run(r.Role, func(t *testing.T) {
			raw, _ := readUserData(t, r.Role)
			if !bytes.HasPrefix(raw, []byte("#cloud-config\n")) {
				t.Errorf("%s does not start with #cloud-config", userDataPath(r.Role))
			}
			out, err := exec.Command("cloud-init", "schema", "--config-file", userDataPath(r.Role)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
				t.Errorf("cloud-init schema --config-file %s: %v\n%s", userDataPath(r.Role), err, out)
			}
			var top map[string]any
			if err := yaml.Unmarshal(raw, &top); err != nil {
				t.Fatal(err)
			}
			for k := range top {
				if !slices.Contains(topLevelKeys, k) {
					t.Errorf("%s: top-level key %q is not one the user-data files use (a typo?)", userDataPath(r.Role), k)
				}
			}
		})
	}
}

// vagrantMachineRE reads the Vagrantfile's HOSTS table: "role" => "address".
var vagrantMachineRE = regexp.MustCompile(`"(\w+)"\s*=>\s*"(\d+\.\d+\.\d+\.\d+)"`)

// TestVagrantAgrees: the Vagrantfile, the user-data files and this test's
// topology describe the same three hosts, and the Vagrantfile provisions
// nothing itself. Also the service-configs the user-data bakes pass meshx's
// own parser.
func TestVagrantAgrees(t *testing.T) {
	vf, err := os.ReadFile(filepath.Join(repoRoot(), "vagrant", "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range vagrantMachineRE.FindAllStringSubmatch(string(vf), -1) {
		got[m[1]] = m[2]
	}
	for _, r := range meshRoles {
		if got[r.Role] != r.Addr {
			t.Errorf("Vagrantfile: %s at %q, want %s (as in the user-data and the test)", r.Role, got[r.Role], r.Addr)
		}
	}
	if len(got) != len(meshRoles) {
		t.Errorf("Vagrantfile machines %v, want exactly %d", got, len(meshRoles))
	}
	for _, line := range strings.Split(string(vf), "\n") {
		if code, _, _ := strings.Cut(line, "#"); strings.Contains(code, ".provision") {
			t.Errorf("Vagrantfile provisions outside cloud-init: %q", strings.TrimSpace(line))
		}
	}

	for _, r := range meshRoles {
		t.Run(r.Role, func(t *testing.T) {
			_, ud := readUserData(t, r.Role)
			if ud.Hostname != r.Hostname {
				t.Errorf("hostname %q, want %q", ud.Hostname, r.Hostname)
			}
			hcl, ok := ud.file("/etc/consul.d/consul.hcl")
			if !ok {
				t.Fatal("no /etc/consul.d/consul.hcl")
			}
			for _, want := range []string{`retry_join     = ["` + serverAddr + `"]`, `\"network\" \"` + lanPrefix + `0` + lanBits + `\"`} {
				if !strings.Contains(hcl, want) {
					t.Errorf("consul.hcl lacks %s", want)
				}
			}
			if server := strings.Contains(hcl, "server           = true"); server != (r.Role == "server") {
				t.Errorf("consul.hcl: server = %v on %s", server, r.Role)
			}
			if r.Role == "server" {
				for _, want := range []string{"bootstrap_expect = 1", "connect {\n  enabled = true", "ui_config {\n  enabled = true"} {
					if !strings.Contains(hcl, want) {
						t.Errorf("the server's consul.hcl lacks %q", want)
					}
				}
				return
			}
			path := "/etc/meshx/services.d/" + r.Role + ".yaml"
			sc, ok := ud.file(path)
			if !ok {
				t.Fatalf("no %s", path)
			}
			s, err := config.Parse(path, []byte(sc), config.Defaults{})
			if err != nil {
				t.Fatalf("meshx rejects the baked %s: %v", path, err)
			}
			switch r.Role {
			case "web":
				if s.Name != "web" || s.Port != 8080 {
					t.Errorf("web's service-config: name %q port %d, want web on 8080", s.Name, s.Port)
				}
			case "client":
				if s.Name != "client" || len(s.Upstreams) != 1 || s.Upstreams[0].Name != "web" || s.Upstreams[0].Port != 9191 {
					t.Errorf("client's service-config: name %q upstreams %+v, want client with web on 9191", s.Name, s.Upstreams)
				}
			}
		})
	}
}
