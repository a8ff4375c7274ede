package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fileID is what a rewrite changes: the inode (a rename puts a new file in
// place) and the modification time.
type fileID struct {
	ino   uint64
	mtime time.Time
	mode  fs.FileMode
}

func stat(t *testing.T, path string) fileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime(), mode: fi.Mode().Perm()}
}

// entries lists a directory's names, to catch left-over temp files.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func TestWrite(t *testing.T) {
	writers := []struct {
		name  string
		write func(string, []byte, fs.FileMode) (bool, error)
	}{
		{"Write", Write},
		{"WriteVolatile", WriteVolatile},
	}
	for _, w := range writers {
		t.Run(w.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "a", "b") // parents are created
			path := filepath.Join(dir, "f.json")

			wrote, err := w.write(path, []byte("one\n"), 0o640)
			if err != nil || !wrote {
				t.Fatalf("first write = %v, %v", wrote, err)
			}
			first := stat(t, path)
			if first.mode != 0o640 {
				t.Errorf("mode %v, want 0640", first.mode)
			}

			wrote, err = w.write(path, []byte("one\n"), 0o640)
			if err != nil || wrote {
				t.Errorf("same bytes again = %v, %v; want false, nil", wrote, err)
			}
			if same := stat(t, path); same != first {
				t.Errorf("rewriting the same bytes touched the file: %+v -> %+v", first, same)
			}

			wrote, err = w.write(path, []byte("two\n"), 0o640)
			if err != nil || !wrote {
				t.Fatalf("new bytes = %v, %v", wrote, err)
			}
			if b, _ := os.ReadFile(path); string(b) != "two\n" {
				t.Errorf("content %q", b)
			}
			if stat(t, path).ino == first.ino {
				t.Errorf("new content written in place, not renamed over the old file")
			}
			if got := entries(t, dir); !reflect.DeepEqual(got, []string{"f.json"}) {
				t.Errorf("dir holds %v, want only f.json (no temp files)", got)
			}
		})
	}
}

// TestWriteAtomic: a reader never sees a partly written file, only the
// old content or the new.
func TestWriteAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	a, b := bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 256<<10)
	if _, err := WriteVolatile(path, a, 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	bad := make(chan string, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, a) && !bytes.Equal(got, b) {
				select {
				case bad <- fmt.Sprintf("read %d bytes, neither all a nor all b (err: %v)", len(got), err):
				default:
				}
				return
			}
		}
	}()
	for i := range 100 {
		data := a
		if i%2 == 0 {
			data = b
		}
		if _, err := WriteVolatile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case msg := <-bad:
		t.Errorf("a reader saw a partial file: %s", msg)
	default:
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if wrote, err := Write(filepath.Join(blocker, "x.json"), []byte("x"), 0o644); err == nil || wrote {
		t.Errorf("writing below a regular file = %v, %v; want an error", wrote, err)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ports.json")
	stale := filepath.Join(dir, ".ports.json.tmp-123")
	other := filepath.Join(dir, ".other.json.tmp-123")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	RemoveStale(path)
	if _, err := os.Stat(stale); err == nil {
		t.Error("stale temporary file kept")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("another file's temporary file removed")
	}
}

// TestErrorNamesTheTarget: a failed write of the temporary file is reported
// as one of the target (what the reader knows), with its cause kept.
func TestErrorNamesTheTarget(t *testing.T) {
	err := namePath("/var/lib/meshx/ports.json",
		&fs.PathError{Op: "write", Path: "/var/lib/meshx/.ports.json.tmp-123", Err: syscall.ENOSPC})
	if got, want := err.Error(), "write /var/lib/meshx/ports.json: no space left on device"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("errors.Is(%v, ENOSPC) = false", err)
	}
}
