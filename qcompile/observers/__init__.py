"""Streaming range observers for calibration; memory stays bounded whatever the data size."""
from qcompile.observers.base import Observer
from qcompile.observers.histogram import StreamingHistogram
from qcompile.observers.knobs import OBSERVER_METHODS
from qcompile.observers.methods import (
    EntropyObserver,
    HistogramObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from qcompile.observers.minmax import (
    MinMaxObserver,
    MovingAverageObserver,
    PerChannelMinMaxObserver,
)

__all__ = [
    "OBSERVER_METHODS",
    "EntropyObserver",
    "HistogramObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "PerChannelMinMaxObserver",
    "PercentileObserver",
    "StreamingHistogram",
    "make_observer",
]
