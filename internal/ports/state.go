package ports

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/lockfile"
)

// Names of the files in Options.StateDir.
const (
	StateFile = "ports.json"
	LockFile  = "ports.lock"
)

const stateVersion = 1

// entry is one key's port in ports.json.
type entry struct {
	Port  int  `json:"port"`
	Fixed bool `json:"fixed,omitempty"`
}

// stateDoc is the layout of ports.json.
type stateDoc struct {
	Version int              `json:"version"`
	Ports   map[string]entry `json:"ports"`
}

func statePath(dir string) string { return filepath.Join(dir, StateFile) }

// update runs change on the current state under the exclusive lock and saves
// what it returns, unless change fails or nothing changed.
func update(o Options, change func(map[string]entry) (map[string]entry, error)) error {
	unlock, err := lockState(o.StateDir, o.LockTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	atomicfile.RemoveStale(statePath(o.StateDir)) // under the lock: no live writer owns them
	path := statePath(o.StateDir)
	state, raw, err := readState(path)
	if err != nil {
		return err
	}
	next, err := change(state)
	if err != nil {
		return err
	}
	return writeState(path, next, raw)
}

// readState returns the entries of the state file at path and its raw bytes;
// a missing file is an empty state with nil bytes.
func readState(path string) (map[string]entry, []byte, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]entry{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read port state: %w", err)
	}
	state, err := parseState(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w: %v (fix or remove the file; removing it gives every endpoint a new port)", path, ErrCorruptState, err)
	}
	return state, raw, nil
}

func parseState(raw []byte) (map[string]entry, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var doc stateDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON document")
	}
	if doc.Version != stateVersion {
		return nil, fmt.Errorf("unsupported version %d (want %d)", doc.Version, stateVersion)
	}
	owner := make(map[int]string, len(doc.Ports))
	for _, k := range slices.Sorted(maps.Keys(doc.Ports)) {
		p := doc.Ports[k].Port
		switch {
		case k == "":
			return nil, errors.New("empty key")
		case p < 1 || p > 65535:
			return nil, fmt.Errorf("%s: port %d is outside 1..65535", k, p)
		case owner[p] != "":
			return nil, fmt.Errorf("port %d is recorded for both %s and %s", p, owner[p], k)
		}
		owner[p] = k
	}
	if doc.Ports == nil {
		doc.Ports = map[string]entry{}
	}
	return doc.Ports, nil
}

// writeState saves state to path unless it encodes to old: a temporary file in
// the same directory, mode 0644, fsynced, renamed over path, then the
// directory fsynced.
func writeState(path string, state map[string]entry, old []byte) error {
	if old == nil && len(state) == 0 {
		return nil
	}
	data, err := json.MarshalIndent(stateDoc{Version: stateVersion, Ports: state}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode port state: %w", err)
	}
	data = append(data, '\n')
	if bytes.Equal(data, old) {
		return nil
	}
	if _, err := atomicfile.Write(path, data, 0o644); err != nil {
		return fmt.Errorf("write port state: %w", err)
	}
	return nil
}

// lockState creates dir if needed and takes the exclusive lock on its lock
// file, waiting up to timeout. unlock releases it.
func lockState(dir string, timeout time.Duration) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l, err := lockfile.Acquire(ctx, path, nil)
	if errors.Is(err, lockfile.ErrHeld) {
		return nil, fmt.Errorf("lock %s: %w for %s", path, ErrLockTimeout, timeout)
	}
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
}
