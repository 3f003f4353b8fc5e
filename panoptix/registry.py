"""Registries of named components, and the one `validate` / `build` pair that turns a config section
into a part.

A config section names its component (``{name: fpn, channels: 128}``); its other keys are the
component's constructor keywords, so defaults live in one place, the constructor. Keys are checked
against the constructor (unknown keys are refused, listing the valid ones) and values against its
type annotations with pydantic (``"1e-3"`` becomes the float 0.001; a wrong type is a one-line
`ConfigError` naming the key and the expected type). pydantic was chosen over OmegaConf structured
configs because our defaults and types live on plain constructors and functions, not on dataclass
schemas, and pydantic validates any annotation (``Sequence[int]``, ``Literal[...]``, ``Optional``).

Registered classes receive the checked values in ``from_config(cfg, **context)``; context carries
what a config cannot know (input channels, class counts, the dataset's categories). The
`Configurable` mixin gives the usual body: ``cls(**cfg, **context values named in derived)``.
Registered functions (fusion methods) are built into ``functools.partial(fn, **cfg)``; their
configurable keys are the parameters that have defaults.

A system declares its sub-components in ``components``: config key -> (registry, or a fixed
class, and the default section). `validate` walks them recursively, so a whole model config is
checked, and filled with every default, before anything is built. A default section of None makes
the part optional: absent (or ``null``) in the config, it is None.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from panoptix.errors import PanoptixError


class ConfigError(PanoptixError, ValueError):
    """An unknown key or component, a value of the wrong type, a bad override or an unreadable file."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean max_iter?)`` for the closest of ``options`` to a misspelt ``word``; "" when
    none is close (difflib's ratio of at least 0.6)."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class Registry:
    """Named components of one kind (``register`` is a decorator for classes and functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str, where: str = "") -> Any:
        import_builtin_components()
        if name not in self._items:
            elsewhere = [r.kind for r in INTERFACES if r is not self and name in r._items]
            what = (f"{name!r} is in the {elsewhere[0]} registry, not the {self.kind} registry" if elsewhere
                    else f"unknown {self.kind} {name!r}{did_you_mean(str(name), self._items)}")
            raise ConfigError(f"{where + '.name' if where else 'name'}: {what}; registered {self.kind}s: "
                              f"{', '.join(sorted(self._items))} (register your own and load it with --import)")
        return self._items[name]

    def names(self) -> list[str]:
        import_builtin_components()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self.names()


# One registry per interface: a slot's registry holds only components that fit the slot's call, so a
# config that wires a component into the wrong slot is refused by name before anything is built.
SYSTEMS = Registry("system")
BACKBONES = Registry("backbone")
NECKS = Registry("neck")
ROI_HEADS = Registry("RoI head")  # RPN + RoI heads on FPN levels -> Instances (two-stage instance_head)
DENSE_DETECTORS = Registry("dense detector")  # per-location boxes on FPN levels (CIAE's detector)
BOX_CLASSIFIERS = Registry("box classifier")  # re-classifies given boxes (CIAE's classifier)
SEMANTIC_HEADS = Registry("semantic head")  # FPN levels -> per-pixel logits
UPSNET_HEADS = Registry("UPSNet panoptic head")  # semantic + instance logits -> panoptic logits
RANKING_HEADS = Registry("ranking head")  # scattered instance masks -> occlusion scores
EMBEDDING_HEADS = Registry("embedding head")
CONTEXT_HEADS = Registry("context head")  # one feature map -> a context feature and its logits (DANet)
DECODE_HEADS = Registry("decode head")  # one feature map -> the scene parser's final logits (OCR, FCN)
FUSIONS = Registry("fusion method")
REFINEMENTS = Registry("refinement")
LOSS_WEIGHTINGS = Registry("loss weighting")
TASKS = Registry("task")  # what a kind of result needs from the engine (panoptix.engine.tasks)
INTERFACES = (SYSTEMS, BACKBONES, NECKS, ROI_HEADS, DENSE_DETECTORS, BOX_CLASSIFIERS, SEMANTIC_HEADS, UPSNET_HEADS,
              RANKING_HEADS, EMBEDDING_HEADS, CONTEXT_HEADS, DECODE_HEADS, FUSIONS, REFINEMENTS, LOSS_WEIGHTINGS,
              TASKS)

# Packages whose modules register panoptix's own components: every module in them is imported
# before a name is looked up, so an in-tree component is a new file, with no list to edit.
_BUILTIN_PACKAGES = ("panoptix.models", "panoptix.fusion", "panoptix.losses", "panoptix.engine.tasks")


@functools.cache
def import_builtin_components() -> None:
    import pkgutil

    for package_name in _BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            importlib.import_module(info.name)


def import_modules(names: Iterable[str]) -> None:
    """Import user modules that register components (``--import`` / ``imports:``)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {name!r} ({err}); is it on PYTHONPATH?") from None


class Configurable:
    """Mixin: ``from_config`` = the checked config values plus the context values named in ``derived``.

    ``derived`` lists constructor keywords that come from the context (channels, class counts),
    never from a config file; ``components`` lists sub-component sections (see module docstring).
    """

    derived: ClassVar[tuple[str, ...]] = ()
    components: ClassVar[dict[str, tuple[Any, dict[str, Any]]]] = {}

    @classmethod
    def check_config(cls, cfg: dict[str, Any], where: str) -> None:
        """Raise `ConfigError` for checked values that cannot work together or cannot be built
        (called by validation, before any data is read); the default accepts everything."""

    @classmethod
    def from_config(cls, cfg: dict[str, Any], **context: Any) -> Any:
        """``cls`` built from a checked section: sub-component sections are built first, with the same
        context (an RPN receives its head's ``in_channels``)."""
        parts = {key: _construct(spec, cfg[key], context) if cfg[key] is not None else None
                 for key, (spec, _) in cls.components.items() if key in cfg}
        return cls(**{**cfg, **parts}, **{k: v for k, v in context.items() if k in cls.derived})


# --------------------------------------------------------------------------- checking
def config_parameters(obj: Any) -> dict[str, inspect.Parameter]:
    """The keyword parameters a config may set: a class's constructor keywords minus ``derived``;
    a function's parameters that have defaults."""
    sig = inspect.signature(obj)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {n: p for n, p in sig.parameters.items() if p.kind in kinds}
    if isinstance(obj, type):
        base = _kwargs_base(obj, sig)
        if base is not None:  # ``**kwargs`` passed on to the base class: its keywords are ours too
            params = {**config_parameters(base), **params}
        return {n: p for n, p in params.items() if n not in getattr(obj, "derived", ())}
    return {n: p for n, p in params.items() if p.default is not inspect.Parameter.empty}


def _kwargs_base(cls: type, sig: inspect.Signature) -> type | None:
    """The base class whose constructor receives ``cls``'s ``**kwargs``, if it has them."""
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return next((b for b in cls.__mro__[1:] if "__init__" in vars(b) and b is not object), None)


@functools.cache
def _hints(obj: Any) -> dict[str, Any]:
    target = obj.__init__ if isinstance(obj, type) and "__init__" in vars(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that cannot be resolved is not checked
        return {}
    base = _kwargs_base(obj, inspect.signature(obj)) if isinstance(obj, type) else None
    return {**_hints(base), **hints} if base is not None else hints


@functools.cache
def _adapter(annotation: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return (str(annotation).replace("typing.", "").replace("collections.abc.", "").replace("pathlib.", "")
            .replace("NoneType", "None"))


def check_value(annotation: Any, value: Any, where: str) -> Any:
    """``value`` converted to ``annotation`` (pydantic's lax mode), or a one-line `ConfigError`."""
    from pydantic import ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    try:
        adapter = _adapter(annotation)
    except (PydanticSchemaGenerationError, TypeError):
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]["msg"]
        raise ConfigError(f"{where}: expected {type_name(annotation)}, got {value!r} ({first})") from None


def check_section(obj: Any, section: dict[str, Any], where: str) -> dict[str, Any]:
    """Keys and values of ``section`` checked against ``obj``'s parameters, defaults filled in.

    Sub-component sections named in ``obj.components`` are checked recursively.
    """
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {section!r}")
    params = config_parameters(obj)
    unknown = sorted(set(section) - set(params))
    if unknown:
        shown = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        hint = _nested_hint(obj, unknown) or (did_you_mean(unknown[0], params) if len(unknown) == 1 else "")
        raise ConfigError(f"unknown config key(s) {shown} for {_label(obj)}{hint}; "
                          f"valid keys: {', '.join(sorted(params)) or 'none'}")
    hints = _hints(obj)
    components = getattr(obj, "components", {})
    out: dict[str, Any] = {}
    for key, param in params.items():
        here = f"{where}.{key}" if where else key
        if key in components:
            spec, default = components[key]
            if default is None and section.get(key) is None:  # an optional part, left out
                out[key] = None
                continue
            out[key] = validate(spec, _merged(default or {}, section.get(key)), here)
        elif key in section:
            out[key] = check_value(hints[key], section[key], here) if key in hints else section[key]
        elif param.default is not inspect.Parameter.empty:
            out[key] = param.default
        else:
            raise ConfigError(f"{here}: required by {_label(obj)} but not set")
    if hasattr(obj, "check_config"):  # checks a type annotation cannot express (a timm architecture)
        obj.check_config(out, where)
    return out


def _nested_hint(obj: Any, unknown: list[str]) -> str:
    """" (did you mean rpn.nms?)" when an unknown key is a setting of a fixed sub-component, written
    flat (``rpn_nms`` or ``anchor_sizes`` for the ``rpn:`` section); "" otherwise."""
    found = []
    for part, (spec, _) in getattr(obj, "components", {}).items():
        if isinstance(spec, Registry):
            continue
        inner = config_parameters(spec)
        for key in unknown:
            name = key.removeprefix(part + "_")
            if name in inner:
                found.append(f"{part}.{name}")
    return f" (did you mean {', '.join(found)}?)" if found else ""


def _merged(default: dict[str, Any], section: dict[str, Any] | None) -> dict[str, Any]:
    if section is None:
        return dict(default)
    if not isinstance(section, dict):
        return section  # check_section reports it
    if "name" in section and section["name"] != default.get("name"):
        return dict(section)  # another component: the default's keys may not apply
    return {**default, **section}


def _label(obj: Any) -> str:
    return getattr(obj, "__name__", repr(obj))


def validate(spec: Any, section: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The checked section with defaults filled in: ``spec`` is a `Registry` (the section names its
    component with ``name``) or a fixed class (no ``name``)."""
    if not isinstance(spec, Registry):
        return check_section(spec, section, where)
    if not isinstance(section, dict) or not section.get("name"):
        raise ConfigError(f"{where or 'section'}: name the {spec.kind} with a 'name' key; registered: "
                          f"{', '.join(spec.names())}")
    rest = {k: v for k, v in section.items() if k != "name"}
    return {"name": section["name"], **check_section(spec.get(section["name"], where), rest, where)}


def build(spec: Any, section: dict[str, Any] | None, where: str = "", **context: Any) -> Any:
    """The component a section names, built with ``from_config`` (classes) or bound with
    ``functools.partial`` (functions). Context values reach ``from_config``. A None section (an
    optional part left out) builds None."""
    if section is None:
        return None
    try:
        return _construct(spec, validate(spec, section, where), context)
    except ConfigError:
        raise
    except ValueError as err:  # a constructor refusing its settings: a config error, said where
        if not where:
            raise  # the caller's build names the section
        raise ConfigError(f"{where}: {err}") from err


def _construct(spec: Any, values: dict[str, Any], context: dict[str, Any]) -> Any:
    """The component of a checked section: ``from_config`` (classes) or a ``functools.partial``."""
    values = dict(values)
    obj = spec.get(values.pop("name")) if isinstance(spec, Registry) else spec
    if not isinstance(obj, type):
        return functools.partial(obj, **values)
    return obj.from_config(values, **context) if hasattr(obj, "from_config") else obj(**values)


__all__ = ["Registry", "Configurable", "ConfigError", "SYSTEMS", "BACKBONES", "NECKS", "ROI_HEADS",
           "DENSE_DETECTORS", "BOX_CLASSIFIERS", "SEMANTIC_HEADS", "UPSNET_HEADS", "RANKING_HEADS",
           "EMBEDDING_HEADS", "CONTEXT_HEADS", "DECODE_HEADS", "FUSIONS", "REFINEMENTS", "LOSS_WEIGHTINGS", "TASKS",
           "INTERFACES", "build", "validate", "check_section", "check_value", "import_modules",
           "import_builtin_components", "config_parameters"]
