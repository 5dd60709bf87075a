"""The console: read-only HTML pages over the fleet, the units, rollouts, the ledger and events.
Pure rendering from the stages before it; serve mounts it on its listener."""
