// Package systemd writes the unit files that run a volume under systemd
// (`neonfs systemd install`): the daemon, neonfs@.service, a template
// whose instance is the volume's name; a socket unit, neonfs@VOLUME.socket,
// that holds the ports of the volume's endpoints while the daemon is down
// and hands them to it (socket activation); and, for people who run
// Postgres themselves, a mount of a branch through the daemon with a
// drop-in that orders their Postgres unit after it.
//
// The daemon's side of the protocol (sd_notify READY/STOPPING, taking
// the inherited sockets) is in the daemon package.
package systemd

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
)

// DefaultDir is where units are written.
const DefaultDir = "/etc/systemd/system"

// DefaultData is the data directory of a volume named name, the one
// neonfs@name.service uses unless told otherwise.
func DefaultData(name string) string { return "/var/lib/neonfs/" + name }

// Volume is what the units are written for.
type Volume struct {
	Name      string     // the instance: neonfs@Name.service
	Data      string     // absolute data directory
	Bin       string     // absolute path of the neonfs binary the units run
	Endpoints []Endpoint // as recorded in Data/endpoints.json
	// Postgres, if set, gets the example: an existing Postgres unit run
	// on a branch of the volume.
	Postgres *Postgres
}

// Endpoint is an endpoint's branch and listening address (host:port).
type Endpoint struct {
	Branch string
	Listen string
}

// Postgres is an existing Postgres unit (postgresql@15-main.service) whose
// data directory is on Branch, mounted at Mountpoint.
type Postgres struct {
	Unit       string
	Branch     string
	Mountpoint string
}

// Unit is one file to write.
type Unit struct {
	Path    string `json:"path"` // relative to the unit directory
	Unit    string `json:"unit"` // the unit it defines or adds to
	What    string `json:"what"` // what it is for, for people
	Content string `json:"-"`
}

// ServiceName is the daemon's unit for volume name.
func ServiceName(name string) string { return "neonfs@" + name + ".service" }

// SocketName is the socket unit of volume name's endpoints.
func SocketName(name string) string { return "neonfs@" + name + ".socket" }

// MountName is the unit that mounts the branch of the Postgres unit
// pgUnit: one per Postgres unit, and named after it, since no separator
// is left between a volume and a branch name that a unit name may hold
// and systemd-analyze reads (':' means an alias there).
func MountName(pgUnit string) string {
	stem := strings.TrimSuffix(pgUnit, ".service")
	return "neonfs-mount-" + strings.ReplaceAll(stem, "@", "-") + ".service"
}

// DefaultMountpoint is where the example mounts branch of volume name.
func DefaultMountpoint(name, branch string) string { return "/mnt/neonfs/" + name + "/" + branch }

var (
	// Like branch names: they go into unit names as they are, where %i
	// and %I (escaped and not) then agree.
	validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	// Paths and addresses go into unit files unquoted: nothing that
	// systemd would split, expand (%, $) or unescape (\).
	validPath    = regexp.MustCompile(`^/[A-Za-z0-9_.+/@,=-]*$`)
	validListen  = regexp.MustCompile(`^[A-Za-z0-9_.:\[\]-]+$`)
	validService = regexp.MustCompile(`^[A-Za-z0-9_.-]+(@[A-Za-z0-9_.-]+)?\.service$`)
)

func (v Volume) check() error {
	if !validName.MatchString(v.Name) {
		return fmt.Errorf("volume name %q: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit (it is the units' instance name)", v.Name)
	}
	for what, p := range map[string]string{"data directory": v.Data, "neonfs binary": v.Bin} {
		if !validPath.MatchString(p) {
			return fmt.Errorf("%s %q: the units take absolute paths of letters, digits and _ . + / @ , = - only", what, p)
		}
	}
	for _, e := range v.Endpoints {
		if !validName.MatchString(e.Branch) || !validListen.MatchString(e.Listen) {
			return fmt.Errorf("endpoint %q on %q: not a branch name and an address", e.Branch, e.Listen)
		}
	}
	if pg := v.Postgres; pg != nil {
		if !validService.MatchString(pg.Unit) || strings.HasSuffix(pg.Unit, "@.service") {
			return fmt.Errorf("postgres unit %q: name one service, like postgresql@15-main.service (not a template)", pg.Unit)
		}
		if !validName.MatchString(pg.Branch) {
			return fmt.Errorf("branch %q: not a branch name", pg.Branch)
		}
		if !validPath.MatchString(pg.Mountpoint) || path.Clean(pg.Mountpoint) == "/" {
			return fmt.Errorf("mountpoint %q: the units take absolute paths of letters, digits and _ . + / @ , = - only, not /", pg.Mountpoint)
		}
	}
	return nil
}

