package lease

import (
	"bytes"
	"testing"
)

func TestVtepMAC(t *testing.T) {
	a := VtepMAC("0123456789abcdef0123456789abcdef", ip("172.30.250.11"))
	if len(a) != 6 {
		t.Fatalf("len %d", len(a))
	}
	if a[0]&0x01 != 0 || a[0]&0x02 == 0 {
		t.Errorf("%v is not a locally administered unicast MAC", a)
	}
	if b := VtepMAC("0123456789abcdef0123456789abcdef", ip("172.30.250.11")); !bytes.Equal(a, b) {
		t.Errorf("not deterministic: %v vs %v", a, b)
	}
	seen := map[string]bool{a.String(): true}
	for _, other := range [][]any{
		{"0123456789abcdef0123456789abcdef", "172.30.250.12"},
		{"fedcba9876543210fedcba9876543210", "172.30.250.11"},
		{"", "172.30.250.11"},
	} {
		m := VtepMAC(other[0].(string), ip(other[1].(string)))
		if seen[m.String()] {
			t.Errorf("%v: MAC %v collides", other, m)
		}
		seen[m.String()] = true
		if m[0]&0x03 != 0x02 {
			t.Errorf("%v is not a locally administered unicast MAC", m)
		}
	}
	_ = MachineID() // must not panic whether or not the file exists
}
