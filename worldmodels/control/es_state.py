"""The CMA-ES strategy as plain data: tensors, numbers, strings, lists and dicts, no pickle.

CMA-ES (Hansen, *The CMA Evolution Strategy: A Tutorial*, 2016, arXiv:1604.00772) carries,
besides the mean m and the step size sigma, the covariance C and its eigen-decomposition
B D^2 B^T (updated lazily, so B and D are not a function of the current C), the evolution
paths p_c and p_sigma, counters and the random generator that draws the candidates. An
uninterrupted run and a resumed one follow the same trajectory only if *all* of it is
restored, which is what pycma's own pickle does; but unpickling runs whatever code a file
names, and a checkpoint from someone else (the shipped agent's) must not.

:func:`strategy_state` walks the strategy's object graph (pycma's classes, numpy arrays and
scalars, ``numpy.random.RandomState``, the bound ``randn`` it samples with) and writes it as
a tree that ``torch.load(weights_only=True)`` reads; :func:`strategy_from_state` rebuilds it,
creating only classes of the ``cma`` package (by ``object.__new__`` and their ``__dict__``:
no constructor, no ``__setstate__``) and naming only attributes of ``cma``, ``numpy``,
``math`` and ``builtins``. A symmetric matrix (C) is stored as its upper triangle.
Shared references and cycles are kept (a memo of object ids).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from worldmodels.errors import DataError

__all__ = ["FORMAT", "strategy_state", "strategy_from_state"]

FORMAT = "worldmodels/cmaes-state-v1"
_SAFE_MODULES = ("cma", "numpy", "math", "builtins")
_SCALARS = (type(None), bool, int, float, str)


def _safe_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _SAFE_MODULES)


def _reference(obj: Any) -> dict[str, Any] | None:
    """``{"ref": "module:qualname"}`` for a function or class of a safe module."""
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module and qualname and _safe_module(module) and "<" not in qualname:
        return {"ref": f"{module}:{qualname}"}
    return None


def _resolve(text: str) -> Any:
    module, qualname = text.split(":", 1)
    if not _safe_module(module):
        raise DataError(f"CMA-ES state names {text!r}, outside {', '.join(_SAFE_MODULES)}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Encoder:
    def __init__(self) -> None:
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # objects seen, alive until the walk ends (ids stay unique)

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, np.generic):  # before the scalars: np.float64 is a float
            return {"np": obj.dtype.str, "v": obj.item()}
        if isinstance(obj, _SCALARS):
            return obj
        if id(obj) in self.memo:
            return {"memo": self.memo[id(obj)]}
        key = len(self.memo)
        self.memo[id(obj)] = key
        self.keep.append(obj)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return {"id": key, "objarray": [self(x) for x in obj.ravel()],
                        "shape": list(obj.shape)}
            if obj.ndim == 2 and obj.shape[0] == obj.shape[1] > 1 and np.array_equal(obj, obj.T):
                rows, cols = np.triu_indices(obj.shape[0])
                return {"id": key, "sym": torch.from_numpy(obj[rows, cols].copy()),
                        "n": obj.shape[0]}
            return {"id": key, "array": torch.from_numpy(np.array(obj, copy=True))}
        if isinstance(obj, np.random.RandomState):
            name, keys, pos, has_gauss, gauss = obj.get_state()
            return {"id": key, "rng": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                       int(has_gauss), float(gauss)]}
        if type(obj) is dict:
            return {"id": key, "dict": self._dict(obj)}
        if type(obj) is range:
            return {"id": key, "range": [obj.start, obj.stop, obj.step]}
        if type(obj) in (list, tuple, set, frozenset):
            return {"id": key, type(obj).__name__: [self(x) for x in obj]}
        if type(obj).__name__ == "method" and hasattr(obj, "__self__"):
            return {"id": key, "method": obj.__func__.__name__ if hasattr(obj, "__func__")
                    else obj.__name__, "self": self(obj.__self__)}
        if callable(obj) and not hasattr(obj, "__dict__") or isinstance(obj, type) or (
                type(obj).__name__ in ("function", "builtin_function_or_method",
                                       "_ArrayFunctionDispatcher")):
            ref = _reference(obj)
            if ref is None:
                raise DataError(f"cannot store {obj!r} in the CMA-ES state")
            return {"id": key, **ref}
        cls = type(obj)
        if not _safe_module(cls.__module__) or not hasattr(obj, "__dict__"):
            raise DataError(f"cannot store a {cls.__module__}.{cls.__qualname__} in the "
                            "CMA-ES state")
        out: dict[str, Any] = {"id": key, "object": f"{cls.__module__}:{cls.__qualname__}",
                               "attrs": self._dict(vars(obj))}
        if isinstance(obj, dict):
            out["items"] = self._dict(obj)
        elif isinstance(obj, list):
            out["seq"] = [self(x) for x in obj]
        elif isinstance(obj, (tuple, set, frozenset)):
            raise DataError(f"cannot store a {cls.__qualname__} in the CMA-ES state")
        return out

    def _dict(self, d: dict) -> Any:
        return [[self(k), self(v)] for k, v in d.items()]


class _Decoder:
    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}

    def __call__(self, data: Any) -> Any:
        if isinstance(data, _SCALARS):
            return data
        if not isinstance(data, dict):
            raise DataError(f"unexpected {type(data).__name__} in the CMA-ES state")
        if "memo" in data:
            return self.memo[data["memo"]]
        if "np" in data:
            return np.dtype(data["np"]).type(data["v"])
        key = data.get("id")
        if "array" in data:
            return self._keep(key, data["array"].numpy().copy())
        if "sym" in data:
            n = data["n"]
            out = np.empty((n, n), dtype=data["sym"].numpy().dtype)
            rows, cols = np.triu_indices(n)
            out[rows, cols] = data["sym"].numpy()
            out[cols, rows] = data["sym"].numpy()
            return self._keep(key, out)
        if "objarray" in data:
            out = np.empty(len(data["objarray"]), dtype=object)
            self._keep(key, out)
            for i, x in enumerate(data["objarray"]):
                out[i] = self(x)
            return out.reshape(data["shape"])
        if "rng" in data:
            name, keys, pos, has_gauss, gauss = data["rng"]
            rng = np.random.RandomState()
            rng.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            return self._keep(key, rng)
        for kind, make in (("list", list), ("set", set), ("frozenset", frozenset),
                           ("tuple", tuple)):
            if kind in data:
                if kind == "list":
                    out = self._keep(key, [])
                    out.extend(self(x) for x in data[kind])
                    return out
                return self._keep(key, make(self(x) for x in data[kind]))
        if "range" in data:
            return self._keep(key, range(*data["range"]))
        if "dict" in data:
            out = self._keep(key, {})
            for k, v in data["dict"]:
                out[self(k)] = self(v)
            return out
        if "ref" in data:
            return self._keep(key, _resolve(data["ref"]))
        if "method" in data:
            owner = self(data["self"])
            return self._keep(key, getattr(owner, data["method"]))
        if "object" in data:
            cls = _resolve(data["object"])
            if not isinstance(cls, type) or not cls.__module__.startswith("cma"):
                raise DataError(f"CMA-ES state asks for {data['object']!r}, not a cma class")
            obj = self._keep(key, cls.__new__(cls))
            for k, v in data["attrs"]:
                obj.__dict__[self(k)] = self(v)
            if "items" in data:
                for k, v in data["items"]:
                    dict.__setitem__(obj, self(k), self(v))
            if "seq" in data:
                list.extend(obj, [self(x) for x in data["seq"]])
            return obj
        raise DataError(f"unknown entry {sorted(data)} in the CMA-ES state")

    def _keep(self, key: int | None, obj: Any) -> Any:
        if key is not None:
            self.memo[key] = obj
        return obj


def strategy_state(es: Any) -> dict[str, Any]:
    """``es`` (a ``cma.CMAEvolutionStrategy``) as a tree of tensors and plain values."""
    return {"format": FORMAT, "tree": _Encoder()(es)}


def strategy_from_state(state: Any) -> Any:
    """Rebuild the strategy of :func:`strategy_state`, on the same trajectory.

    :raises DataError: a pickled strategy (a uint8 tensor: checkpoints before this format),
        or anything that is not this format.
    """
    if isinstance(state, torch.Tensor):
        raise DataError("this checkpoint holds its CMA-ES state as a pickle (written before "
                        "the plain format): it is not loaded, because unpickling runs any code "
                        "the file names. Continue from its controller instead: "
                        "--init <that run or checkpoint> starts a new search at its C")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError("the checkpoint's CMA-ES state is not in a format this version reads")
    import cma  # noqa: F401  (the classes the tree names)

    return _Decoder()(state["tree"])
