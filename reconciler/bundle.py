"""Moved to `wire.bundle` (the wire contract the agent imports); this alias keeps old imports working
while the modules that still use them move over. Import `wire.bundle` in new code."""
import sys

from wire import bundle as _bundle
from wire.bundle import *  # noqa: F403

sys.modules[__name__] = _bundle
