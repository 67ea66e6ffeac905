"""ddsweep orchestrator: sweep spec, grid, Ray/Tune driver, results store, reports. Never imports torch."""

from workers import __version__

__all__ = ["__version__"]
