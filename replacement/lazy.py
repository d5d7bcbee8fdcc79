"""Packages whose public names load on first use (PEP 562), so that the command line starts
without importing torch and TransformerLens.

`lazy_package(__name__, {"name": "package.module", ...})` installs a module `__getattr__` that
imports a name's module when the name is first asked for. Some public names equal the name of
the module that defines them (`replacement.splice`): importing such a
submodule makes the import system bind the submodule on the package, hiding the function; the
package's module class refuses that binding for those names, as the eager `from x import y`
in `__init__` used to override it.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any


def lazy_package(name: str, homes: Mapping[str, str], aliases: Mapping[str, str] | None = None):
    """Make package `name` load each public name from `homes[name]` when first used.

    aliases: public name -> the name it has in its module (e.g. prune -> prune_graph).
    """
    package = sys.modules[name]
    aliases = dict(aliases or {})

    def __getattr__(attr: str) -> Any:
        if attr not in homes:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(homes[attr]), aliases.get(attr, attr))
        object.__setattr__(package, attr, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(package), *homes})

    class _Package(types.ModuleType):
        def __setattr__(self, attr: str, value: Any) -> None:
            if attr in homes and isinstance(value, types.ModuleType):
                return  # a submodule named like a public function: keep the function's name
            super().__setattr__(attr, value)

    package.__getattr__ = __getattr__
    package.__dir__ = __dir__
    package.__class__ = _Package
