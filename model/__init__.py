"""chinchax model: transformer modules, parameter counts, sharding rules."""
