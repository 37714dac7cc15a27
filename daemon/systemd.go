package daemon

import (
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
	sdnotify "github.com/coreos/go-systemd/v22/daemon"
)

// The daemon under systemd: it says when it is ready and when it stops
// (Type=notify), and takes over the listening sockets of a socket unit
// (neonfs@VOLUME.socket) that held its endpoints' ports while it was down.
// Outside systemd none of this does anything.

// SystemdListeners returns the listening sockets systemd handed this
// process (socket activation: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), by
// name; none when it was not socket-activated. It clears those variables
// and marks the descriptors close-on-exec, so no child (Postgres) sees
// them.
func SystemdListeners() map[string][]net.Listener {
	ls, _ := activation.ListenersWithNames() // its error is always nil
	return ls
}

// RecordedEndpoints returns the endpoints recorded in the volume in dir
// (what the daemon restores when it starts).
func RecordedEndpoints(dir string) ([]EndpointSpec, error) {
	return (&Daemon{dir: dir}).readSpecs()
}

// inheritedListeners are listening sockets the daemon did not open, until
// an endpoint claims one; the rest are closed once the recorded endpoints
// are restored.
type inheritedListeners struct {
	mu sync.Mutex
	ls []namedListener
}

type namedListener struct {
	name string
	ln   net.Listener
}

// Inherit hands the daemon listening sockets it did not open (systemd's,
// from SystemdListeners), before Serve. An endpoint takes the one bound to
// its recorded address, whatever its name: a socket unit names all of its
// sockets alike (FileDescriptorName), so the address is what tells them
// apart, and it is what endpoints.json and the clients' connection strings
// hold.
func (d *Daemon) Inherit(byName map[string][]net.Listener) {
	var ls []namedListener
	for name, l := range byName {
		for _, ln := range l {
			ls = append(ls, namedListener{name, ln})
		}
	}
	sort.SliceStable(ls, func(i, j int) bool { return ls[i].name < ls[j].name })
	for _, l := range ls {
		slog.Info("inherited a listening socket", "name", l.name, "address", l.ln.Addr().String())
	}
	d.inherited.mu.Lock()
	d.inherited.ls = append(d.inherited.ls, ls...)
	d.inherited.mu.Unlock()
}

// listen returns the inherited socket bound to addr, or a new one.
//
// An inherited socket named after the branch but bound elsewhere is not
// taken: the endpoint listens where it is recorded, and the socket unit
// is stale (written before the endpoint moved). Taking it would move the
// endpoint to a port its clients do not know, and the next write of
// endpoints.json would make that permanent.
func (d *Daemon) listen(branch, addr string) (net.Listener, error) {
	in := &d.inherited
	in.mu.Lock()
	for i, l := range in.ls {
		if sameAddr(l.ln.Addr(), addr) {
			in.ls = append(in.ls[:i], in.ls[i+1:]...)
			in.mu.Unlock()
			slog.Info("endpoint takes an inherited listening socket", "branch", branch, "address", addr, "name", l.name)
			return l.ln, nil
		}
	}
	for _, l := range in.ls {
		if l.name == branch {
			slog.Warn("an inherited socket named after the branch is bound elsewhere: listening where the endpoint is recorded (rerun `neonfs systemd install` to update the socket unit)",
				"branch", branch, "inherited", l.ln.Addr().String(), "recorded", addr)
		}
	}
	in.mu.Unlock()
	return net.Listen("tcp", addr)
}

// closeUnclaimed closes the inherited sockets no endpoint took. systemd
// still holds its own copy: clients of such a port wait until they time
// out, so the log says how to fix the socket unit.
func (d *Daemon) closeUnclaimed() {
	in := &d.inherited
	in.mu.Lock()
	ls := in.ls
	in.ls = nil
	in.mu.Unlock()
	for _, l := range ls {
		slog.Warn("no endpoint is recorded on an inherited listening socket: closing it (rerun `neonfs systemd install` to update the socket unit)",
			"name", l.name, "address", l.ln.Addr().String())
		l.ln.Close()
	}
}

// sameAddr reports whether a listening socket's address is the endpoint
// address listen (host:port). Any unspecified address (0.0.0.0, ::)
// matches any other: Go records a listener on 0.0.0.0 as [::], and a
// socket unit may say either.
func sameAddr(a net.Addr, listen string) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if port != strconv.Itoa(ta.Port) {
		return false
	}
	ip := net.ParseIP(host)
	if host == "" {
		ip = net.IPv6unspecified
	}
	if ip == nil {
		return false // a host name: endpoints record addresses
	}
	if ip.IsUnspecified() || ta.IP.IsUnspecified() {
		return ip.IsUnspecified() && ta.IP.IsUnspecified()
	}
	return ip.Equal(ta.IP)
}

// notify tells systemd the daemon's state (READY=1, STOPPING=1) when it
// runs as a Type=notify service; otherwise (no NOTIFY_SOCKET) it does
// nothing. NOTIFY_SOCKET stays set for the next state: Postgres, which
// would speak to it too, is started with an environment of its own.
func notify(state string) {
	if _, err := sdnotify.SdNotify(false, state); err != nil {
		slog.Warn("cannot tell systemd", "state", state, "err", err)
	}
}

const (
	notifyReady    = sdnotify.SdNotifyReady
	notifyStopping = sdnotify.SdNotifyStopping
)
