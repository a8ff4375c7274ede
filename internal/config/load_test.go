package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func names(set *Set) []string {
	var out []string
	for _, s := range set.Services {
		out = append(out, s.Name)
	}
	return out
}

func TestLoadServices(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"10-web.yaml":         "version: 1\nservice: {name: web}\n",
		"20-broken.yaml":      "version: 1\nservice: {name: Broken}\n",
		"30-api.json":         `{"name": "api", "port": 9000}`,
		"40-worker.yml":       "version: 1\nservice: {name: worker}\n",
		"50-web-again.yaml":   "version: 1\nservice:\n  name: web\n",
		"60-ann.JSON":         `{"annotations": {"consul.hashicorp.com/connect-service": "ann"}}`,
		"README":              "not a config",
		"README.md":           "# not a config",
		"notes.txt":           "version: 1\nservice: {name: txt}\n",
		".hidden.yaml":        "version: 1\nservice: {name: hidden}\n",
		"web.yaml~":           "version: 1\nservice: {name: backup}\n",
		".web.yaml.swp":       "binary junk",
		"dir.yaml/inner.yaml": "version: 1\nservice: {name: inner}\n",
	})
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.yaml"), 0o644); err != nil {
		t.Fatal(err) // reading it would block the load: it must be refused unread
	}
	if err := os.Symlink(filepath.Join(dir, "gone.yaml"), filepath.Join(dir, "80-dangling.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("90-loop.yaml", filepath.Join(dir, "90-loop.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "40-worker.yml"), filepath.Join(dir, "70-link.yaml")); err != nil {
		t.Fatal(err)
	}
	set, err := LoadServices(dir, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	// The link reads worker's file again: a duplicate name, rejected as the later file.
	if got, want := names(set), []string{"web", "api", "worker", "ann"}; !slices.Equal(got, want) {
		t.Errorf("services = %v, want %v", got, want)
	}
	var broken []string
	for f := range set.Broken {
		broken = append(broken, filepath.Base(f))
	}
	slices.Sort(broken)
	if want := []string{"20-broken.yaml", "50-web-again.yaml", "70-link.yaml", "80-dangling.yaml", "90-loop.yaml", "dir.yaml", "fifo.yaml"}; !slices.Equal(broken, want) {
		t.Errorf("broken = %v, want %v", broken, want)
	}
	wantErr := map[string]string{
		"20-broken.yaml":    filepath.Join(dir, "20-broken.yaml") + `:2: service.name: invalid name "Broken"`,
		"50-web-again.yaml": filepath.Join(dir, "50-web-again.yaml") + `:3: service.name: service name "web" is also used by ` + filepath.Join(dir, "10-web.yaml"),
		"70-link.yaml":      filepath.Join(dir, "70-link.yaml") + `:2: service.name: service name "worker" is also used by ` + filepath.Join(dir, "40-worker.yml"),
		"80-dangling.yaml":  filepath.Join(dir, "80-dangling.yaml") + ": cannot read: a symbolic link to a file that does not exist",
		"90-loop.yaml":      filepath.Join(dir, "90-loop.yaml") + ": cannot read: too many levels of symbolic links",
		"dir.yaml":          filepath.Join(dir, "dir.yaml") + ": cannot read: not a regular file (a directory)",
		"fifo.yaml":         filepath.Join(dir, "fifo.yaml") + ": cannot read: not a regular file (a named pipe)",
	}
	for f, want := range wantErr {
		err := set.Broken[filepath.Join(dir, f)]
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v\nwant prefix %s", f, err, want)
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: not ErrInvalid", f)
		}
	}
	// Set.Err joins them all, sorted by file.
	lines := strings.Split(set.Err().Error(), "\n")
	if len(lines) != 7 || !strings.Contains(lines[0], "20-broken.yaml") || !strings.Contains(lines[6], "fifo.yaml") {
		t.Errorf("Set.Err() =\n%v", set.Err())
	}
	if !errors.Is(set.Err(), ErrInvalid) {
		t.Error("Set.Err() is not ErrInvalid")
	}
}

func TestLoadServicesEmpty(t *testing.T) {
	for name, dir := range map[string]string{
		"missing dir": filepath.Join(t.TempDir(), "services.d"),
		"empty dir":   t.TempDir(),
	} {
		t.Run(name, func(t *testing.T) {
			set, err := LoadServices(dir, Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			if len(set.Services) != 0 || len(set.Broken) != 0 || set.Err() != nil {
				t.Errorf("got %+v", set)
			}
		})
	}
}

func TestLoadServicesNotADir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "services.d")
	writeFiles(t, filepath.Dir(f), map[string]string{"services.d": "x"})
	if _, err := LoadServices(f, Defaults{}); err == nil {
		t.Fatal("LoadServices read a file as a directory")
	}
}

func TestLoadServicesUsesDefaults(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"web.yaml": "version: 1\nservice: {name: web}\n"})
	set, err := LoadServices(dir, Defaults{ProxyMode: ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Services) != 1 || set.Services[0].Proxy.Mode != ModeNone {
		t.Errorf("defaults not applied: %+v", set.Services)
	}
}

func TestSetReject(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": "version: 1\nservice:\n  name: a\n  id: x\n",
		"b.yaml": "version: 1\nservice: {name: b}\n",
	})
	set, err := LoadServices(dir, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	a := set.Services[0]
	set.Reject(a, "service.id", "first %s", "problem")
	set.Reject(a, "registration.Meta.x", "second problem")
	if got := names(set); !slices.Equal(got, []string{"b"}) {
		t.Errorf("services = %v", got)
	}
	want := a.File + ":4: service.id: first problem\n" + a.File + ":1: registration.Meta.x: second problem"
	if got := set.Broken[a.File].Error(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if !errors.Is(set.Broken[a.File], ErrInvalid) {
		t.Error("not ErrInvalid")
	}
}

func TestIsServiceFile(t *testing.T) {
	for name, want := range map[string]bool{
		"web.yaml": true, "web.yml": true, "web.json": true, "WEB.YAML": true, "service-config.json": true,
		".web.yaml": false, "web.yaml~": false, "web.yaml.bak": false, "web.toml": false, "README": false, "web": false,
	} {
		if got := IsServiceFile(name); got != want {
			t.Errorf("IsServiceFile(%q) = %v, want %v", name, got, want)
		}
	}
}
