package suite

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

func TestParseIperfTCP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    float64
		wantErr string
	}{
		{name: "1 stream (captured)", in: readTestdata(t, "iperf3-tcp.json"), want: 7.3973188126659855},
		{name: "4 streams (captured)", in: readTestdata(t, "iperf3-tcp4.json"), want: 16.652882861356195},
		{name: "refused (captured)", in: readTestdata(t, "iperf3-refused.json"), wantErr: "Connection refused"},
		{name: "not JSON", in: []byte("iperf3: error - unable to connect"), wantErr: "unreadable"},
		{name: "no receiver sum", in: []byte(`{"end":{"sum_sent":{"bits_per_second":1e9}}}`), wantErr: "sum_received"},
		{name: "zero rate", in: []byte(`{"end":{"sum_received":{"bits_per_second":0}}}`), wantErr: "rate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIperfTCP(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !near(got, tc.want) {
				t.Errorf("Gbit/s = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseIperfUDP(t *testing.T) {
	t.Run("captured 64-byte flood", func(t *testing.T) {
		r, err := parseIperfUDP(readTestdata(t, "iperf3-udp64.json"))
		if err != nil {
			t.Fatal(err)
		}
		// sum_sent.packets 441860; sum_received 441854 seen, 10953 lost;
		// 27577664 bytes received = 430901 datagrams of 64 bytes.
		if r.Sent != 441860 || r.Delivered != 430901 {
			t.Errorf("sent %v delivered %v, want 441860 430901", r.Sent, r.Delivered)
		}
		if want := 430901 / 2.000123; !near(r.PPS, want) {
			t.Errorf("pps = %v, want %v", r.PPS, want)
		}
		if want := 100 * float64(441860-430901) / 441860; !near(r.LossPct, want) {
			t.Errorf("loss = %v%%, want %v%%", r.LossPct, want)
		}
	})
	for _, tc := range []struct {
		name, in string
		wantPPS  float64
		wantErr  string
	}{
		{name: "old iperf3: only end.sum", in: `{"end":{"sum":{"seconds":2,"packets":1000,"lost_packets":100}}}`, wantPPS: 450},
		{name: "nothing delivered", in: `{"end":{"sum_sent":{"packets":10},"sum_received":{"seconds":1,"packets":10,"lost_packets":10}}}`, wantErr: "none of"},
		{name: "nothing sent", in: `{"end":{"sum_sent":{"packets":0},"sum_received":{"seconds":1}}}`, wantErr: "sent 0"},
		{name: "no interval", in: `{"end":{"sum_sent":{"packets":10},"sum_received":{"seconds":0,"packets":10}}}`, wantErr: "interval"},
		{name: "iperf3 error", in: `{"end":{},"error":"unable to connect to server"}`, wantErr: "unable to connect"},
		{name: "no sums", in: `{"end":{}}`, wantErr: "no end.sum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseIperfUDP([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !near(r.PPS, tc.wantPPS) {
				t.Errorf("pps = %v, want %v", r.PPS, tc.wantPPS)
			}
		})
	}
}

