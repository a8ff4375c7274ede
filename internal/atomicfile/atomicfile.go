// Package atomicfile writes a file so that a reader sees either its old
// content or the new, never a part: the data goes to a temporary file in the
// same directory, which is renamed over the target. Content the file already
// holds is not written again, so a re-run at boot is a visible no-op.
package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Write writes data to path durably: the temporary file is fsynced before
// the rename and the directory after it, so the new content survives a
// crash once Write returns. The directory is created (0755) if needed. It
// reports whether it wrote (false: path already held data).
func Write(path string, data []byte, perm os.FileMode) (bool, error) {
	return write(path, data, perm, true)
}

// WriteVolatile is Write without the fsyncs, for the runtime dir: a tmpfs
// whose content means nothing after a crash or reboot anyway.
func WriteVolatile(path string, data []byte, perm os.FileMode) (bool, error) {
	return write(path, data, perm, false)
}

// RemoveStale removes the temporary files a crashed writer of path left.
// Call it only while no other writer of path can be running (under a lock).
func RemoveStale(path string) {
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), tempPattern(path)))
	for _, p := range stale {
		os.Remove(p)
	}
}

func tempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

func write(path string, data []byte, perm os.FileMode, durable bool) (bool, error) {
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, data) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	f, err := os.CreateTemp(dir, tempPattern(path))
	if err != nil {
		return false, err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	if err := fill(f, data, perm, durable); err != nil {
		return false, namePath(path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return false, err
	}
	if durable {
		return true, syncDir(dir)
	}
	return true, nil
}

// namePath says the error of writing the temporary file as one of writing
// path, the file a reader knows ("write /var/lib/meshx/ports.json: no space
// left on device"); errors.Is still sees the cause.
func namePath(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &fs.PathError{Op: "write", Path: path, Err: err}
}

// fill writes data to the temporary file f, sets its mode, syncs it when
// durable, and closes it.
func fill(f *os.File, data []byte, perm os.FileMode, durable bool) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
