"""Capture intermediate features by dotted module path with forward hooks; models stay unchanged.

Usage: ``taps = FeatureTaps(student, {"hint": "embedding_model.blocks.5"})``, then after
``logits = student(x)``: ``out = {"logits": logits, **taps.features}``; ``out["hint"]`` keeps the
graph, so the KD loss trains the student through it.

A path ending in ``#transpose`` (``"encoder.mfa#transpose"``) records the output with dims 1 and
2 swapped: channels-first frames ``(B, C, T)`` (ECAPA's blocks) as time-first ``(B, T, C)``, the
layout the teacher cache stores per clip (padded along time) and the frame losses default to.
"""

from __future__ import annotations

import difflib

from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

TRANSPOSE = "#transpose"  # path suffix: record the output (B, C, T, ...) as (B, T, C, ...)


class FeatureTaps:
    """Record the output (or input) of named submodules at every forward.

    ``paths`` maps a feature name to a dotted module path relative to ``model`` (numeric parts index
    ``ModuleList`` / ``Sequential``, as ``nn.Module.get_submodule``). Hooks sit on the submodules
    themselves, so they keep firing after ``model`` is wrapped in DistributedDataParallel (a model
    already wrapped is unwrapped first, so paths never start with ``module.``). Captured tensors are
    not detached: the student's features carry gradients into the KD loss.

    ``features`` is cleared whenever ``model`` itself is called; when the model is a container
    never called as a whole (e.g. a Brain's ``ModuleDict``), each tapped module's call overwrites
    its own entry, and ``clear()`` empties the dict explicitly.
    """

    def __init__(self, model: nn.Module, paths: dict[str, str], capture: str = "output"):
        if capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            model = model.module
        self.capture = capture
        self._features: dict[str, Tensor] = {}
        modules = {
            name: _resolve(model, path.removesuffix(TRANSPOSE)) for name, path in paths.items()
        }
        self._transposed = {name for name, path in paths.items() if path.endswith(TRANSPOSE)}
        self._handles = [model.register_forward_pre_hook(lambda *_: self.clear())]
        for name, module in modules.items():
            self._handles.append(
                module.register_forward_hook(self._hook(name), with_kwargs=capture == "input")
            )

    def _hook(self, name: str):
        if self.capture == "output":

            def hook(module, args, output):
                self._features[name] = self._layout(name, _first(output))

        else:

            def hook(module, args, kwargs, output):
                captured = _first(args if args else tuple(kwargs.values()))
                self._features[name] = self._layout(name, captured)

        return hook

    def _layout(self, name: str, x: Tensor) -> Tensor:
        """``x`` as recorded: dims 1 and 2 swapped for a ``#transpose`` path."""
        return x.transpose(1, 2) if name in self._transposed else x

    @property
    def features(self) -> dict[str, Tensor]:
        """Name → tensor captured at the latest forward (a new dict; the tensors are not copied)."""
        return dict(self._features)

    def clear(self) -> None:
        self._features.clear()

    def remove(self) -> None:
        """Remove every hook; the model is exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _first(x):
    """Modules returning tuples (e.g. RNNs: output, hidden) contribute their first element."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, with an error listing the valid names near ``path``."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = [name for name, _ in model.named_modules() if name]
    parts = path.split(".")
    prefix = ""
    for i in range(len(parts), 0, -1):  # deepest existing parent of the missing part
        candidate = ".".join(parts[:i])
        if candidate in names:
            prefix = candidate
            break
    parent = model.get_submodule(prefix)
    children = [f"{prefix}.{c}" if prefix else c for c, _ in parent.named_children()]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    raise ValueError(
        f"no module at path {path!r} in {type(model).__name__}; "
        f"children of {prefix or '<root>'!r}: {children}; closest names: {close}"
    )
