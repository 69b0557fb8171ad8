package wire

import (
	"context"
	"errors"
	"sync"
)

// Requests from the helper to the host (docs/protocol.md §4b): the helper's own ids, a
// pending call per id, and the host's response routed back by Serve. The first user is the
// node's state store, which tsnet reads and writes through the host.

// ErrChannelEnded is what a call gets when the channel ends before the host answers.
var ErrChannelEnded = errors.New("the control channel ended before the host answered")

// calls is the dispatcher's table of requests in flight to the host.
type calls struct {
	mu      sync.Mutex
	next    uint32
	pending map[uint32]chan *Message
	ended   bool
}

// Call sends a request to the host and waits for its answer, ctx, or the end of the channel.
// An error answer is returned as an *Error (its code and message as the host sent them).
// A call given up by ctx leaves its id behind: a late answer to it is dropped by Serve.
func (d *Dispatcher) Call(ctx context.Context, method string, params map[string]any) (map[string]any, error) {
	c := &d.calls
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return nil, ErrChannelEnded
	}
	if c.pending == nil {
		c.pending = make(map[uint32]chan *Message)
	}
	c.next++ // wraps at 2³²: an id is reused only after four billion calls
	id := c.next
	answer := make(chan *Message, 1)
	c.pending[id] = answer
	c.mu.Unlock()

	if err := d.w.Send(NewRequest(id, method, params)); err != nil {
		c.forget(id)
		return nil, err
	}
	select {
	case m, ok := <-answer:
		if !ok {
			return nil, ErrChannelEnded
		}
		if m.Err != nil {
			return nil, m.Err
		}
		return m.Result, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	}
}

// deliver routes a response to its call; false if no call waits for that id.
func (c *calls) deliver(m *Message) bool {
	c.mu.Lock()
	answer, ok := c.pending[m.ID]
	delete(c.pending, m.ID)
	c.mu.Unlock()
	if ok {
		answer <- m // buffered: never blocks
	}
	return ok
}

func (c *calls) forget(id uint32) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// end fails every call in flight and every later one with ErrChannelEnded.
func (c *calls) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	for id, answer := range c.pending {
		close(answer)
		delete(c.pending, id)
	}
}