func TestParseSockperf(t *testing.T) {
	r, err := parseSockperf(readTestdata(t, "sockperf-rtt.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Observations != 17925 || r.P50 != 28.514 || r.P99 != 92.465 || r.Dropped != 0 {
		t.Errorf("got %+v, want 17925 observations, p50 28.514, p99 92.465, 0 dropped", r)
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr string
		parse   bool // the error must wrap errParse
	}{
		{name: "half round trip (no --full-rtt)", in: readTestdata(t, "sockperf-halfrtt.txt"), wantErr: "avg-rtt", parse: true},
		{name: "no server (captured)", in: readTestdata(t, "sockperf-noserver.txt"), wantErr: "no round trip"},
		{name: "empty", in: nil, wantErr: "no round trip"},
		{name: "no p99", in: []byte("avg-rtt=1\nTotal 5 observations\n---> percentile 50.000 = 3.0\n"), wantErr: "99th", parse: true},
		{name: "p99 below p50", in: []byte("avg-rtt=1\nTotal 5 observations\n---> percentile 99.000 = 2.0\n---> percentile 50.000 = 3.0\n"), wantErr: "p50=3", parse: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSockperf(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if tc.parse != errors.Is(err, errParse) {
				t.Errorf("errors.Is(err, errParse) = %v, want %v", !tc.parse, tc.parse)
			}
		})
	}
}

func TestParseSubnetEnv(t *testing.T) {
	got, err := parseSubnetEnv([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\n"))
	if err != nil || got != "10.244.5.1/24" {
		t.Errorf("got %q, %v; want 10.244.5.1/24", got, err)
	}
	if _, err := parseSubnetEnv([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=\n")); !errors.Is(err, errParse) {
		t.Errorf("empty FLANNEL_SUBNET: err = %v, want errParse", err)
	}
}

func TestVersionOf(t *testing.T) {
	for in, want := range map[string]string{
		"iperf 3.12 (cJSON 1.7.15)":           "3.12",
		"sockperf, version 3.7-no.git":        "3.7-no.git",
		"sockperf: == version #3.10-0.git ==": "3.10-0.git",
		"no version here":                     "no version here",
	} {
		if got := versionOf(in); got != want {
			t.Errorf("versionOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewStat(t *testing.T) {
	for _, tc := range []struct {
		in                []float64
		median, min, max_ float64
	}{
		{[]float64{5}, 5, 5, 5},
		{[]float64{3, 1, 2}, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{7, 7, 1}, 7, 1, 7},
	} {
		st := newStat(tc.in)
		if st.Median != tc.median || st.Min != tc.min || st.Max != tc.max_ {
			t.Errorf("newStat(%v) = %+v, want median %v min %v max %v", tc.in, st, tc.median, tc.min, tc.max_)
		}
		if len(st.Values) != len(tc.in) || st.Values[0] != tc.in[0] {
			t.Errorf("newStat(%v).Values = %v, want the input order", tc.in, st.Values)
		}
	}
}

func TestParsePaths(t *testing.T) {
	got, err := ParsePaths("overlay, underlay,overlay")
	if err != nil || len(got) != 2 || got[0] != Underlay || got[1] != Overlay {
		t.Errorf("got %v, %v; want [underlay overlay] in measuring order", got, err)
	}
	if got, err := ParsePaths("all"); err != nil || len(got) != len(AllPaths) {
		t.Errorf("all: got %v, %v", got, err)
	}
	got, err = ParsePaths("overlay-naive,all,overlay-b")
	if want := []PathID{Underlay, KernelVXLAN, Floor, Overlay, OverlayB, OverlayNaive}; err != nil || !slices.Equal(got, want) {
		t.Errorf("all plus overlay-b: got %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", ",", "kernel", "overlay,udp"} {
		if _, err := ParsePaths(bad); err == nil {
			t.Errorf("ParsePaths(%q) succeeded", bad)
		}
	}
}

func TestParseTests(t *testing.T) {
	got, err := ParseTests("rtt, tcp1,rtt")
	if err != nil || len(got) != 2 || got[0] != TestTCP1 || got[1] != TestRTT {
		t.Errorf("got %v, %v; want [tcp1 rtt] in running order", got, err)
	}
	if got, err := ParseTests("all"); err != nil || len(got) != len(AllTests) {
		t.Errorf("all: got %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "tcp", "udp64,ping"} {
		if _, err := ParseTests(bad); err == nil {
			t.Errorf("ParseTests(%q) succeeded", bad)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{OutDir: "x", OverlayBin: "bin/overlay"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Repetitions != 3 || c.Duration != 10*time.Second || len(c.Paths) != len(AllPaths) || len(c.Tests) != len(AllTests) {
		t.Errorf("defaults: %d reps, %v, %v, %v", c.Repetitions, c.Duration, c.Paths, c.Tests)
	}
	c, err = Config{OutDir: "x", Quick: true, Repetitions: 5, Duration: time.Minute, Paths: []PathID{Underlay}}.withDefaults()
	if err != nil || c.Repetitions != 1 || c.Duration != time.Second {
		t.Errorf("quick: %d reps, %v, %v", c.Repetitions, c.Duration, err)
	}
	place := Config{AppCPUs: []int{0, 1}, AppCPUsB: []int{1, 1}}
	if place.appCPU(Overlay, 1) != 1 || place.appCPU(OverlayB, 0) != 1 || place.appCPU(FloorB, 0) != 1 || place.appCPU(KernelVXLAN, 0) != 0 ||
		(Config{}).appCPU(Overlay, 0) != -1 || (Config{AppCPUs: []int{1, 0}}).appCPU(OverlayB, 0) != 1 {
		t.Errorf("appCPU: the B paths must take AppCPUsB when set, every path AppCPUs otherwise, -1 with neither")
	}
	c, err = Config{OutDir: "x", Paths: []PathID{Overlay, OverlayB}, OverlayBin: "bin/overlay", OverlayArgsB: []string{"--poller=epoll"}}.withDefaults()
	if err != nil || c.OverlayBinB != "bin/overlay" {
		t.Errorf("overlay-b with flags only: binary %q, %v; want the overlay binary", c.OverlayBinB, err)
	}
	for name, bad := range map[string]Config{
		"no out dir":        {Paths: []PathID{Underlay}},
		"agent without bin": {OutDir: "x", Paths: []PathID{Overlay}},
		"fractional":        {OutDir: "x", Paths: []PathID{Underlay}, Duration: 1500 * time.Millisecond},
		"too short":         {OutDir: "x", Paths: []PathID{Underlay}, Duration: time.Millisecond},
		"negative reps":     {OutDir: "x", Paths: []PathID{Underlay}, Repetitions: -1},
		"unknown path":      {OutDir: "x", Paths: []PathID{"udp"}},
		"empty paths":       {OutDir: "x", Paths: []PathID{}},
		"bad TUN driver":    {OutDir: "x", Paths: []PathID{Underlay}, TUNDriver: "fast"},
		"B without bin":     {OutDir: "x", Paths: []PathID{OverlayB}, OverlayBin: "bin/overlay"},
		"unknown test":      {OutDir: "x", Paths: []PathID{Underlay}, Tests: []string{"ping"}},
		"empty tests":       {OutDir: "x", Paths: []PathID{Underlay}, Tests: []string{}},
		"one app CPU":       {OutDir: "x", Paths: []PathID{Underlay}, AppCPUs: []int{0}},
		"app CPU too high":  {OutDir: "x", Paths: []PathID{Underlay}, AppCPUs: []int{0, runtime.NumCPU()}},
		"app CPU negative":  {OutDir: "x", Paths: []PathID{Underlay}, AppCPUs: []int{-1, 0}},
		"three B app CPUs":  {OutDir: "x", Paths: []PathID{Underlay}, AppCPUsB: []int{0, 0, 0}},
	} {
		if _, err := bad.withDefaults(); !errors.Is(err, errConfig) {
			t.Errorf("%s: err = %v, want errConfig", name, err)
		}
	}
}
