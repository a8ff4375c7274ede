// Package state is where meshx keeps what it knows between runs: rendered
// plans and run-time upstreams in the state dir (persistent), and each
// meshx-proxy's live status in the runtime dir (gone at reboot). Writes are
// atomic and skip unchanged content, so a re-run at boot is a visible no-op.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/process"
)

// Dirs are meshx's directories.
type Dirs struct {
	Config  string // /etc/meshx
	State   string // /var/lib/meshx
	Runtime string // /run/meshx
}

func (d Dirs) planPath(name string) string  { return filepath.Join(d.State, "services", name+".json") }
func (d Dirs) extraPath(name string) string { return filepath.Join(d.State, "connected", name+".json") }
func (d Dirs) statusPath(name string) string {
	return filepath.Join(d.Runtime, "proxies", name+".json")
}
func (d Dirs) ProxyPIDPath(name string) string {
	return filepath.Join(d.Runtime, "proxies", name+".proxy-pid")
}

// TokenPath is where meshx-proxy keeps the ACL token its login got (0600),
// for its proxy to be given.
func (d Dirs) TokenPath(name string) string {
	return filepath.Join(d.Runtime, "proxies", name+".token")
}

func writeJSON(path string, v any, durable bool) (bool, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return false, err
	}
	if durable {
		return atomicfile.Write(path, append(b, '\n'), 0o644)
	}
	return atomicfile.WriteVolatile(path, append(b, '\n'), 0o644)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// SavePlan stores a rendered plan; it holds no secret (tokens are never
// rendered). It is written atomically but not synced: a plan is derived from
// the config and the (synced) port state, and meshx-init renders it again at
// every boot before any meshx-proxy starts.
func (d Dirs) SavePlan(p *plan.Plan) (bool, error) { return writeJSON(d.planPath(p.Name), p, false) }

// ErrNoPlan: meshx-init has not rendered this service (or its config is gone).
var ErrNoPlan = errors.New("no rendered plan (run meshx-init run first)")

// LoadPlan reads the plan meshx-init rendered for a service.
func (d Dirs) LoadPlan(name string) (*plan.Plan, error) {
	var p plan.Plan
	if err := readJSON(d.planPath(name), &p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("service %s: %w", name, ErrNoPlan)
		}
		return nil, err
	}
	return &p, nil
}

// RemovePlan forgets a service's plan and run-time upstreams.
func (d Dirs) RemovePlan(name string) error {
	for _, p := range []string{d.planPath(name), d.extraPath(name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// PlanNames lists the services with a stored plan.
func (d Dirs) PlanNames() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(d.State, "services"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Extra returns the upstreams added at run time (`meshx-init connect`).
func (d Dirs) Extra(name string) ([]config.Upstream, error) {
	var ups []config.Upstream
	err := readJSON(d.extraPath(name), &ups)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return ups, err
}

// SetExtra stores the run-time upstreams of a service.
func (d Dirs) SetExtra(name string, ups []config.Upstream) error {
	if len(ups) == 0 {
		err := os.Remove(d.extraPath(name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	_, err := writeJSON(d.extraPath(name), ups, true)
	return err
}

// Status is what a running meshx-proxy publishes about itself.
type Status struct {
	Service    string    `json:"service"`
	ID         string    `json:"id"`
	PID        int       `json:"pid"`
	StartTime  string    `json:"start_time"` // of PID (process.StartTime): guards signals against a reused pid
	ProxyPID   int       `json:"proxy_pid"`
	ProxyState string    `json:"proxy_state"`
	Restarts   int       `json:"restarts"`
	Ready      bool      `json:"ready"`
	Health     string    `json:"health"`
	Output     string    `json:"output"`
	Since      time.Time `json:"since"`
}

// SaveStatus publishes a meshx-proxy's status.
func (d Dirs) SaveStatus(s Status) error {
	_, err := writeJSON(d.statusPath(s.Service), s, false)
	return err
}

// LoadStatus reads a meshx-proxy's status; ok is false when it published none.
func (d Dirs) LoadStatus(name string) (Status, bool) {
	var s Status
	if err := readJSON(d.statusPath(name), &s); err != nil {
		return s, false
	}
	return s, true
}

// RemoveStatus drops a meshx-proxy's published status.
func (d Dirs) RemoveStatus(name string) {
	_ = os.Remove(d.statusPath(name))
}

// Live reports whether s's meshx-proxy is still the process that published it.
func (s Status) Live() bool {
	return process.ID{PID: s.PID, Start: s.StartTime}.Running()
}
