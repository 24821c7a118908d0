package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"overlay/encap"
	"overlay/routes"
)

// Options configure a Tunnel.
type Options struct {
	// Device is the TUN; Conn the underlay socket. Both required; the
	// Tunnel owns them from New on and closes them.
	Device Device
	Conn   Conn
	// Table is the peer table the pumps read. Required; the caller keeps
	// updating it while the tunnel runs.
	Table *routes.Table
	// VNI is the VXLAN network (flannel's default is 1).
	VNI encap.VNI
	// LocalMAC is our VtepMAC: the inner source MAC we send, and the inner
	// destination MAC we accept.
	LocalMAC encap.MAC
	// MTU is the overlay MTU: packets from the TUN larger than it are
	// dropped and answered with ICMP. Zero means the device's MTU.
	MTU int
	// Port is the peers' VXLAN port, used for peers whose endpoint has
	// port 0. Zero means DefaultPort (8472).
	Port uint16
	// BatchSize caps the packets per system call; zero means the larger of
	// the device's and the socket's batch sizes.
	BatchSize int
	// SourceCheck selects which senders' frames the in pump accepts; the
	// zero value is SourceCheckStrict.
	SourceCheck SourceCheck
	// Naive selects the naive datapath, the benchmark floor: one packet per
	// read and per send. It requires a plain device (BatchSize 1) and a
	// socket without GRO (UDPOptions.DisableGRO, and DisableGSO to match).
	Naive bool
	// Logger receives start-up and rate-limited error messages; nil means
	// slog.Default(). Nothing is logged per packet.
	Logger *slog.Logger
}

// Tunnel moves packets between a TUN device and a UDP socket in VXLAN
// framing: the out pump reads batches from the TUN, looks each destination
// up in the peer table, encapsulates in place and sends each peer's packets
// in one call; the in pump receives batches, decapsulates and validates
// them, and writes them to the TUN in one call.
//
// Create one with New and start it with Run. Stats may be called at any
// time from any goroutine; Close at any time, any number of times.
type Tunnel struct {
	dev   Device
	conn  Conn
	table *routes.Table
	vni   encap.VNI
	mac   encap.MAC
	mtu   int
	port  uint16
	batch int
	naive bool
	check SourceCheck
	mode  Mode
	log   *slog.Logger

	out, in dirCounters

	mu      sync.Mutex // guards started and closed
	started bool
	closed  bool
	stop    chan struct{} // closed by shutdown
	done    chan struct{} // closed when Run returns
	once    closeOnce
}

