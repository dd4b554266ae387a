"""Image registry, golden store and healing actions (DESIGN.md §5: healing is atomic and reversible)."""
