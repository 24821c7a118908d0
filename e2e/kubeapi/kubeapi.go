// Package kubeapi runs a real kube-apiserver for the tests and the demo of
// overlay's kube subnet manager: the kube-apiserver-test command of the
// e2e/kube module (k8s.io/kubernetes's own apiserver code), built once into
// a cache directory by Build and started over an etcd URL by Start.
//
// The e2e/kube module is a separate Go module, so the main module neither
// builds nor links Kubernetes' server code: this package only runs the
// binary and speaks HTTPS to it. Package kubeapitest wraps it for tests,
// with the project's embedded etcd under it.
//
// A Server keeps its certificates and port across Stop/Kill and Restart,
// so clients and the admin kubeconfig written at the first start keep
// working after a restart: that is what outage tests need.
package kubeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure Start. Binary, EtcdURL and Dir are required.
type Options struct {
	// Binary is the kube-apiserver-test binary (from Build).
	Binary string
	// EtcdURL is the etcd client URL the server stores its objects in.
	EtcdURL string
	// Dir holds the server's certificates, admin.kubeconfig and log file
	// (apiserver.log); it is created if missing.
	Dir string
	// Addr is the address to serve on (127.0.0.1 when invalid).
	Addr netip.Addr
	// Port is the secure port; 0 picks a free one on Addr (probed with
	// Listen, so Addr must be local to the caller's ListenConfig, see
	// Listen).
	Port int
	// EtcdPrefix is the etcd key prefix for Kubernetes objects (the
	// apiserver's default /registry when empty).
	EtcdPrefix string
	// Command makes the process's command, e.g. to run it in a network
	// namespace (nil: exec.CommandContext).
	Command func(ctx context.Context, name string, args ...string) *exec.Cmd
	// DialContext connects to the server for the readiness check (nil: a
	// net.Dialer). Give one when the server runs in another namespace.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Listen probes a free port when Port is 0 (nil: net.Listen).
	Listen func(network, addr string) (net.Listener, error)
	// ReadyTimeout bounds the wait for /readyz (90 s when 0).
	ReadyTimeout time.Duration
	// Verbosity is the apiserver's -v.
	Verbosity int
}

// Server is a running (or stopped) kube-apiserver-test process. Its methods
// are safe for concurrent use.
type Server struct {
	opts Options
	url  string

	mu   sync.Mutex // guards proc
	proc *proc
}

