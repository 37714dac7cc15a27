package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Replies cross the network when a node forwards a proposal to the leader:
// the leader's FSM answers, and the proposer must see the same typed value
// its own FSM would have given (they apply the same entry). EncodeReply and
// DecodeReply carry every type Apply returns.

const replyVersion = 1

type wireReply struct {
	V      int        `json:"v"`
	Kind   string     `json:"kind"`
	Branch uint32     `json:"branch,omitempty"`
	Lease  *Lease     `json:"lease,omitempty"`
	Frozen *Frozen    `json:"frozen,omitempty"`
	LSN    uint64     `json:"lsn,omitempty"`
	Fenced *FencedOut `json:"fenced,omitempty"`
	Err    string     `json:"err,omitempty"`
}

// EncodeReply encodes an Apply answer.
func EncodeReply(resp any) []byte {
	w := wireReply{V: replyVersion}
	var held *LeaseHeldError
	var halt *HaltError
	switch r := resp.(type) {
	case nil:
		w.Kind = "nil"
	case uint32:
		w.Kind, w.Branch = "branch", r
	case Lease:
		w.Kind, w.Lease = "lease", &r
	case Frozen:
		w.Kind, w.Frozen = "frozen", &r
	case FencedOut:
		w.Kind, w.Fenced = "fenced", &r
	case error:
		switch {
		case errors.As(r, &halt):
			w.Kind, w.LSN, w.Err = "halt", halt.LSN, halt.Err.Error()
		case errors.As(r, &held):
			w.Kind, w.Branch, w.Lease = "held", held.Branch, &held.Lease
		case errors.Is(r, ErrLeaseLost):
			w.Kind, w.Err = "lost", r.Error()
		default:
			w.Kind, w.Err = "error", r.Error()
		}
	default:
		w.Kind, w.Err = "error", fmt.Sprintf("reply of unknown type %T", resp)
	}
	b, _ := json.Marshal(w)
	return b
}

// DecodeReply decodes what EncodeReply wrote. A reply it cannot read is an
// error, never a guess.
func DecodeReply(b []byte) (any, error) {
	var w wireReply
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode reply: %w", err)
	}
	if w.V != replyVersion {
		return nil, fmt.Errorf("decode reply: version %d is unknown to this binary", w.V)
	}
	switch w.Kind {
	case "nil":
		return nil, nil
	case "branch":
		return w.Branch, nil
	case "lease":
		if w.Lease != nil {
			return *w.Lease, nil
		}
	case "frozen":
		if w.Frozen != nil {
			return *w.Frozen, nil
		}
	case "fenced":
		if w.Fenced != nil {
			return *w.Fenced, nil
		}
	case "halt":
		return &HaltError{LSN: w.LSN, Err: errors.New(w.Err)}, nil
	case "held":
		if w.Lease != nil {
			return &LeaseHeldError{Branch: w.Branch, Lease: *w.Lease}, nil
		}
	case "lost":
		return lostError(w.Err), nil
	case "error":
		return errors.New(w.Err), nil
	}
	return nil, fmt.Errorf("decode reply: kind %q without its value", w.Kind)
}

// lostError keeps the message of a lease-lost refusal and its identity.
type lostError string

func (e lostError) Error() string { return string(e) }
func (e lostError) Unwrap() error { return ErrLeaseLost }
