"""Palisade eBPF engine: TracingPolicy model, compile to CO-RE objects, load with libbpf, probe, inventory."""