// Units returns the files for v: the daemon's template and the volume's
// drop-in for it, the socket unit if v has endpoints, and the Postgres
// example if asked for.
func Units(v Volume) ([]Unit, error) {
	if err := v.check(); err != nil {
		return nil, err
	}
	svc := ServiceName(v.Name)
	units := []Unit{
		{Path: "neonfs@.service", Unit: "neonfs@.service", What: "the daemon of a volume (neonfs serve), instance = volume name",
			Content: render(serviceTemplate, v)},
		{Path: svc + ".d/neonfs.conf", Unit: svc, What: "volume " + v.Name + "'s data directory, " + v.Data,
			Content: render(dataDropIn, v)},
	}
	if len(v.Endpoints) > 0 {
		units = append(units, Unit{Path: SocketName(v.Name), Unit: SocketName(v.Name),
			What:    fmt.Sprintf("holds the ports of %d endpoint(s) while the daemon is down, and starts it", len(v.Endpoints)),
			Content: render(socketUnit, v)})
	}
	if pg := v.Postgres; pg != nil {
		mnt := MountName(pg.Unit)
		units = append(units,
			Unit{Path: mnt, Unit: mnt, What: "mounts branch " + pg.Branch + " at " + pg.Mountpoint + " through the daemon",
				Content: render(mountUnit, v)},
			Unit{Path: pg.Unit + ".d/neonfs.conf", Unit: pg.Unit, What: "orders " + pg.Unit + " after that mount",
				Content: render(postgresDropIn, v)})
	}
	return units, nil
}

// Next is what to run once the units are written. The daemon stops
// before the socket unit (re)binds the ports, which a running daemon
// holds, and starts after it, taking them over.
func Next(v Volume) []string {
	svc := ServiceName(v.Name)
	var next []string
	if len(v.Endpoints) > 0 {
		sock := SocketName(v.Name)
		next = []string{
			"systemctl daemon-reload",
			"systemctl enable " + sock + " " + svc,
			"systemctl stop " + svc,
			"systemctl restart " + sock,
			"systemctl start " + svc,
		}
	} else {
		next = []string{"systemctl daemon-reload", "systemctl enable " + svc, "systemctl restart " + svc}
	}
	if v.Postgres != nil {
		next = append(next, "systemctl restart "+v.Postgres.Unit)
	}
	return next
}

