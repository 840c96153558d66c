"""The analysis behind the notebooks: read a store, a fit result or a bench result; tables and figures.

One module per notebook (`sensitivity`, `policies`, `bench`), so that what a notebook shows is
code that is linted and unit-tested, and a notebook is a few calls. Figures are built with
`matplotlib.figure.Figure` (no pyplot state, no backend chosen here) and returned, never shown.
"""

__all__ = ["bench", "policies", "sensitivity", "style"]
