"""Parts by name, each with the dataclass of its options: how a config picks and sets up a part.

A part (a core, a readout, ...) is a class registered under a name together with its options
dataclass, in one file::

    @dataclass
    class MyCoreOptions(CoreOptions):
        core_width: int = option(8, "channels of each layer")

    @CORES.register("mycore", options=MyCoreOptions)
    class MyCore(Core): ...

The options dataclass holds the part's flags (its field names, e.g. `--core_width`), their
defaults and their range checks (`check()`), once. A registry that knows its `package` imports
every module of that package on first use (`import_submodules`), so a new file in the package is
all a new part needs. The registries of the model's parts are defined here, below the config,
so that the config can name them without importing the models.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from neurotwin.errors import ConfigError

T = TypeVar("T")


class Options:
    """Base of every options dataclass: `check()` holds its range checks (raise ConfigError
    naming the flag); it runs when an instance is made, and again before a run starts."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError for values the field types cannot rule out (default: none)."""


@dataclasses.dataclass
class PartOptions(Options):
    """Base of a registered part's options. Registration sets `name` (the part's name, e.g.
    "conv3d") and `kind` (e.g. "core") on the options class. `renamed` maps names an option
    had in earlier releases to its name now; configs (YAML, saved runs) may use either."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}


class Registry:
    """A table of parts of one kind: name -> (class, options dataclass).

    `register(name, options=...)` is a class decorator. Without `options`, the part has none (an
    empty options class is made for it). `package` names the package (or module) whose import
    registers every part of this kind; it is imported on the first lookup.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._parts: dict[str, Any] = {}
        self._options: dict[str, type[PartOptions]] = {}
        self._loaded = package is None

    def register(self, name: str, options: type[PartOptions] | None = None) -> Callable[[T], T]:
        """Register the decorated class as part `name`, with `options` as its options class."""

        def add(cls: T) -> T:
            if name in self._parts and self._parts[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            opts = options
            if opts is None:
                base = (PartOptions,)
                opts = dataclasses.make_dataclass(f"{cls.__name__}Options", [], bases=base)
            if not (isinstance(opts, type) and issubclass(opts, PartOptions)):
                raise TypeError(f"{self.kind} {name!r}: options must be a PartOptions dataclass")
            if opts.__dict__.get("name") not in (None, name):
                raise ValueError(
                    f"{self.kind} {name!r}: {opts.__name__} already holds the options of "
                    f"{opts.kind} {opts.__dict__['name']!r}; give each part its own class"
                )
            opts.name, opts.kind = name, self.kind
            self._parts[name] = cls
            self._options[name] = opts
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return add

    def _load(self) -> None:
        if not self._loaded and self.package is not None:
            importlib.import_module(self.package)
            self._loaded = True

    def get(self, name: str) -> Any:
        """The class registered as `name` (ConfigError listing the known names if none)."""
        self._load()
        try:
            return self._parts[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {self.names()}") from None

    def options_class(self, name: str) -> type[PartOptions]:
        """The options dataclass of part `name`."""
        self.get(name)
        return self._options[name]

    def options(self, name: str, **values: Any) -> PartOptions:
        """The options of part `name` with `values` set (checked), the defaults elsewhere."""
        return self.options_class(name)(**values)

    def owners(self, option_name: str) -> list[str]:
        """The parts whose options have a field `option_name`, sorted."""
        self._load()
        return [
            n
            for n in sorted(self._options)
            if any(f.name == option_name for f in dataclasses.fields(self._options[n]))
        ]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._parts)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a package (call from its __init__: `import_submodules(__name__,
    __path__)`), so that each registers its parts; modules named with a leading _ are skipped."""
    for module in pkgutil.iter_modules(path):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


# The model's parts (see neurotwin.models): where each kind lives.
CORES = Registry("core", package="neurotwin.models.cores")
READOUTS = Registry("readout", package="neurotwin.models.readouts")
SHIFTERS = Registry("shifter", package="neurotwin.models.shifter")
ACTIVATIONS = Registry("output activation", package="neurotwin.models.activations")
MODULATORS = Registry("modulator", package="neurotwin.models.modulators")
SPIKE_MODELS = Registry("spike model", package="neurotwin.models.spikes")  # glm, glm_vae, vae
