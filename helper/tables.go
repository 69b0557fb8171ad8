package main

import (
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/tsproc/tsproc/helper/internal/wire"
)

// closeByID is the body of a close_* method on a table of open things by id (listeners,
// forwards): the id is the parameter named what, the entry leaves the table under mu before it is
// closed (so nothing else finds it half-closed), and an id not in it is not_found. The table is
// passed by pointer because it may be made lazily, under mu.
func closeByID[V interface{ close() }](p *wire.ParamReader, what string, mu *sync.Mutex, table *map[uint64]V) (*wire.Reply, error) {
	id := p.Uint(what, 0, math.MaxUint64)
	if p.Err != nil {
		return nil, p.Err
	}
	mu.Lock()
	v, ok := (*table)[id]
	delete(*table, id)
	mu.Unlock()
	if !ok {
		return nil, wire.NewError(wire.CodeNotFound, "no %s %d", what, id)
	}
	v.close()
	return wire.OKReply(map[string]any{}), nil
}

// takeAll empties table and returns what it held, for closing outside the lock the caller
// holds.
func takeAll[K comparable, V any](table map[K]V) []V {
	vs := slices.Collect(maps.Values(table))
	clear(table)
	return vs
}
