"""Pure statistics for leak detection: trend tests, bounded series and per-window verdicts."""

from soakd.analysis.series import BoundedSeries, downsample
from soakd.analysis.trend import MannKendall, TrendFit, mann_kendall, robust_scale, theil_sen
from soakd.analysis.verdicts import Pattern, SeriesVerdict, VerdictParams, classify, warmup_end

__all__ = [
    "BoundedSeries",
    "MannKendall",
    "Pattern",
    "SeriesVerdict",
    "TrendFit",
    "VerdictParams",
    "classify",
    "downsample",
    "mann_kendall",
    "robust_scale",
    "theil_sen",
    "warmup_end",
]
