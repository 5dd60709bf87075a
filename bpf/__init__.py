"""Palisade eBPF engine: TracingPolicy model, compile to bcc programs, load, probe, inventory."""
