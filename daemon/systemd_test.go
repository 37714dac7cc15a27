package daemon

import (
	"net"
	"testing"
)

func TestSameAddr(t *testing.T) {
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, c := range []struct {
		addr   net.Addr
		listen string
		want   bool
	}{
		{tcp("127.0.0.1", 5432), "127.0.0.1:5432", true},
		{tcp("127.0.0.1", 5432), "127.0.0.1:5433", false},
		{tcp("127.0.0.1", 5432), "127.0.0.2:5432", false},
		{tcp("::1", 5432), "[::1]:5432", true},
		{tcp("::", 5432), "[::]:5432", true},
		{tcp("::", 5432), "0.0.0.0:5432", true}, // Go records 0.0.0.0 as [::]
		{tcp("0.0.0.0", 5432), "[::]:5432", true},
		{tcp("::", 5432), ":5432", true},
		{tcp("::", 5432), "127.0.0.1:5432", false},
		{tcp("127.0.0.1", 5432), "[::]:5432", false},
		{tcp("127.0.0.1", 5432), "localhost:5432", false}, // endpoints record addresses
		{tcp("127.0.0.1", 5432), "nonsense", false},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "127.0.0.1:5432", false},
	} {
		if got := sameAddr(c.addr, c.listen); got != c.want {
			t.Errorf("sameAddr(%v, %q) = %v, want %v", c.addr, c.listen, got, c.want)
		}
	}
}

// An endpoint takes the inherited socket bound to its recorded address,
// whatever its name; one named after its branch but bound elsewhere is
// left (the endpoint listens where it is recorded), and the sockets no
// endpoint took are closed once the endpoints are restored.
func TestInheritedListeners(t *testing.T) {
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	unit, named, stale, spare := listen(), listen(), listen(), listen()
	d := &Daemon{}
	d.Inherit(map[string][]net.Listener{
		"neonfs@vol.socket": {unit, spare}, // a socket unit names all its sockets alike
		"dev":               {named},
		"main":              {stale},
	})

	got, err := d.listen("main", unit.Addr().String())
	if err != nil || got != unit {
		t.Fatalf("main on the unit's address: %v, %v; want the inherited socket", got, err)
	}
	got, err = d.listen("dev", named.Addr().String())
	if err != nil || got != named {
		t.Fatalf("dev on its named socket's address: %v, %v; want the inherited socket", got, err)
	}
	got, err = d.listen("main", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if got == stale || got == spare {
		t.Fatal("a socket bound elsewhere was taken")
	}
	got.Close()

	d.closeUnclaimed()
	for _, ln := range []net.Listener{stale, spare} {
		if _, err := ln.Accept(); err == nil {
			t.Errorf("unclaimed socket %v still open", ln.Addr())
		}
	}
	for _, ln := range []net.Listener{unit, named} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("claimed socket %v: %v", ln.Addr(), err)
		}
		c.Close()
		ln.Close()
	}
	if len(d.inherited.ls) != 0 {
		t.Errorf("%d inherited sockets left after closeUnclaimed", len(d.inherited.ls))
	}
}
