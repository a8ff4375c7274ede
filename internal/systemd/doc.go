// Package systemd is meshx's side of the contract with the systemd service manager:
// the names of the meshx-proxy@ instances, their reconciliation over D-Bus
// (enable+start what is wanted, stop+disable what is not, the transparent-proxy
// drop-in), readiness and watchdog notifications, and a log/slog handler that
// writes to the journal with structured fields.
//
// Everything here is a no-op or reports "not available" when the process does
// not run under systemd, so the binaries stay usable from a shell.
package systemd
