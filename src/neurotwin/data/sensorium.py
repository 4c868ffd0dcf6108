"""Deprecated path of the native layout's reader: use `neurotwin.data.native` (`NativeSession`).

Kept while code on other branches imports it; it defines nothing of its own."""

from neurotwin.data.native.reader import *  # noqa: F403
from neurotwin.data.native.reader import NativeSession as SensoriumSession  # noqa: F401
from neurotwin.data.native.statistics import compute_statistics  # noqa: F401
