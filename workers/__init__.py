"""ddsweep workers: the science (data, models, selectors, regimes, training). No Ray, YAML or Parquet.

Importing this package never imports torch; modules that need it import it themselves.
"""

__version__ = "0.1.0"
