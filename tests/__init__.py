"""The suite: `make test` (everything) and `make test-fast` (no training, no container)."""
