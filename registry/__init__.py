"""Name -> plug-in lookup shared by streams, agents and metrics.

This package is the bottom of the import graph (``lab -> {streams, agents,
metrics}``, ``metrics -> agents``): every other package may import it and it
imports none of them, so one registry implementation serves all of them
without breaking the one-way arrows.

A plug-in is one decorated definition::

    from plasticity_lab.agents.activations import activations

    @activations.register("mine")
    def mine(x):
        return x.clamp(min=0) ** 2

Parameters are read from the definition itself: a dataclass's fields or a
function's keyword arguments after the first positional one, with their
defaults. ``Registry.params`` reports them; ``lab list`` prints them.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

ENTRY_POINT_GROUP = "plasticity_lab.plugins"


class ConfigError(ValueError):
    """Bad user input: names the field, the value and what would be valid.

    The CLI turns it into one line on stderr and exit status 2.
    """

    def __init__(self, field: str, value: Any, expected: str | Iterable[str]):
        if not isinstance(expected, str):
            choices = sorted(map(str, expected))
            expected = "one of: " + ", ".join(choices) + did_you_mean(value, choices)
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}={value!r} is not valid; expected {expected}")


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``" (did you mean 'relu'?)"`` for the choice closest to a mistyped ``value``
    (difflib's ratio of at least 0.6), else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6) if isinstance(value, str) else []
    return f" (did you mean {close[0]!r}?)" if close and close[0] != value else ""


class DataError(ConfigError):
    """Missing, partial or corrupt input data: the message names the file,
    what was wrong and how to make it right (also exit status 2)."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.field, self.value, self.expected = "data", None, message


@dataclasses.dataclass
class Entry:
    """One registered plug-in: its name, the object, its parameters and the
    facts its registration declared (an instance of the registry's ``facts``
    type, or None for registries without one)."""

    name: str
    obj: Any
    params: dict[str, Any]
    doc: str
    facts: Any = None


def params_of(obj: Any) -> dict[str, Any]:
    """Parameter names and defaults of a dataclass or a callable.

    For a plain function the first positional parameter (the input tensor) is
    skipped; keyword parameters without defaults are reported as ``None``.
    """
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
        return out
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}
    ps = list(sig.parameters.values())
    if ps and ps[0].kind in (ps[0].POSITIONAL_ONLY, ps[0].POSITIONAL_OR_KEYWORD) and not inspect.isclass(obj):
        ps = ps[1:]
    return {
        p.name: (None if p.default is p.empty else p.default)
        for p in ps
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


class Registry:
    """A named collection of plug-ins of one kind (activation, stream, ...).

    Each kind declares its contract here, checked once at registration:
    ``base``, the class every plug-in must subclass (interventions), and
    ``facts``, the dataclass holding what a registration declares besides the
    object (an activation's init gain and derivative, a metric's unit and
    schedule); ``check(name, obj, facts)`` validates what depends on both.
    """

    def __init__(self, kind: str, reserved: Iterable[str] = (), *, base: type | None = None,
                 facts: type | None = None, check: Callable[[str, Any, Any], None] | None = None):
        """``reserved``: arguments the lab supplies itself (an activation's
        ``width``), hidden from the user-facing parameters."""
        self.kind = kind
        self.reserved = set(reserved)
        self.base, self.facts_type, self.check = base, facts, check
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, aliases: Iterable[str] = (), **facts: Any) -> Callable[[Any], Any]:
        """Decorator: register ``obj`` under ``name`` (and ``aliases``), with
        the ``facts`` this registry's kind declares (TypeError for others)."""

        def deco(obj: Any) -> Any:
            self._check_base(name, obj)
            declared = self._facts(name, facts)
            if self.check is not None:
                self.check(name, obj, declared)
            doc = inspect.getdoc(obj) or ""
            params = {k: v for k, v in params_of(obj).items() if k not in self.reserved} if obj is not None else {}
            for n in (name, *aliases):
                self._entries[n] = Entry(n, obj, params, doc, declared)
            return obj

        return deco

    def _check_base(self, name: str, obj: Any) -> None:
        if self.base is not None and not (inspect.isclass(obj) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {obj!r} must be a class deriving from "
                            f"{self.base.__module__}.{self.base.__qualname__}")

    def _facts(self, name: str, facts: dict[str, Any]) -> Any:
        if self.facts_type is None:
            if facts:
                raise TypeError(f"{self.kind} {name!r}: a {self.kind} registration takes no facts, got {sorted(facts)}")
            return None
        known = [f.name for f in dataclasses.fields(self.facts_type)]
        unknown = sorted(set(facts) - set(known))
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown registration fact(s) {unknown}; "
                            f"a {self.kind} declares: {', '.join(known)}")
        return self.facts_type(**facts)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in registered for a while: tests, notebooks)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        """The registered object, or a ConfigError listing the valid names."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise ConfigError(self.kind, name, self.names()) from None

    def entry(self, name: str) -> Entry:
        self.get(name)
        return self._entries[name]

    def facts(self, name: str) -> Any:
        """What ``name``'s registration declared (the registry's ``facts`` type)."""
        return self.entry(name).facts

    def params(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).params)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check_params(self, name: str, given: dict[str, Any]) -> None:
        """Raise ConfigError for a parameter ``name`` does not take."""
        known = self.params(name)
        for key in given:
            if key not in known:
                raise ConfigError(f"{self.kind}.{key}", given[key], f"a parameter of {self.kind} {name!r}: {', '.join(known) or '(none)'}")


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import user plug-in modules, then every installed entry point.

    ``modules`` are module names on ``sys.path`` or paths to ``.py`` files
    (``plugins=[my_acts]`` finds ``./my_acts.py``). Installed packages expose
    plug-ins under the ``plasticity_lab.plugins`` entry-point group. Importing
    a module runs its ``@registry.register`` decorators; a file already
    imported in this process is not run again.
    """
    loaded = []
    for mod in modules:
        path = Path(mod if mod.endswith(".py") else f"{mod}.py")
        if path.is_file():
            name = path.stem
            known = getattr(sys.modules.get(name), "__file__", None)
            if known and Path(known).resolve() == path.resolve():  # imported once per process, as `import` does
                loaded.append(mod)
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            _run_plugin(mod, lambda: spec.loader.exec_module(module))
        else:
            _run_plugin(mod, lambda: importlib.import_module(mod))
        loaded.append(mod)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _run_plugin(ep.value, ep.load)
        loaded.append(ep.value)
    return loaded


def _run_plugin(name: str, load: Callable[[], Any]) -> None:
    """Import one plug-in module; what goes wrong becomes one ConfigError line naming it."""
    try:
        load()
    except ModuleNotFoundError as err:
        raise ConfigError("plugins", name, f"an importable module or a .py file ({err})") from None
    except Exception as err:  # a plug-in that fails to import or register: say which and why
        where = _plugin_frame(err)
        raise ConfigError("plugins", name, f"a module that imports cleanly; {type(err).__name__} at "
                          f"{Path(where.filename).name}:{where.lineno}: {err}") from None


def _plugin_frame(err: BaseException) -> traceback.FrameSummary:
    """The innermost frame of ``err`` outside the lab's own code and the import machinery (the plug-in's line)."""
    lab = str(Path(__file__).resolve().parents[1])
    frames = traceback.extract_tb(err.__traceback__)
    outside = [f for f in frames if not f.filename.startswith((lab, "<frozen"))]
    return (outside or frames)[-1]
