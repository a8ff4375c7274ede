//go:build !meshx_faults

// Package fault marks the points of a meshx-init run where the system tests
// inject faults. In a normal build Point does nothing and costs nothing. A
// build with `-tags meshx_faults` (test/e2e builds one) reads
// MESHX_FAULT=<point>:<action> and, when the run reaches that point, acts:
//
//	kill   SIGKILL to itself (a crash or power loss of the process)
//	stop   SIGSTOP to itself (a run that holds its lock; SIGCONT resumes it)
//	panic  panic in the goroutine that reached the point
package fault

// Enabled reports whether this build injects faults.
const Enabled = false

// Point marks a point of a run.
func Point(string) {}
