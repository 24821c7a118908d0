package etcdembed

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestStartServeClose(t *testing.T) {
	ctx := context.Background()
	if _, err := Start(ctx, Options{Dir: t.TempDir()}); err == nil {
		t.Error("Start without a client URL succeeded")
	}
	if _, err := Start(ctx, Options{Dir: t.TempDir(), ClientURL: "::bad"}); err == nil {
		t.Error("Start with a bad client URL succeeded")
	}
	o := Options{
		Dir:           t.TempDir(),
		ClientURL:     fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		PeerURL:       fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		UnsafeNoFsync: true,
	}
	s, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Put(cctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// A second server on the same ports fails cleanly.
	o2 := o
	o2.Dir = t.TempDir()
	if s2, err := Start(ctx, o2); err == nil {
		s2.Close()
		t.Error("a second server bound the same ports")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close() // idempotent
	// Restart on the same directory keeps the data.
	s, err = Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := cli.Get(cctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v, %v", resp, err)
	}
}
