package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Set is every service-config of a host: the valid ones and, per file, the
// problems of the broken ones. A broken file blocks only its own service.
type Set struct {
	Services []*Service
	Broken   map[string]error // file -> joined located problems
}

// Err joins the problems of every broken file (nil when all are valid).
func (s *Set) Err() error {
	files := make([]string, 0, len(s.Broken))
	for f := range s.Broken {
		files = append(files, f)
	}
	sort.Strings(files)
	errs := make([]error, 0, len(files))
	for _, f := range files {
		errs = append(errs, s.Broken[f])
	}
	return errors.Join(errs...)
}

// IsServiceFile reports whether a services.d entry is a service-config.
func IsServiceFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// LoadServices reads every service-config in dir. A missing dir is an empty set.
func LoadServices(dir string, d Defaults) (*Set, error) {
	set := &Set{Broken: map[string]error{}}
	entries, err := os.ReadDir(dir)
	if _, lerr := os.Lstat(dir); errors.Is(lerr, fs.ErrNotExist) {
		return set, nil // missing, not a dangling link
	}
	if err != nil { // a file, a dangling link, no permission: bad input
		p := &Problems{file: dir}
		p.add(0, "", "cannot read the service-config directory: %s", readReason(dir, err))
		return nil, p.Err()
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if !IsServiceFile(e.Name()) {
			continue
		}
		s, err := ReadFile(path, d)
		if err != nil {
			set.Broken[path] = err
			continue
		}
		set.Services = append(set.Services, s)
	}
	set.checkNames()
	return set, nil
}

// checkNames moves every service whose name an earlier file (by file name)
// already uses to Broken: the name is the systemd instance, so it must be
// unique on the host, and the service already configured keeps running.
func (s *Set) checkNames() {
	first := map[string]*Service{}
	for _, svc := range slices.Clone(s.Services) {
		if o, dup := first[svc.Name]; dup {
			s.Reject(svc, "service.name", "service name %q is also used by %s", svc.Name, o.File)
			continue
		}
		first[svc.Name] = svc
	}
}

// Reject moves a service to Broken with a located problem (for checks made
// after rendering, such as duplicate ids or port clashes).
func (s *Set) Reject(svc *Service, field, format string, args ...any) {
	p := &Problems{file: svc.File}
	p.at(svc.Loc(field), format, args...)
	err := p.Err()
	if prev, ok := s.Broken[svc.File]; ok {
		err = errors.Join(prev, err)
	}
	s.Broken[svc.File] = err
	for i, o := range s.Services {
		if o == svc {
			s.Services = append(s.Services[:i], s.Services[i+1:]...)
			break
		}
	}
}
