package ports

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The concurrency test re-executes this test binary; TestMain sends a process
// with helperEnv set to helperMain instead of the tests.
const (
	helperEnv       = "MESHX_PORTS_TEST_STATE_DIR"
	helperWorkerEnv = "MESHX_PORTS_TEST_WORKER"
	helperKeys      = 10
	concLow         = 23000
	concHigh        = 23099
)

// helperMain waits for its stdin to close (the start signal for all workers),
// allocates helperKeys keys one Allocate call at a time, alternating up and
// down, and prints what it got as JSON.
func helperMain() int {
	io.Copy(io.Discard, os.Stdin)
	o := Options{StateDir: os.Getenv(helperEnv), Range: Range{Low: concLow, High: concHigh}, InUse: free}
	worker := os.Getenv(helperWorkerEnv)
	got := map[string]int{}
	for i := range helperKeys {
		key := fmt.Sprintf("worker%s/key%d", worker, i)
		m, err := Allocate(o, []Request{{Key: key, Down: i%2 == 1}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		got[key] = m[key]
	}
	if err := json.NewEncoder(os.Stdout).Encode(got); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// checkDistinct fails the test unless every key has its own port inside the
// concurrency test range.
func checkDistinct(t *testing.T, got map[string]int) {
	t.Helper()
	owner := map[int]string{}
	for k, p := range got {
		if p < concLow || p > concHigh {
			t.Errorf("%s got %d, outside %d-%d", k, p, concLow, concHigh)
		}
		if other, dup := owner[p]; dup {
			t.Errorf("port %d handed to both %s and %s", p, other, k)
		}
		owner[p] = k
	}
}

func TestConcurrentProcesses(t *testing.T) {
	const workers = 8
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	type proc struct {
		cmd            *exec.Cmd
		stdin          io.WriteCloser
		stdout, stderr bytes.Buffer
	}
	procs := make([]*proc, workers)
	for i := range procs {
		p := &proc{cmd: exec.CommandContext(ctx, os.Args[0])}
		p.cmd.Env = append(os.Environ(), helperEnv+"="+dir, helperWorkerEnv+"="+strconv.Itoa(i))
		p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[i] = p
	}
	for _, p := range procs { // all started: let them race
		p.stdin.Close()
	}

	all := map[string]int{}
	for i, p := range procs {
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("worker %d: %v\n%s", i, err, p.stderr.String())
		}
		var got map[string]int
		if err := json.Unmarshal(p.stdout.Bytes(), &got); err != nil {
			t.Fatalf("worker %d output %q: %v", i, p.stdout.String(), err)
		}
		if len(got) != helperKeys {
			t.Errorf("worker %d returned %d keys, want %d", i, len(got), helperKeys)
		}
		for k, port := range got {
			all[k] = port
		}
	}
	if len(all) != workers*helperKeys {
		t.Fatalf("%d keys in the workers' outputs, want %d", len(all), workers*helperKeys)
	}
	checkDistinct(t, all)
	wantPorts(t, mustLoad(t, Options{StateDir: dir}), all)
}

func TestConcurrentGoroutines(t *testing.T) {
	const workers = 8
	o := Options{StateDir: t.TempDir(), Range: Range{Low: concLow, High: concHigh}, InUse: free}
	var mu sync.Mutex
	var wg sync.WaitGroup
	all := map[string]int{}
	for w := range workers {
		wg.Go(func() {
			for i := range helperKeys {
				key := fmt.Sprintf("g%d/key%d", w, i)
				m, err := Allocate(o, []Request{{Key: key, Down: i%2 == 0}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all[key] = m[key]
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	checkDistinct(t, all)
	wantPorts(t, mustLoad(t, o), all)
}
