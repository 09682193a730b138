"""microgrid: peer-to-peer energy markets for neighbourhood microgrids.

The repository's top-level folders install beneath this package:
`microgrid.shared`, `microgrid.edge`, `microgrid.coordinator`,
`microgrid.flash`, `microgrid.hardware`.
"""

__version__ = "0.1.0"
