"""chinchax training: data, optimizer, train step, checkpoints, logging. Run: python -m train."""
