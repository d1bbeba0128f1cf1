"""chinchax launchers: sweeps as processes (local or TPU VMs)."""
