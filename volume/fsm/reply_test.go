package fsm

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func TestReplyRoundTrip(t *testing.T) {
	for _, in := range []any{
		nil,
		uint32(7),
		Lease{Node: "n2", Token: 12, Expires: 30e9},
		Frozen{LSN: 9, Header: []byte("hdr"), Tree: []byte("{}")},
		FencedOut{Branches: []uint32{1, 4}, Reason: "lost"},
	} {
		out, err := DecodeReply(EncodeReply(in))
		if err != nil || !reflect.DeepEqual(out, in) {
			t.Errorf("%#v -> %#v, %v", in, out, err)
		}
	}
	held := &LeaseHeldError{Branch: 1, Lease: Lease{Node: "n1", Token: 3, Expires: 13e9}}
	for _, in := range []error{
		held,
		&HaltError{LSN: 5, Err: errors.New("damaged")},
		fmt.Errorf("renew: %w", ErrLeaseLost),
		errors.New("branch \"x\" already exists"),
	} {
		out, err := DecodeReply(EncodeReply(in))
		e, ok := out.(error)
		if err != nil || !ok || e.Error() != in.Error() {
			t.Errorf("%v -> %#v, %v", in, out, err)
			continue
		}
		var h *LeaseHeldError
		var halt *HaltError
		if errors.Is(in, ErrLeaseLost) != errors.Is(e, ErrLeaseLost) ||
			errors.As(in, &h) != errors.As(e, &h) || errors.As(in, &halt) != errors.As(e, &halt) {
			t.Errorf("%v: type not kept: %#v", in, out)
		}
	}
	for _, bad := range []string{``, `{}`, `{"v":2,"kind":"nil"}`, `{"v":1,"kind":"lease"}`, `{"v":1,"kind":"what"}`} {
		if out, err := DecodeReply([]byte(bad)); err == nil {
			t.Errorf("%q decoded to %#v", bad, out)
		}
	}
}