// Write writes units under dir, each file atomically, and returns their
// paths.
func Write(dir string, units []Unit) ([]string, error) {
	var paths []string
	for _, u := range units {
		p := filepath.Join(dir, filepath.FromSlash(u.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return paths, err
		}
		tmp := p + ".neonfs-tmp"
		err := os.WriteFile(tmp, []byte(u.Content), 0o644)
		if err == nil {
			err = os.Rename(tmp, p)
		}
		if err != nil {
			os.Remove(tmp)
			return paths, fmt.Errorf("write %s: %w", p, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func render(t *template.Template, v Volume) string {
	var b bytes.Buffer
	if err := t.Execute(&b, v); err != nil {
		panic(err) // the templates are ours and v is checked
	}
	return b.String()
}

var funcs = template.FuncMap{
	"service": ServiceName,
	"socket":  SocketName,
	"mount":   MountName,
}

func parse(s string) *template.Template {
	return template.Must(template.New("").Funcs(funcs).Option("missingkey=error").Parse(strings.TrimLeft(s, "\n")))
}

// The daemon. Type=notify: READY=1 once the control socket answers and
// the recorded endpoints listen (so units After= it can use both).
var serviceTemplate = parse(`
# The daemon of neonfs volume %i (neonfs serve): its control socket, the
# branches mounted through it, and its Postgres endpoints. The volume's
# data directory is NEONFS_DATA, set by neonfs@VOLUME.service.d/neonfs.conf
# (default /var/lib/neonfs/%i).
# Written by neonfs systemd install: rerun it rather than edit this file.
[Unit]
Description=neonfs volume %i
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
Environment=NEONFS_DATA=/var/lib/neonfs/%i
ExecStart={{.Bin}} serve --data ${NEONFS_DATA} --run-dir %t/neonfs/%i
# Endpoint branches are mounted, and their Postgres sockets live, under
# /run/neonfs/%i. Kept at stop: a mount that a killed daemon left behind
# must not be deleted through.
RuntimeDirectory=neonfs/%i
RuntimeDirectoryPreserve=yes
Restart=on-failure
RestartSec=2s
# SIGTERM goes to the daemon alone: it stops its endpoints' Postgres (fast
# shutdown), unmounts and closes the volume; what is left then is killed.
KillMode=mixed
# Starting may replay a long log; stopping waits for each endpoint's
# Postgres to shut down and its branch to unmount, then the last flush.
TimeoutStartSec=15min
TimeoutStopSec=5min
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
`)

var dataDropIn = parse(`
# neonfs volume {{.Name}} keeps its data in {{.Data}}.
# Written by neonfs systemd install.
[Service]
Environment=NEONFS_DATA={{.Data}}
`)

// One socket unit for all the endpoints: FileDescriptorName would name
// every socket of a unit alike, so the daemon tells them apart by address.
var socketUnit = parse(`
# The ports of neonfs volume {{.Name}}'s endpoints, held by systemd: while the
# daemon ({{service .Name}}) is down a client waits in the backlog and its
# connection starts the daemon, which takes these sockets over and matches
# them to its endpoints by address. Generated from
#   {{.Data}}/endpoints.json
# rerun neonfs systemd install after endpoint create or delete.
[Unit]
Description=neonfs volume {{.Name}}: endpoint ports

[Socket]
{{- range .Endpoints}}
# branch {{.Branch}}
ListenStream={{.Listen}}
{{- end}}
# An address that is not up yet at boot does not fail the unit.
FreeBind=yes
Service={{service .Name}}

[Install]
WantedBy=sockets.target
`)

var mountUnit = parse(`
{{- with .Postgres -}}
# Branch {{.Branch}} of neonfs volume {{$.Name}}, mounted at
#   {{.Mountpoint}}
# through the volume's daemon for {{.Unit}}
# (whose drop-in neonfs.conf orders it after this unit).
# Written by neonfs systemd install.
[Unit]
Description=neonfs volume {{$.Name}}: branch {{.Branch}} at {{.Mountpoint}}
# The daemon is ready (Type=notify) once its control socket answers.
BindsTo={{service $.Name}}
After={{service $.Name}}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/usr/bin/mkdir -p {{.Mountpoint}}
ExecStart={{$.Bin}} mount --data {{$.Data}} --branch {{.Branch}} {{.Mountpoint}}
ExecStop=-{{$.Bin}} unmount --data {{$.Data}} {{.Mountpoint}}
# The mount of a daemon that died is dead: detach it.
ExecStopPost=-/usr/bin/umount -l {{.Mountpoint}}
{{end -}}
`)

var postgresDropIn = parse(`
{{- with .Postgres -}}
# {{.Unit}} runs on branch {{.Branch}} of neonfs volume {{$.Name}}:
# it starts once {{mount .Unit}} has mounted the
# branch, and stops before it is unmounted. Point the cluster there, at a
# directory made by initdb (or copied) as postgres: in its postgresql.conf,
#   data_directory = '{{.Mountpoint}}/pgdata'
# Written by neonfs systemd install.
[Unit]
BindsTo={{mount .Unit}}
After={{mount .Unit}}
{{end -}}
`)
