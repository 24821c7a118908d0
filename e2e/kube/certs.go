package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files in the cert dir. They are made once and reused, so a restarted
// server keeps its CA, serving certificate and service-account key, and a
// kubeconfig written before the restart stays valid after it.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serveCertFile  = "apiserver.crt"
	serveKeyFile   = "apiserver.key"
	adminCertFile  = "admin.crt"
	adminKeyFile   = "admin.key"
	saKeyFile      = "sa.key"
	kubeconfigFile = "admin.kubeconfig"
)

// keyPair is a certificate with its private key.
type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	keyPEM  []byte
}

// ensureCerts makes (or loads) the CA, the serving certificate for
// bindIP, the admin client certificate (group system:masters) and the
// service-account signing key in dir, and writes the admin kubeconfig for
// https://bindIP:port. It returns the kubeconfig path.
func ensureCerts(dir string, bindIP net.IP, port int) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	ca, err := loadPair(dir, caCertFile, caKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		ca, err = newPair(nil, &x509.Certificate{
			Subject:               pkix.Name{CommonName: "overlay-e2e-ca"},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		})
		if err == nil {
			err = savePair(dir, caCertFile, caKeyFile, ca)
		}
	}
	if err != nil {
		return "", fmt.Errorf("CA: %w", err)
	}

	// The serving certificate is remade when the bind address is not among
	// its SANs (a cert dir reused with another address).
	serve, err := loadPair(dir, serveCertFile, serveKeyFile)
	if err == nil && serve.cert.VerifyHostname(bindIP.String()) != nil {
		err = os.ErrNotExist
	}
	if errors.Is(err, os.ErrNotExist) {
		serve, err = newPair(ca, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: uniqIPs(bindIP, net.IPv4(127, 0, 0, 1), net.IPv6loopback),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err == nil {
			err = savePair(dir, serveCertFile, serveKeyFile, serve)
		}
	}
	if err != nil {
		return "", fmt.Errorf("serving certificate: %w", err)
	}

	admin, err := loadPair(dir, adminCertFile, adminKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		admin, err = newPair(ca, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "overlay-e2e-admin", Organization: []string{"system:masters"}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err == nil {
			err = savePair(dir, adminCertFile, adminKeyFile, admin)
		}
	}
	if err != nil {
		return "", fmt.Errorf("admin certificate: %w", err)
	}

	if _, err := os.Stat(filepath.Join(dir, saKeyFile)); errors.Is(err, os.ErrNotExist) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", err
		}
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return "", err
		}
		if err := writeFile(dir, saKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}

	host := net.JoinHostPort(bindIP.String(), fmt.Sprint(port))
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://%s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
`, host, b64(ca.certPEM), b64(admin.certPEM), b64(admin.keyPEM))
	if err := writeFile(dir, kubeconfigFile, []byte(kc)); err != nil {
		return "", err
	}
	return filepath.Join(dir, kubeconfigFile), nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func uniqIPs(ips ...net.IP) []net.IP {
	var out []net.IP
	for _, ip := range ips {
		dup := false
		for _, o := range out {
			dup = dup || o.Equal(ip)
		}
		if !dup {
			out = append(out, ip)
		}
	}
	return out
}

// newPair makes a P-256 key and a certificate from tmpl, signed by parent
// (self-signed when parent is nil), valid for a year from an hour ago.
func newPair(parent *keyPair, tmpl *x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	signCert, signKey := tmpl, key
	if parent != nil {
		signCert, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signCert, &key.PublicKey, signKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}, nil
}

func savePair(dir, certName, keyName string, p *keyPair) error {
	if err := writeFile(dir, keyName, p.keyPEM); err != nil {
		return err
	}
	return writeFile(dir, certName, p.certPEM)
}

// loadPair reads a certificate and key written by savePair; a missing file
// is reported as os.ErrNotExist.
func loadPair(dir, certName, keyName string) (*keyPair, error) {
	cb, err := os.ReadFile(filepath.Join(dir, certName))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, keyName))
	if err != nil {
		return nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, fmt.Errorf("%s or %s: no PEM block", certName, keyName)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certName, err)
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyName, err)
	}
	return &keyPair{cert: cert, certPEM: cb, key: key, keyPEM: kb}, nil
}

func writeFile(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}
