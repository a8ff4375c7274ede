package boot

import (
	"bytes"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/testutil"
)

// statusRows has every check state the table shows.
var statusRows = []Row{
	{Service: "api", ID: "api-h1", Port: 9000, Check: "warning", PID: 412, ProxyPID: 430, Restarts: 2},
	{Service: "client", ID: "client-h1", Port: 8081, Upstreams: []plan.Upstream{{Name: "web", Port: 9191}, {Name: "db", Port: 9190}},
		Check: "passing", PID: 410, ProxyPID: 431, Ready: true},
	{Service: "db", ID: "db-h1", Port: 5432, Check: "absent"},
	{Service: "queue", ID: "queue-h1", Port: 5672, Check: "unknown (agent: connection refused)"},
	{Service: "web", ID: "web-h1", Port: 8080, Metrics: "127.0.0.1:9102", Check: "critical", PID: 411, Restarts: 7},
}

// sgr matches a colour code.
var sgr = regexp.MustCompile("\x1b\\[[0-9;]*m")

// TestWriteStatus: the table, plain and coloured (the states only, aligned as
// the plain one), and the JSON.
func TestWriteStatus(t *testing.T) {
	for _, c := range []struct {
		golden string
		o      StatusOptions
	}{
		{"status.txt", StatusOptions{}},
		{"status-color.txt", StatusOptions{Color: true}},
		{"status.json", StatusOptions{JSON: true}},
		{"status.json", StatusOptions{JSON: true, Color: true}}, // JSON is never coloured
	} {
		t.Run(c.golden, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteStatus(&b, statusRows, c.o); err != nil {
				t.Fatal(err)
			}
			testutil.Golden(t, filepath.Join("testdata", c.golden), b.Bytes())
		})
	}
	var plain, color bytes.Buffer
	_ = WriteStatus(&plain, statusRows, StatusOptions{})
	_ = WriteStatus(&color, statusRows, StatusOptions{Color: true})
	if got := sgr.ReplaceAll(color.Bytes(), nil); !bytes.Equal(got, plain.Bytes()) {
		t.Errorf("the coloured table without its colour codes differs from the plain one:\n%s\n%s", got, plain.Bytes())
	}
	if bytes.Contains(plain.Bytes(), []byte("\x1b")) {
		t.Errorf("the plain table has escape codes")
	}
}
