"""Cores (shared by all sessions). Importing this package registers every core."""

from neurotwin.models.cores import conv2d, conv3d, pretrained, vivit  # noqa: F401  (registration)
from neurotwin.models.cores.base import Core

__all__ = ["Core"]
