package tests

import (
	"strings"
	"testing"

	"github.com/neonfs/neonfs/raftwal/raftwaltest"
)

// TestClusterTLS: peers given --tls-cert/--tls-key/--tls-ca talk mutual
// TLS. Two nodes with certificates from the cluster's CA form a cluster
// and replicate; a node whose certificate another CA signed, and a node
// without TLS, cannot join: both are refused, with an error that says so.
func TestClusterTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: a cluster")
	}
	certs := t.TempDir()
	good, err := raftwaltest.WriteCA(certs, "cluster-ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := raftwaltest.WriteCA(certs, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1"}, tlsArgs(t, certs, good, "n1")...)
	c.nodes[0].start(t)
	join := func(n *clusterNode, extra ...string) (int, string) {
		args := append([]string{"join", "--node-id", n.id, "--raft-addr", n.raft, "--peer", c.nodes[0].raft}, extra...)
		code, out, errOut := n.cli.run(t, args...)
		return code, out + errOut
	}
	if code, out := join(c.nodes[1], tlsArgs(t, certs, good, "n2")...); code != 0 {
		t.Fatalf("join with a good certificate: exit %d\n%s", code, out)
	}
	c.nodes[1].start(t)
	c.waitHealthy(t, c.nodes[0], 2)
	c.waitHealthy(t, c.nodes[1], 2)

	code, out := join(c.nodes[2], tlsArgs(t, certs, other, "n3")...)
	if code == 0 || !strings.Contains(out, "certificate") {
		t.Fatalf("join with a certificate from another CA: exit %d\n%s", code, out)
	}
	t.Logf("another CA's certificate refused: %s", strings.TrimSpace(out))
	code, out = join(c.nodes[3])
	if code == 0 {
		t.Fatalf("join without TLS succeeded:\n%s", out)
	}
	t.Logf("a peer without TLS refused: %s", strings.TrimSpace(out))
	st, _ := c.nodes[0].status(t)
	if len(st.Members) != 2 {
		t.Fatalf("members after refused joins: %+v", st.Members)
	}
	if !strings.Contains(readFile(t, c.nodes[0].log), "cluster CA") && !strings.Contains(readFile(t, c.nodes[0].log), "certificate") {
		t.Errorf("node 1's log does not name the refused peer's certificate")
	}
}

func tlsArgs(t *testing.T, dir string, ca raftwaltest.CA, name string) []string {
	t.Helper()
	cert, key, err := ca.Issue(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", ca.File}
}
