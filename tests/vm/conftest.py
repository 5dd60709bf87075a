"""VM fixtures; see vm_support."""
from vm_support import require_vm

__all__ = ["require_vm"]
