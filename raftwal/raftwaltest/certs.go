// Package raftwaltest writes throwaway certificates for tests of peer TLS
// (raftwal.LoadTLS and the mux): a cluster CA and node certificates it
// signs. Nothing here is fit for production keys.
package raftwaltest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority whose key stays in memory; only its
// certificate is written.
type CA struct {
	File string // PEM certificate, the caFile of raftwal.LoadTLS

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Validity: from an hour ago, so a test host whose clock lags a little
// still accepts it, for ten years, so no test ever meets an expiry.
const (
	backdate = time.Hour
	lifetime = 10 * 365 * 24 * time.Hour
)

// WriteCA creates a self-signed CA and writes its certificate to
// dir/name.crt.
func WriteCA(dir, name string) (CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CA{}, fmt.Errorf("raftwaltest: CA %s: generate key: %w", name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return CA{}, fmt.Errorf("raftwaltest: CA %s: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return CA{}, fmt.Errorf("raftwaltest: CA %s: create certificate: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return CA{}, fmt.Errorf("raftwaltest: CA %s: %w", name, err)
	}
	file := filepath.Join(dir, name+".crt")
	if err := writePEM(file, "CERTIFICATE", der, 0o644); err != nil {
		return CA{}, err
	}
	return CA{File: file, cert: cert, key: key}, nil
}

// Issue creates a node certificate signed by ca, usable as TLS server and
// client, and writes it to dir/name.crt and its key (PKCS#8) to
// dir/name.key. It names 127.0.0.1, ::1, localhost and name, though
// raftwal checks no host names.
func (ca CA) Issue(dir, name string) (certFile, keyFile string, err error) {
	if ca.cert == nil || ca.key == nil {
		return "", "", errors.New("raftwaltest: Issue on a CA not made by WriteCA")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("raftwaltest: node %s: generate key: %w", name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", fmt.Errorf("raftwaltest: node %s: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost", name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("raftwaltest: node %s: create certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("raftwaltest: node %s: marshal key: %w", name, err)
	}
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return "", "", err
	}
	if err := writePEM(keyFile, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func writePEM(file, typ string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(file, data, mode); err != nil {
		return fmt.Errorf("raftwaltest: write %s: %w", file, err)
	}
	return nil
}
