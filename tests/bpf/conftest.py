"""Engine fixtures (pin root, engine, workload cgroup) for the kernel tests in this folder; see engine_support."""
from engine_support import engine, pin_root, workload

__all__ = ["engine", "pin_root", "workload"]
