package systemd

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/neonfs/neonfs/systemd/systemdtest"
)

var update = flag.Bool("update", false, "rewrite testdata/ from what Units writes")

var cases = map[string]Volume{
	// The default data directory, no endpoints yet: the daemon only.
	"plain": {Name: "vol", Data: "/var/lib/neonfs/vol", Bin: "/usr/local/bin/neonfs"},
	// Endpoints (one on every address), and the Postgres example.
	"endpoints": {Name: "prod", Data: "/srv/neonfs/prod", Bin: "/opt/neonfs/bin/neonfs",
		Endpoints: []Endpoint{{Branch: "dev", Listen: "[::]:5433"}, {Branch: "main", Listen: "127.0.0.1:5432"}},
		Postgres:  &Postgres{Unit: "postgresql@15-main.service", Branch: "main", Mountpoint: "/mnt/neonfs/prod/main"}},
}

// The units of each case, and the commands install prints after them,
// are testdata/CASE.units; -update rewrites it.
func TestUnitsGolden(t *testing.T) {
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			units, err := Units(v)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for _, u := range units {
				fmt.Fprintf(&b, "==> %s (%s: %s) <==\n%s\n", u.Path, u.Unit, u.What, u.Content)
			}
			fmt.Fprintf(&b, "==> next <==\n%s\n", strings.Join(Next(v), "\n"))
			got := b.String()
			path := filepath.Join("testdata", name+".units")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("the units differ from %s (go test ./systemd -update rewrites it); got:\n%s", path, got)
			}
		})
	}
}

func withPostgres(unit, branch, mnt string) func(*Volume) {
	return func(v *Volume) { v.Postgres = &Postgres{Unit: unit, Branch: branch, Mountpoint: mnt} }
}

func TestUnitsRefuse(t *testing.T) {
	ok := cases["endpoints"]
	for _, c := range []struct {
		name string
		edit func(v *Volume)
		want string
	}{
		{"volume name", func(v *Volume) { v.Name = "a b" }, "volume name"},
		{"template volume", func(v *Volume) { v.Name = "" }, "volume name"},
		{"relative data", func(v *Volume) { v.Data = "srv/vol" }, "data directory"},
		{"specifier in data", func(v *Volume) { v.Data = "/srv/%i" }, "data directory"},
		{"space in binary", func(v *Volume) { v.Bin = "/opt/my neonfs" }, "neonfs binary"},
		{"variable in binary", func(v *Volume) { v.Bin = "/opt/$HOME/neonfs" }, "neonfs binary"},
		{"endpoint address", func(v *Volume) { v.Endpoints = []Endpoint{{Branch: "main", Listen: "127.0.0.1:5432 x"}} }, "endpoint"},
		{"template postgres", withPostgres("postgresql@.service", "main", "/mnt/x"), "postgres unit"},
		{"not a service", withPostgres("postgresql.socket", "main", "/mnt/x"), "postgres unit"},
		{"branch", withPostgres("pg.service", "-x", "/mnt/x"), "branch"},
		{"mountpoint /", withPostgres("pg.service", "main", "/"), "mountpoint"},
	} {
		v := ok
		c.edit(&v)
		if _, err := Units(v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %s", c.name, err, c.want)
		}
	}
}

// Every unit of every case passes systemd-analyze verify, which checks
// keys, values, specifiers, that the binaries exist and that the units
// named in dependencies load.
func TestUnitsVerify(t *testing.T) {
	systemdtest.Analyze(t)
	bin, err := os.Executable() // any executable: verify checks ExecStart exists
	if err != nil || !validPath.MatchString(bin) {
		bin = "/bin/sh"
	}
	for name, v := range cases {
		t.Run(name, func(t *testing.T) {
			v.Bin = bin
			units, err := Units(v)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if _, err := Write(dir, units); err != nil {
				t.Fatal(err)
			}
			names := []string{ServiceName(v.Name)} // the template, with the volume's drop-in
			for _, u := range units {
				switch {
				case u.Unit == "neonfs@.service" || u.Unit == ServiceName(v.Name):
				case v.Postgres != nil && u.Unit == v.Postgres.Unit && !systemHas(v.Postgres.Unit):
					if os.Getenv(systemdtest.Required) != "" {
						t.Errorf("%s is not installed, so its drop-in cannot be verified (scripts/deps.sh installs Postgres 15)", u.Unit)
					} else {
						t.Logf("not verifying the drop-in for %s: the unit is not installed", u.Unit)
					}
				default:
					names = append(names, u.Unit)
				}
			}
			systemdtest.Verify(t, dir, names...)
		})
	}
}

// systemHas reports whether the system defines unit (or its template).
func systemHas(unit string) bool {
	names := []string{unit}
	if at := strings.IndexByte(unit, '@'); at >= 0 {
		names = append(names, unit[:at+1]+filepath.Ext(unit))
	}
	for _, d := range []string{"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"} {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(d, n)); err == nil {
				return true
			}
		}
	}
	return false
}
