"""chinchax scaling: fits, plans and FLOP/memory accounting."""