// Start starts the server and returns once its /readyz answers ok with the
// admin certificate, or with an error that quotes the log's tail. ctx
// bounds the start only.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Binary == "" || o.EtcdURL == "" || o.Dir == "" {
		return nil, errors.New("kubeapi: Options.Binary, EtcdURL and Dir are required")
	}
	if !o.Addr.IsValid() {
		o.Addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("kubeapi: %w", err)
	}
	if o.Port == 0 {
		p, err := freePort(o)
		if err != nil {
			return nil, fmt.Errorf("kubeapi: free port on %s: %w", o.Addr, err)
		}
		o.Port = p
	}
	s := &Server{opts: o, url: "https://" + netip.AddrPortFrom(o.Addr, uint16(o.Port)).String()}
	if err := s.Restart(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func freePort(o Options) (int, error) {
	listen := o.Listen
	if listen == nil {
		listen = net.Listen
	}
	l, err := listen("tcp", netip.AddrPortFrom(o.Addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL is the server's https:// URL.
func (s *Server) URL() string { return s.url }

// Port is the secure port; it stays the same across restarts.
func (s *Server) Port() int { return s.opts.Port }

// Kubeconfig is the admin kubeconfig (user in group system:masters). It
// exists once Start has returned and stays valid across restarts.
func (s *Server) Kubeconfig() string { return filepath.Join(s.opts.Dir, "admin.kubeconfig") }

// CAFile, AdminCertFile and AdminKeyFile are the PEM files the kubeconfig
// embeds.
func (s *Server) CAFile() string        { return filepath.Join(s.opts.Dir, "ca.crt") }
func (s *Server) AdminCertFile() string { return filepath.Join(s.opts.Dir, "admin.crt") }
func (s *Server) AdminKeyFile() string  { return filepath.Join(s.opts.Dir, "admin.key") }

// LogPath is the server's log file (stdout and stderr, appended across
// restarts).
func (s *Server) LogPath() string { return filepath.Join(s.opts.Dir, "apiserver.log") }

// PID is the running process's ID, or 0 when stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Restart starts the server again after Stop or Kill, on the same port
// with the same certificates, and waits for /readyz. It is a no-op while
// the server runs. A port still held a moment after a kill is retried
// until the ready timeout.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && !s.proc.exited() {
		return nil
	}
	o := s.opts
	args := []string{
		"--etcd-servers=" + o.EtcdURL,
		"--bind-address=" + o.Addr.String(),
		"--port=" + strconv.Itoa(o.Port),
		"--cert-dir=" + o.Dir,
		"--v=" + strconv.Itoa(o.Verbosity),
	}
	if o.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix="+o.EtcdPrefix)
	}
	timeout := o.ReadyTimeout
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		mk := o.Command
		if mk == nil {
			mk = exec.CommandContext
		}
		// The process outlives ctx, which bounds only the start.
		cmd := mk(context.Background(), o.Binary, args...)
		p, err := startProc(cmd, s.LogPath())
		if err != nil {
			return fmt.Errorf("kubeapi: %w", err)
		}
		s.proc = p
		err = s.waitReady(ctx, p)
		if err == nil {
			return nil
		}
		p.kill()
		log := tail(s.LogPath(), 30)
		if ctx.Err() == nil && strings.Contains(log, "address already in use") {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		return fmt.Errorf("kubeapi: %s not ready: %w; log %s:\n%s", s.url, err, s.LogPath(), log)
	}
}

// Stop sends SIGTERM and waits up to 20 s for a clean exit, then kills.
// Stopping a stopped server is a no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(20 * time.Second)
}

// Kill ends the server with SIGKILL (a crash: no graceful shutdown) and
// waits for it to be reaped.
func (s *Server) Kill() {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Ready reports whether /readyz answers ok now.
func (s *Server) Ready(ctx context.Context) error {
	c, err := s.httpClient()
	if err != nil {
		return err
	}
	return readyz(ctx, c, s.url)
}

func (s *Server) waitReady(ctx context.Context, p *proc) error {
	c, err := s.httpClient()
	if err != nil {
		// The certificates are written first thing; give the process a
		// moment before giving up on them.
		for i := 0; err != nil && i < 50 && !p.exited(); i++ {
			time.Sleep(100 * time.Millisecond)
			c, err = s.httpClient()
		}
		if err != nil {
			return err
		}
	}
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("exited: %v", p.err)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = readyz(rctx, c, s.url)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-p.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// httpClient is an HTTPS client with the admin certificate that trusts
// only the server's CA.
func (s *Server) httpClient() (*http.Client, error) {
	pair, err := tls.LoadX509KeyPair(s.AdminCertFile(), s.AdminKeyFile())
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	caPEM, err := os.ReadFile(s.CAFile())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no certificate", s.CAFile())
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
		DisableKeepAlives: true,
	}
	if s.opts.DialContext != nil {
		tr.DialContext = s.opts.DialContext
	}
	return &http.Client{Transport: tr}, nil
}

func readyz(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// proc is the server process with its output appended to a log file.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once reaped
	err  error         // Wait's result, read after done
}

func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = f, f
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		fmt.Fprintf(f, "=== %s: exited: %v\n", time.Now().Format(time.RFC3339Nano), p.err)
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.kill()
	return fmt.Errorf("kubeapi: server did not exit within %v of SIGTERM; killed", grace)
}

func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail returns the last n lines of a file, or a note saying why not.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > 64<<10 {
		b = b[len(b)-64<<10:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
