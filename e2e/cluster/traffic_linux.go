package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"time"
)

// Ping runs `ping` inside the pod namespace and parses its output. Lost
// replies and local errors (such as "message too long") are in the result,
// not in the error; the error is for a ping that could not run or whose
// output has no summary.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr, opts PingOptions) (PingResult, error) {
	if !dst.Is4() {
		return PingResult{}, fmt.Errorf("ping %v: not IPv4", dst)
	}
	if opts.Count == 0 {
		opts.Count = 3
	}
	if opts.Interval == 0 {
		opts.Interval = 200 * time.Millisecond
	}
	if opts.Wait == 0 {
		opts.Wait = 2 * time.Second
	}
	args := []string{"-n",
		"-c", strconv.Itoa(opts.Count),
		"-i", strconv.FormatFloat(opts.Interval.Seconds(), 'f', 3, 64),
		"-W", strconv.FormatFloat(opts.Wait.Seconds(), 'f', 3, 64),
	}
	if opts.Size > 0 {
		args = append(args, "-s", strconv.Itoa(opts.Size))
	}
	if opts.DontFragment {
		args = append(args, "-M", "do")
	}
	if opts.TTL > 0 {
		args = append(args, "-t", strconv.Itoa(opts.TTL))
	}
	args = append(args, dst.String())
	out, err := p.NS.Command(ctx, "ping", args...).CombinedOutput()
	res, perr := ParsePing(string(out))
	if perr != nil {
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return res, fmt.Errorf("%s: ping %v: %w", p.Name, dst, err)
		}
		return res, fmt.Errorf("%s: ping %v: %w", p.Name, dst, perr)
	}
	return res, nil
}

// TransferOptions tune [Transfer].
type TransferOptions struct {
	// WriteSize is the size of each write on the sending socket; 0 means
	// 128 KiB (large writes, so the sender's stack builds large segments).
	WriteSize int
	// Port is the receiver's TCP port; 0 picks a free one.
	Port int
	// Duration, when set, ends the transfer after that long even if fewer
	// than n bytes were sent (a throughput check rather than a fixed size).
	Duration time.Duration
}

// Transfer sends n bytes (or, with opts.Duration, as many as fit in that
// time, at most n) of pseudo-random data over TCP from pod src to pod
// dst and compares the SHA-256 computed by both ends. The listener is
// created in dst's namespace and the connection in src's, so the bytes
// cross the overlay; both sockets live in this process. The transfer ends
// when ctx does.
func Transfer(ctx context.Context, src, dst *Pod, n int64, opts TransferOptions) (TransferResult, error) {
	var res TransferResult
	if opts.WriteSize <= 0 {
		opts.WriteSize = 128 << 10
	}
	ln, err := dst.NS.Listen("tcp4", netip.AddrPortFrom(dst.Addr, uint16(opts.Port)).String())
	if err != nil {
		return res, fmt.Errorf("listen in %s: %w", dst.Name, err)
	}
	defer ln.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Minute)
	}

	type received struct {
		n   int64
		sum [32]byte
		err error
	}
	recvc := make(chan received, 1)
	go func() {
		var r received
		defer func() { recvc <- r }()
		_ = ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			r.err = fmt.Errorf("accept in %s: %w", dst.Name, err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		h := sha256.New()
		r.n, r.err = io.Copy(h, c)
		copy(r.sum[:], h.Sum(nil))
	}()

	start := time.Now()
	var stopAt time.Time
	if opts.Duration > 0 {
		stopAt = start.Add(opts.Duration)
	}
	sent, sendErr := send(ctx, src, ln.Addr().String(), n, opts.WriteSize, deadline, stopAt, &res.SentSHA256)
	if sendErr != nil {
		// Unblock the receiver if the connection never happened.
		ln.Close()
	}
	var r received
	select {
	case r = <-recvc:
	case <-ctx.Done():
		ln.Close()
		r = <-recvc
	}
	res.Duration = time.Since(start)
	res.Bytes = r.n
	res.ReceivedSHA256 = r.sum
	switch {
	case sendErr != nil:
		return res, sendErr
	case r.err != nil:
		return res, r.err
	case r.n != sent || (sent != n && opts.Duration == 0):
		return res, fmt.Errorf("transfer %s -> %s: sent %d bytes, received %d, want %d", src, dst, sent, r.n, n)
	case res.SentSHA256 != res.ReceivedSHA256:
		return res, fmt.Errorf("transfer %s -> %s: SHA-256 mismatch: sent %x, received %x", src, dst, res.SentSHA256, res.ReceivedSHA256)
	}
	return res, nil
}

// send dials from the pod and writes n pseudo-random bytes, then closes
// its write side so the receiver sees EOF.
func send(ctx context.Context, src *Pod, addr string, n int64, writeSize int, deadline, stopAt time.Time, sum *[32]byte) (int64, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := src.NS.DialContext(dctx, "tcp4", addr)
	if err != nil {
		return 0, fmt.Errorf("dial %s from %s: %w", addr, src.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()

	rng := rand.NewChaCha8([32]byte{'o', 'v', 'e', 'r', 'l', 'a', 'y'})
	h := sha256.New()
	buf := make([]byte, writeSize)
	var sent int64
	for sent < n && (stopAt.IsZero() || time.Now().Before(stopAt)) {
		chunk := buf[:min(int64(len(buf)), n-sent)]
		fill(rng, chunk)
		h.Write(chunk)
		w, err := c.Write(chunk)
		sent += int64(w)
		if err != nil {
			return sent, fmt.Errorf("send to %s after %d bytes: %w", addr, sent, err)
		}
	}
	copy(sum[:], h.Sum(nil))
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return sent, fmt.Errorf("close write to %s: %w", addr, err)
	}
	return sent, nil
}

func fill(rng *rand.ChaCha8, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, rng.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(rng.Uint64())
	}
}

// httpGet fetches a URL with a connection made from inside ns.
func httpGet(ctx context.Context, ns NS, url string) ([]byte, int, error) {
	tr := &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := io.Copy(&b, io.LimitReader(resp.Body, 16<<20)); err != nil {
		return nil, resp.StatusCode, err
	}
	return b.Bytes(), resp.StatusCode, nil
}
