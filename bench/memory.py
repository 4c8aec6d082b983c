"""Peak memory of one stretch of work in this process, for the benches' memory subprocesses:
reset the RSS high-water mark (Linux), do the work, read the new mark."""
from __future__ import annotations

import resource


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the high-water mark; returns the RSS (KiB) it starts from, 0 where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except (OSError, KeyError):
        return 0


def peak_kb() -> int:
    """Peak RSS (KiB) since `reset_peak()` (getrusage keeps maxima from before the reset, so it
    is only the fallback)."""
    try:
        return _status_kb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
