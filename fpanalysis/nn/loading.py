"""Turning what a user types (``lenet5``, ``models.py:make_net``, a checkpoint path) into a model."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_model", "load_checkpoint"]


def _builtin_names() -> list[str]:
    try:
        from .models import model_names

        return list(model_names())
    except ImportError:  # pragma: no cover
        return []


def load_model(spec: str, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A built-in model name (see ``fpanalysis.nn.models``) or ``path/to/file.py:factory``.

    A user factory is called with the keywords ``input_shape`` and ``num_classes`` when its
    signature accepts them, else with no arguments; it must return an ``nn.Module``.
    """
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path_s, func = spec.rsplit(":", 1)
        path = Path(path_s)
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist (expected 'path/to/file.py:factory')")
        mod_name = f"_fpanalysis_user_model_{abs(hash(str(path.resolve())))}"
        try:
            sp = importlib.util.spec_from_file_location(mod_name, path)
            assert sp is not None and sp.loader is not None
            module = importlib.util.module_from_spec(sp)
            sys.modules[mod_name] = module
            sp.loader.exec_module(module)
        except Exception as exc:
            raise ValueError(f"could not import {path}: {type(exc).__name__}: {exc}") from None
        factory = getattr(module, func, None)
        if factory is None or not callable(factory):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise ValueError(f"{path} has no callable {func!r}; callables there: {', '.join(names) or 'none'}")
        try:
            params = inspect.signature(factory).parameters
            kwargs = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes)) if k in params}
            model = factory(**kwargs)
        except Exception as exc:
            raise ValueError(f"{path}:{func}() failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"{path}:{func}() returned {type(model).__name__}, not a torch.nn.Module")
        return model
    names = _builtin_names()
    if spec not in names:
        raise ValueError(
            f"unknown model {spec!r}; built-in models are: {', '.join(names) or '(none)'}; "
            "or give 'path/to/file.py:factory' for your own"
        )
    from .models import build_model

    return build_model(spec, input_shape=input_shape, num_classes=num_classes)


def _unreadable_checkpoint(p: Path, exc: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``p``.  torch's own text
    runs to several lines and suggests ``weights_only=False`` (which runs arbitrary code from
    the file): fpanalysis never loads that way, so it never repeats the suggestion."""
    text = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return (f"checkpoint {p} holds pickled Python objects (e.g. {m.group(1)}), such as a whole model saved "
                "with torch.save(model); fpanalysis reads tensors only: save model.state_dict() and pass that file")
    m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
    why = " ".join(m.group(1).split()) if m else " ".join(text.strip().splitlines()[:1])[:200]
    return f"could not read checkpoint {p}: it is not a state_dict saved with torch.save ({why or type(exc).__name__})"


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load a ``state_dict`` saved with ``torch.save`` (read with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing the file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(_unreadable_checkpoint(p, exc)) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {p} does not hold a state_dict (found {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            f"checkpoint {p} does not match the model: " + "; ".join(line.strip() for line in first[:4])
        ) from None
    return model
