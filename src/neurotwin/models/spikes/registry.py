"""The spike model registry: a config's `model.name` (glm | glm_vae | vae) picks the class."""

from __future__ import annotations

from neurotwin.models.registry import Registry

SPIKE_MODELS = Registry("spike model")
