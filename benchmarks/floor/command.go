package floor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"syscall"

	"overlay/encap"
)

// Arg is the subcommand of overlay-bench (and of the suite's test binary)
// that runs the relay: `overlay-bench floor-relay --tun ... --local ...
// --peer ...`.
const Arg = "floor-relay"

// ReadyLine is what Command prints on stdout once the TUN and the socket
// are open.
const ReadyLine = "floor relay ready"

// Command parses args (the flags after Arg) and runs the relay until
// SIGINT or SIGTERM. It returns the exit status: 0 after a signal, 1 when
// the relay fails, 2 on bad flags.
func Command(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(Arg, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg            = Config{CPUOut: -1, CPUIn: -1}
		local, peer    string
		mac, peerMAC   string
		vni            uint
		cpuOut, cpuIn  int
		batch, sockBuf int
		srcPorts       int
		noGRO, noCoal  bool
		lock           bool
	)
	fs.StringVar(&cfg.TUN, "tun", "", "TUN device to create")
	fs.IntVar(&cfg.MTU, "mtu", 1450, "MTU of the TUN")
	fs.StringVar(&local, "local", "", "UDP address to receive VXLAN on (ip:port)")
	fs.StringVar(&peer, "peer", "", "the peer's UDP address (ip:port)")
	fs.UintVar(&vni, "vni", 1, "VXLAN network identifier of the frames sent")
	fs.StringVar(&mac, "mac", "02:00:00:00:00:01", "inner Ethernet source MAC of the frames sent")
	fs.StringVar(&peerMAC, "peer-mac", "02:00:00:00:00:02", "inner Ethernet destination MAC: the peer's VTEP MAC")
	fs.IntVar(&batch, "batch", 128, "most packets one TUN batch drains")
	fs.IntVar(&sockBuf, "socket-buffer", 0, "UDP send and receive buffer, bytes (0: the tunnel's default)")
	fs.IntVar(&srcPorts, "source-ports", 1, "sending sockets the inner flow hash chooses among (the agent has 8)")
	fs.BoolVar(&noGRO, "no-gro", false, "turn UDP GRO off on the receiving socket")
	fs.BoolVar(&noCoal, "no-coalesce", false, "write every received packet to the TUN alone")
	fs.BoolVar(&lock, "lock-threads", false, "lock each direction's goroutine to an OS thread")
	fs.BoolVar(&cfg.Epoll, "epoll", false, "wait for the TUN and the sockets in an epoll instance per direction on its locked OS thread instead of the runtime poller (implies --lock-threads)")
	fs.BoolVar(&cfg.SendMsg, "sendmsg", false, "send super-packets with one sendmsg each from a socket of the relay's own")
	fs.BoolVar(&cfg.ZeroCopy, "zerocopy", false, "send super-packets with MSG_ZEROCOPY (implies --sendmsg)")
	fs.IntVar(&cfg.TxQueueLen, "txqueuelen", 0, "TUN transmit queue length, packets (0: the kernel's, 500)")
	fs.DurationVar(&cfg.Pace, "pace", 0, "sleep this long after every TUN batch that filled --batch (0: never)")
	fs.BoolVar(&cfg.URing, "uring", false, "read the TUN through io_uring: one multishot read, a provided-buffer ring")
	fs.BoolVar(&cfg.URingSingle, "uring-single", false, "read the TUN through io_uring: one single-shot read per slot (implies --uring)")
	fs.IntVar(&cpuOut, "cpu-out", -1, "pin the TUN-to-UDP thread to this CPU (-1: no)")
	fs.IntVar(&cpuIn, "cpu-in", -1, "pin the UDP-to-TUN thread to this CPU (-1: no)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	bad := func(err error) int {
		fmt.Fprintf(stderr, "%s: %v\n", Arg, err)
		return 2
	}
	var err error
	if cfg.Local, err = netip.ParseAddrPort(local); err != nil {
		return bad(fmt.Errorf("--local: %w", err))
	}
	if cfg.Peer, err = netip.ParseAddrPort(peer); err != nil {
		return bad(fmt.Errorf("--peer: %w", err))
	}
	if cfg.MAC, err = encap.ParseMAC(mac); err != nil {
		return bad(fmt.Errorf("--mac: %w", err))
	}
	if cfg.PeerMAC, err = encap.ParseMAC(peerMAC); err != nil {
		return bad(fmt.Errorf("--peer-mac: %w", err))
	}
	if cfg.VNI, err = encap.NewVNI(uint32(vni)); err != nil {
		return bad(fmt.Errorf("--vni: %w", err))
	}
	cfg.Batch, cfg.SocketBuffer, cfg.NoGRO, cfg.NoCoalesce = batch, sockBuf, noGRO, noCoal
	cfg.LockThreads, cfg.CPUOut, cfg.CPUIn = lock, cpuOut, cpuIn
	cfg.SourcePorts = srcPorts
	if _, err := cfg.withDefaults(); err != nil {
		return bad(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = Run(ctx, cfg, func() { fmt.Fprintln(stdout, ReadyLine) })
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Arg, err)
		return 1
	}
	return 0
}
