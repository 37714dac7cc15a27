package raftwal

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// LoadTLS builds the config for both sides of peer connections from PEM
// files: this node's certificate and key, and the CA that signs every
// peer's certificate. The same config serves as server (Mux.Listen) and as
// client (Mux.Dial).
//
// Peers are addressed by IP and the CA is the cluster's own, so trust is
// "chains to the cluster CA", never a host name: the server side relies on
// ClientCAs with RequireAndVerifyClientCert, and the client side skips Go's
// host name check (InsecureSkipVerify) and verifies the chain itself in
// VerifyConnection, so a server holding a certificate from another CA is
// refused by the client just as such a client is refused by the server.
//
// Errors name the file at fault and never quote its contents, so no key
// material reaches logs.
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("raftwal tls: read certificate: %w", err)
	}
	if _, err := parsePEMCerts(certPEM); err != nil {
		return nil, fmt.Errorf("raftwal tls: certificate file %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("raftwal tls: read key: %w", err)
	}
	if !hasPEMKey(keyPEM) {
		return nil, fmt.Errorf("raftwal tls: key file %s: no PEM private key block", keyFile)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// X509KeyPair's errors are fixed strings (no key bytes), so they
		// are safe to wrap.
		return nil, fmt.Errorf("raftwal tls: key file %s with certificate %s: %w", keyFile, certFile, err)
	}

	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("raftwal tls: read CA: %w", err)
	}
	caCerts, err := parsePEMCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("raftwal tls: CA file %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range caCerts {
		pool.AddCert(c)
	}

	// Catch a certificate from the wrong CA, expired, or without client
	// auth usage at startup: otherwise every peer would refuse this node
	// and the only symptom would be handshake warnings on the peers.
	// Client auth is the usage RequireAndVerifyClientCert demands.
	leaf := pair.Leaf
	if leaf == nil { // Leaf is filled by X509KeyPair since Go 1.23; keep the fallback cheap.
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("raftwal tls: certificate file %s: %w", certFile, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: intermediates(pair.Certificate[1:]),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("raftwal tls: certificate file %s does not verify against CA file %s for client authentication: %w", certFile, caFile, err)
	}

	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		// Server side.
		ClientCAs:  pool,
		ClientAuth: tls.RequireAndVerifyClientCert,
		// Client side: Go's verification would demand a host name; the
		// chain is checked in VerifyConnection instead. VerifyConnection
		// also runs on the server side, after Go's own client-certificate
		// check, where it is a harmless repeat.
		InsecureSkipVerify: true,
		VerifyConnection:   verifyPeerChain(pool),
	}, nil
}

// verifyPeerChain returns a VerifyConnection hook accepting a peer whose
// certificate chains to roots, for any key usage: the cluster CA only
// issues node certificates, and they serve both as client and server.
func verifyPeerChain(roots *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("raftwal tls: peer presented no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err != nil {
			return fmt.Errorf("raftwal tls: peer certificate %q not signed by the cluster CA: %w",
				cs.PeerCertificates[0].Subject.CommonName, err)
		}
		return nil
	}
}

// parsePEMCerts returns every CERTIFICATE block of data, failing when there
// is none or one does not parse. Other block types are skipped so a bundle
// may carry comments or chains.
func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// hasPEMKey reports whether data holds a PEM block of a private key type
// ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"). It only looks at
// block types, so nothing about the key itself can leak from here.
func hasPEMKey(data []byte) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			return true
		}
	}
}

func intermediates(ders [][]byte) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(c)
		}
	}
	return pool
}
