"""mkmsr: session-based recommendation from micro-behaviours and item knowledge (MKM-SR, SIGIR 2020).

The package reads in the direction data flows (see the README's Layout section):
``mkmsr.data`` -> ``mkmsr.models`` -> ``mkmsr.training`` and ``mkmsr.serving``; ``mkmsr.cli``
and ``mkmsr.demo`` sit on top. The modules' flat names from before that layout
(``mkmsr.recommend``, ``mkmsr.train``, ``mkmsr.prepare``, ...) still import: each is an alias
of the module itself (``mkmsr.recommend is mkmsr.serving.recommend``), resolved lazily.
"""
__version__ = "0.1.0"

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys

# old flat module name -> its place in the layout
MOVED = {
    **{m: "data." + m for m in ("sources", "raw_formats", "recbole_files", "prepare", "dataset", "batching",
                                "synthetic")},
    **{m: "training." + m for m in ("train", "distributed", "tensorboard_log", "evaluate", "metrics", "tune",
                                    "benchmark")},
    **{m: "serving." + m for m in ("recommend", "serve", "serve_observe")},
}


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """``import mkmsr.<old>`` -> the module ``mkmsr.<new>`` itself (one object, so monkeypatching
    and isinstance see the same thing), imported only when asked for."""

    def find_spec(self, fullname, path=None, target=None):
        pkg, _, name = fullname.partition(".")
        if pkg != __name__ or name not in MOVED:
            return None
        return _util.spec_from_loader(fullname, self, origin=f"{__name__}.{MOVED[name]}")

    def create_module(self, spec):
        module = _importlib.import_module(spec.origin)
        spec.loader_state = module.__spec__  # importlib sets __spec__ to the alias's; put it back below
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
