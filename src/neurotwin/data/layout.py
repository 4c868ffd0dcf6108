"""Deprecated path of the native layout's names and writer: use `neurotwin.data.native`.

Kept while data/synthetic.py and data/allen/trials.py (being changed on other branches) import
it; it defines nothing of its own."""

from neurotwin.data.native.layout import *  # noqa: F403
from neurotwin.data.native.statistics import trial_statistics  # noqa: F401
from neurotwin.data.native.writer import SessionArrays, write_session  # noqa: F401
