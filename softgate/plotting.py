"""Gate figures now live in ``softgate.plots``; this name stays importable for ``softgate gates plot``."""

from softgate.plots import DEFAULT_TAUS, gate_variants, plot_gates  # noqa: F401
