// Package nolisten keeps the helper from ever opening a kernel listener (Forbid): the only way
// into a node is the tailnet (docs/design.md §8), whatever a dependency tries.
package nolisten
