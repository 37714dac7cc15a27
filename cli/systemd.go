package cli

import (
	"fmt"
	"os"
	"path/filepath"

	ucli "github.com/urfave/cli/v2"

	"github.com/neonfs/neonfs/daemon"
	"github.com/neonfs/neonfs/systemd"
	"github.com/neonfs/neonfs/volume"
)

func systemdCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "systemd",
		Usage: "run volumes under systemd",
		Subcommands: []*ucli.Command{
			{
				Name:  "install",
				Usage: "write a volume's units: its daemon, a socket unit holding its endpoints' ports, and (--postgres) a mount for your own Postgres unit",
				Description: "Writes neonfs@.service (the daemon, `neonfs serve`; instance = volume name) with\n" +
					"the volume's drop-in, and neonfs@VOLUME.socket with one ListenStream per endpoint\n" +
					"recorded in the volume: systemd then holds those ports while the daemon is down,\n" +
					"and a connection starts it. Rerun it after `endpoint create` or `delete`.\n" +
					"With --postgres UNIT it also writes a unit that mounts --branch at --mountpoint\n" +
					"through the daemon, and a drop-in ordering UNIT (an existing Postgres unit, such\n" +
					"as postgresql@15-main.service) after it. Prints what it wrote and what to run next.",
				ArgsUsage: " ",
				Flags: []ucli.Flag{dataFlag, jsonFlag,
					&ucli.StringFlag{Name: "volume", Usage: "the volume's name, the units' instance (default: the data directory's name; without --data, the data directory is /var/lib/neonfs/VOLUME)"},
					&ucli.StringFlag{Name: "dir", Value: systemd.DefaultDir, Usage: "where to write the units"},
					&ucli.StringFlag{Name: "bin", Usage: "the neonfs binary the units run (default: this one)"},
					&ucli.StringFlag{Name: "postgres", Usage: "an existing Postgres unit (postgresql@15-main.service) to run on --branch"},
					&ucli.StringFlag{Name: "branch", Value: "main", Usage: "with --postgres: the branch its data directory is on"},
					&ucli.StringFlag{Name: "mountpoint", Usage: "with --postgres: where the branch is mounted (default /mnt/neonfs/VOLUME/BRANCH)"},
				},
				Action: systemdInstall,
			},
		},
	}
}

type installReply struct {
	Dir     string         `json:"dir"`
	Written []systemd.Unit `json:"written"`
	Notes   []string       `json:"notes,omitempty"`
	Next    []string       `json:"next"`
}

func systemdInstall(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	name, data := c.String("volume"), c.String("data")
	if name != "" && !c.IsSet("data") {
		data = systemd.DefaultData(name)
	}
	data, err := filepath.Abs(data)
	if err != nil {
		return err
	}
	if name == "" {
		name = filepath.Base(data)
	}
	if _, err := volume.ReadConfig(data); err != nil {
		return err
	}
	bin := c.String("bin")
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return fmt.Errorf("the neonfs binary: %w (name it with --bin)", err)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	if fi, err := os.Stat(bin); err != nil {
		return fmt.Errorf("--bin: %w", err)
	} else if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("--bin %s is not an executable file", bin)
	}
	v := systemd.Volume{Name: name, Data: data, Bin: bin}
	if pg := c.String("postgres"); pg != "" {
		mnt := c.String("mountpoint")
		if mnt == "" {
			mnt = systemd.DefaultMountpoint(name, c.String("branch"))
		}
		v.Postgres = &systemd.Postgres{Unit: pg, Branch: c.String("branch"), Mountpoint: filepath.Clean(mnt)}
	} else if c.IsSet("branch") || c.IsSet("mountpoint") {
		return fmt.Errorf("--branch and --mountpoint go with --postgres UNIT")
	}
	specs, err := daemon.RecordedEndpoints(data)
	if err != nil {
		return err
	}
	for _, s := range specs {
		v.Endpoints = append(v.Endpoints, systemd.Endpoint{Branch: s.Branch, Listen: s.Listen})
		if s.HTTP != "" { // the serverless driver's listener: held the same way
			v.Endpoints = append(v.Endpoints, systemd.Endpoint{Branch: s.Branch, Listen: s.HTTP})
		}
	}
	units, err := systemd.Units(v)
	if err != nil {
		return err
	}
	dir := c.String("dir")
	if _, err := systemd.Write(dir, units); err != nil {
		return err
	}
	rep := installReply{Dir: dir, Written: units, Next: systemd.Next(v)}
	socket := filepath.Join(dir, systemd.SocketName(name))
	if len(v.Endpoints) == 0 {
		note := fmt.Sprintf("no socket unit: %s records no endpoint (rerun this after `neonfs endpoint create`)", data)
		if _, err := os.Stat(socket); err == nil {
			note += fmt.Sprintf("; %s from an earlier install is stale: systemctl disable --now %s, then remove it",
				socket, systemd.SocketName(name))
		}
		rep.Notes = append(rep.Notes, note)
	}
	if _, running, err := daemonRunning(c.Context, data); err == nil && running {
		rep.Notes = append(rep.Notes, "a daemon serves the volume now: if it is not one of these units (a `neonfs serve` started by hand), stop it before the restart below, since it holds the volume and the ports")
	}
	if c.Bool("json") {
		return printJSON(rep)
	}
	for _, u := range units {
		fmt.Printf("wrote %s: %s\n", filepath.Join(dir, u.Path), u.What)
	}
	for _, n := range rep.Notes {
		fmt.Printf("note: %s\n", n)
	}
	fmt.Println("next, as root:")
	for _, n := range rep.Next {
		fmt.Printf("  %s\n", n)
	}
	return nil
}