// New checks opts and returns a Tunnel ready to Run. It logs the datapath
// mode (offload or plain, GSO and GRO).
func New(opts Options) (*Tunnel, error) {
	switch {
	case opts.Device == nil:
		return nil, errors.New("tunnel: Options.Device is nil")
	case opts.Conn == nil:
		return nil, errors.New("tunnel: Options.Conn is nil")
	case opts.Table == nil:
		return nil, errors.New("tunnel: Options.Table is nil")
	case !opts.VNI.Valid():
		return nil, fmt.Errorf("tunnel: VNI %d out of range (0-%d)", opts.VNI, encap.MaxVNI)
	case opts.BatchSize < 0:
		return nil, fmt.Errorf("tunnel: batch size %d is negative", opts.BatchSize)
	case int(opts.SourceCheck) >= len(sourceCheckNames):
		return nil, fmt.Errorf("tunnel: unknown %v", opts.SourceCheck)
	}
	t := &Tunnel{
		dev: opts.Device, conn: opts.Conn, table: opts.Table,
		vni: opts.VNI, mac: opts.LocalMAC, mtu: opts.MTU, port: opts.Port,
		naive: opts.Naive, check: opts.SourceCheck, log: opts.Logger,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	if t.mtu == 0 {
		t.mtu = t.dev.MTU()
	}
	if t.mtu < 68 || t.mtu > 65535-encap.Headroom {
		return nil, fmt.Errorf("tunnel: MTU %d out of range (68-%d)", t.mtu, 65535-encap.Headroom)
	}
	if t.port == 0 {
		t.port = DefaultPort
	}
	if t.dev.BatchSize() > 1 {
		t.mode = ModeOffload
	}
	t.batch = max(t.dev.BatchSize(), t.conn.BatchSize())
	if opts.BatchSize > 0 {
		t.batch = min(t.batch, opts.BatchSize)
	}
	if t.naive {
		if t.dev.BatchSize() > 1 || t.conn.GRO() {
			return nil, errors.New("tunnel: naive mode needs a plain TUN (DriverPlain) and a socket without GRO")
		}
		t.batch = 1
	}
	// An offloading device splits one super-packet into up to BatchSize
	// segments, so its reads need at least that many buffers.
	t.batch = max(t.batch, t.dev.BatchSize())
	t.log.Info("tunnel datapath", "device", t.dev.Name(), "mode", t.mode, "gso", t.conn.GSO(), "gro", t.conn.GRO(),
		"batch", t.batch, "naive", t.naive, "checksum-steering", t.steering(), "mtu", t.mtu, "source-check", t.check, "own-poller", isOwnPolled(t.dev) || isOwnPolled(t.conn), "listen", t.conn.LocalAddr())
	return t, nil
}

// ErrRunning is returned by Run when the tunnel is already running or has
// run: a Tunnel runs once.
var ErrRunning = errors.New("tunnel: already started")

// Run moves packets until ctx is done or Close is called, then closes the
// device and the socket, waits for both pumps to exit, and returns nil. A
// Tunnel runs once: a second Run returns ErrRunning, and Run after Close an
// error matching net.ErrClosed.
func (t *Tunnel) Run(ctx context.Context) error {
	t.mu.Lock()
	switch {
	case t.closed:
		t.mu.Unlock()
		return fmt.Errorf("tunnel: run: %w", net.ErrClosed)
	case t.started:
		t.mu.Unlock()
		return ErrRunning
	}
	t.started = true
	t.mu.Unlock()
	defer close(t.done)

	out := newOutPump(t)
	in := newInPump(t, t.conn.ReadBatch)
	// With the own poller (epoll_linux.go) each pump sleeps in an epoll
	// instance of its own: it must stay on the thread the kernel wakes.
	lock := isOwnPolled(t.dev) || isOwnPolled(t.conn)
	pump := func(run func()) func() {
		return func() {
			if lock {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
			}
			run()
			t.shutdown()
		}
	}
	var wg sync.WaitGroup
	wg.Go(pump(out.run))
	wg.Go(pump(in.run))
	if cr, ok := t.conn.(checksummedReader); ok && cr.steered() {
		// The datagrams with an outer checksum arrive on a socket of
		// their own, and get a pump of their own.
		in2 := newInPump(t, cr.readChecksummed)
		wg.Go(pump(in2.run))
	}
	wg.Go(func() {
		select {
		case <-ctx.Done():
			t.shutdown()
		case <-t.stop:
		}
	})
	wg.Wait()
	return nil
}

// shutdown closes the device and socket once, which unblocks both pumps.
func (t *Tunnel) shutdown() error {
	return t.once.do(func() error {
		t.mu.Lock()
		t.closed = true
		t.mu.Unlock()
		close(t.stop)
		return errors.Join(t.dev.Close(), t.conn.Close())
	})
}

// Close stops the tunnel: it closes the device and the socket and, if Run
// is running, waits for it to return. It is idempotent and returns the
// first call's error.
func (t *Tunnel) Close() error {
	err := t.shutdown()
	t.mu.Lock()
	started := t.started
	t.mu.Unlock()
	if started {
		<-t.done
	}
	return err
}

// stopping reports whether shutdown has begun.
func (t *Tunnel) stopping() bool {
	select {
	case <-t.stop:
		return true
	default:
		return false
	}
}

// Stats returns a reading of the tunnel's counters. Per-peer counters are in
// the peer table (routes.Table.Stats).
func (t *Tunnel) Stats() Stats {
	return Stats{
		Device: t.dev.Name(), Mode: t.mode,
		GSO: t.conn.GSO(), GRO: t.conn.GRO(),
		BatchSize: t.batch, Naive: t.naive, SourceCheck: t.check,
		ChecksumSteering: t.steering(),
		Out:              t.out.read(OutDropReasons),
		In:               t.in.read(InDropReasons),
	}
}

// steering reports whether the Conn steers checksummed datagrams to a
// socket of their own.
func (t *Tunnel) steering() bool {
	cr, ok := t.conn.(checksummedReader)
	return ok && cr.steered()
}

// ownPolled is implemented by a Device or Conn opened with OwnPoller
// (epoll_linux.go): the Tunnel then locks each pump to its OS thread.
type ownPolled interface{ ownPolled() bool }

func isOwnPolled(x any) bool {
	o, ok := x.(ownPolled)
	return ok && o.ownPolled()
}

// isClosedErr reports the errors a closed device or socket returns.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// closeOnce runs a close function once and remembers its result.
type closeOnce struct {
	once sync.Once
	err  error
}

func (c *closeOnce) do(f func() error) error {
	c.once.Do(func() { c.err = f() })
	return c.err
}

// errorLog logs a repeated error at most once per interval, with a count of
// those it suppressed. It belongs to one pump.
type errorLog struct {
	log        *slog.Logger
	msg        string
	last       time.Time
	suppressed int
}

const errorLogInterval = 10 * time.Second

func (e *errorLog) report(err error) {
	now := time.Now()
	if !e.last.IsZero() && now.Sub(e.last) < errorLogInterval {
		e.suppressed++
		return
	}
	e.log.Warn(e.msg, "err", err, "suppressed", e.suppressed)
	e.last, e.suppressed = now, 0
}

// readFailed handles a pump's failed read. It returns true if the pump
// should stop (the device or socket is closed, or the tunnel is stopping);
// otherwise it counts the error in dir, logs it through log (rate-limited),
// and backs off once the failures run on (*consecutive, reset by the pump
// after a good read).
func (t *Tunnel) readFailed(err error, dir *dirCounters, log *errorLog, consecutive *int) bool {
	if isClosedErr(err) || t.stopping() {
		return true
	}
	dir.errors.Add(1)
	log.report(err)
	*consecutive++
	t.backoff(*consecutive)
	return false
}

// backoff sleeps after consecutive failures of the same call, so a
// persistent error cannot spin a core; it returns early on shutdown.
func (t *Tunnel) backoff(consecutive int) {
	if consecutive < 3 {
		return
	}
	d := min(time.Duration(consecutive)*time.Millisecond, 100*time.Millisecond)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.stop:
	}
}
