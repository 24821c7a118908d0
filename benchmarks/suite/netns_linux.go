package suite

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on a thread switched into the named network namespace,
// while the suite itself stays in the host's. Sockets fn creates belong to
// ns for their whole life, whichever thread uses them later.
//
// Why a fresh goroutine: setns(2) switches only the calling thread, so fn
// runs on a goroutine locked to its thread, switched into ns before fn and
// back after it. If switching back fails, the goroutine exits still
// locked, and the Go runtime then retires the thread instead of reusing it
// in the wrong namespace.
func inNetns(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := inNetnsLocked(ns, fn)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// inNetnsLocked does inNetns's work on the locked thread. restored is
// false when the thread may be left in ns.
func inNetnsLocked(ns string, fn func() error) (restored bool, err error) {
	orig, err := netns.Get()
	if err != nil {
		return true, fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return true, fmt.Errorf("network namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return true, fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	err = fn()
	if rerr := netns.Set(orig); rerr != nil {
		return false, fmt.Errorf("leave network namespace %s: %w", ns, rerr)
	}
	return true, err
}

// dialInNetns connects to addr from inside network namespace ns.
func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}

// httpGetInNetns fetches url from inside namespace ns and returns the
// status code and up to 64 KiB of body.
func httpGetInNetns(ctx context.Context, ns, url string) (int, []byte, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(ctx, ns, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, err
}
