"""A foreign teacher is untrusted input: check its files before anything of it is built or loaded.

A hub ``hyperparams.yaml`` is code. HyperPyYAML's ``!new:``, ``!name:``, ``!module:``,
``!apply:`` and ``!applyref:`` tags import and call any Python callable, and the loader it uses
(``ruamel.yaml.Loader``) also builds ``!!python/object/apply:`` tags. :func:`check_hyperparams`
therefore reads the file with ruamel's composer, which builds nodes and never objects, and
refuses every tag whose target lies outside :data:`ALLOWED_PREFIXES` or inside
:data:`DENIED_PREFIXES` (what still downloads, unpickles or runs code within the allowed
packages: ``torch.hub``, ``speechbrain.utils.fetching``, ``speechbrain.inference`` ...), unless
the user passed ``--trust_teacher_code true``. A name is also resolved the way HyperPyYAML resolves
it (``pydoc.locate``, which imports modules but calls nothing) and the object it names must live
in an allowed module too, so ``speechbrain.os.system`` (``os`` as an attribute of
``speechbrain``) is refused as ``os.system``.

A ``.ckpt`` may be a pickle that runs code when loaded. :func:`load_checkpoint` loads tensors only
(``torch.load(weights_only=True)`` or safetensors). SpeechBrain 1.1.2's ``Pretrainer`` loads a
module's parameters through ``speechbrain.utils.checkpoints.torch_patched_state_dict_load``, which
calls ``torch.load(path, map_location=device)`` without ``weights_only``: safe only because torch
≥ 2.6 defaults it to True, a default the environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
turns off. :func:`check_teacher_folder` refuses that environment and loads every checkpoint of
the folder through :func:`load_checkpoint` first, so a payload is refused, naming the file,
before SpeechBrain opens it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pydoc
import types
from pathlib import Path

import ruamel.yaml
import torch
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from safetensors.torch import load_file

from kd_modules.hparams import OneLineError

# The packages whose callables a hub hyperparams.yaml may name (a trailing dot: the package and
# everything in it).
ALLOWED_PREFIXES = (
    "speechbrain.",
    "torch.nn.",
    "torch.optim.",
    "torchaudio.transforms.",
    "torchaudio.functional.",
    "torchaudio.compliance.",
    "kd_modules.models.",
    "kd_modules.losses.",
)

# What inside the allowed packages still fetches from the network, unpickles, imports by name or
# runs a program or a further hyperparams file. Matched against the name as written and against
# the module the named object lives in.
DENIED_PREFIXES = (
    "speechbrain.utils.fetching",  # downloads from the hub or a URL
    "speechbrain.utils.data_utils.download_file",
    "speechbrain.utils.superpowers",  # run_shell
    "speechbrain.utils.importutils",  # imports by name
    "speechbrain.utils.distributed",  # run_on_main calls what it is given
    "speechbrain.utils.checkpoints",  # loads checkpoints from anywhere
    "speechbrain.utils.DER",  # runs a perl script
    "speechbrain.utils.hpopt",
    "speechbrain.inference",  # from_hparams / foreign_class: a further model, custom .py code
    "speechbrain.pretrained",
    "speechbrain.core",  # Brain, experiment directories, command lines
    "speechbrain.integrations",  # HuggingFace from_pretrained, k2, audio tokenizers (downloads)
    "speechbrain.lobes.models.huggingface",
    "speechbrain.lobes.models.fairseq_wav2vec",
    "speechbrain.lobes.models.discrete",  # DAC downloads its weights
    "speechbrain.lobes.models.MSTacotron2",  # unpickles speaker embeddings
    "speechbrain.k2_integration",
    "speechbrain.decoders.scorer.HuggingFaceLMRescorer",
    "speechbrain.dataio.dataio.load_pickle",
    "speechbrain.dataio.dataio.load_pkl",
    "speechbrain.dataio.legacy",
    "torch.hub",
    "torch.load",
    "torch.serialization",
    "torch.jit",
    "torch.package",
    "torch.utils.model_zoo",
    "torch.utils.cpp_extension",
    "torch.distributed",
    "torch.ops",
    "torch.classes",
)

# HyperPyYAML's tags that name a callable or a module, and the ones that only refer to the tree.
CALL_TAGS = ("!new:", "!name:", "!module:", "!apply:", "!applyref:")
TREE_TAGS = ("!ref", "!copy", "!tuple", "!PLACEHOLDER")
INCLUDE_TAG = "!include:"
# Plain YAML: what ruamel's resolver gives untagged scalars, lists and maps, and YAML's own types.
PLAIN_YAML = "tag:yaml.org,2002:"
PLAIN_TYPES = {
    "str", "int", "float", "bool", "null", "map", "seq", "omap", "pairs", "set", "binary",
    "timestamp", "merge", "value",
}  # fmt: skip

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


class TeacherCodeRefused(OneLineError, PermissionError):
    """A teacher's ``hyperparams.yaml`` names code outside the allow-list; one line, as meant."""


class UntrustedCheckpoint(OneLineError, ValueError):
    """A teacher's checkpoint is not plain tensors (a pickle with objects); one line."""


def _refuse(path: Path, node: Node, what: str, reason: str) -> TeacherCodeRefused:
    """The one-line refusal naming the file, its line, the tag with its target, and the way out."""
    return TeacherCodeRefused(
        f"{path}:{node.start_mark.line + 1}: {what} {reason}; refused before anything of the "
        "teacher was built (pass --trust_teacher_code true to run it)"
    )


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``name`` is one of ``prefixes`` or inside one (``torch.hub`` covers
    ``torch.hub.load``, not ``torch.hubble``)."""
    return any(
        name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".")
        for p in prefixes
    )


def _home(obj: object) -> str | None:
    """The dotted name of the module an object lives in (a module: its own name)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None)


def target_problem(target: str) -> str | None:
    """Why the callable or module ``target`` may not be named by an untrusted file, or None.

    Checked as written first (nothing outside the allow-list is imported); then resolved as
    HyperPyYAML resolves it (``pydoc.locate``: imports, calls nothing) and checked where the
    object really lives.
    """
    if not _within(target, ALLOWED_PREFIXES):
        return f"is outside the allow-list ({', '.join(ALLOWED_PREFIXES)})"
    if any(part.startswith("_") for part in target.split(".")):
        return "reaches a private or dunder attribute"
    if _within(target, DENIED_PREFIXES):
        return "can download, unpickle or run further code"
    found = pydoc.locate(target)
    if found is None:
        return "does not exist"
    home = _home(found)
    if home is None or not _within(home + ".", ALLOWED_PREFIXES) or _within(home, DENIED_PREFIXES):
        return f"is {home}.{getattr(found, '__qualname__', '?')}, outside the allow-list"
    return None


def _walk(node: Node, seen: set[int]):
    """Every node of a composed YAML tree once (aliases share nodes; a tree may refer to itself)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    yield node
    if isinstance(node, SequenceNode):
        for child in node.value:
            yield from _walk(child, seen)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _walk(key, seen)
            yield from _walk(value, seen)


def _compose(path: Path) -> Node | None:
    """The node tree of a YAML file, built without constructing any object."""
    try:
        return ruamel.yaml.YAML(typ="rt").compose(path.read_text(encoding="utf-8"))
    except ruamel.yaml.YAMLError as err:
        summary = " ".join(str(err).split())
        raise TeacherCodeRefused(f"{path}: not valid YAML ({summary}); refused") from None


def _check_node(path: Path, node: Node, trust_code: bool, seen_files: set[Path]) -> list[str]:
    """The tags of one node that name code (an include: the included file's); refuses as it goes."""
    tag = node.tag or ""
    if tag.startswith(PLAIN_YAML):
        if tag[len(PLAIN_YAML) :] in PLAIN_TYPES:
            return []
        tag = "!!" + tag[len(PLAIN_YAML) :]  # as written: !!python/object/apply:...
    if tag in TREE_TAGS:
        return []
    if tag.startswith(INCLUDE_TAG):
        included = path.parent / tag[len(INCLUDE_TAG) :]
        if not included.is_file():
            raise _refuse(path, node, tag, f"includes {included}, which is not a file")
        return [tag, *_check_file(included.resolve(), trust_code, seen_files)]
    call = next((t for t in CALL_TAGS if tag.startswith(t)), None)
    if call is None:
        if not trust_code:
            raise _refuse(path, node, tag, "is not a HyperPyYAML tag (it builds Python objects)")
        return [tag]
    target = tag[len(call) :]
    problem = None if trust_code else target_problem(target)
    if problem is not None:
        raise _refuse(path, node, tag, f"calls {target}, which {problem}")
    return [tag]


def _check_file(path: Path, trust_code: bool, seen_files: set[Path]) -> list[str]:
    """The tags of one file and of the files it includes (each file once: includes may loop)."""
    if path in seen_files:
        return []
    seen_files.add(path)
    root = _compose(path)
    if root is None:
        return []
    found = []
    for node in _walk(root, set()):
        if isinstance(node, (ScalarNode, SequenceNode, MappingNode)):
            found.extend(_check_node(path, node, trust_code, seen_files))
    return found


def check_hyperparams(path: Path, trust_code: bool) -> list[str]:
    """Check a hub ``hyperparams.yaml`` without building anything of it; the tags it uses.

    Every HyperPyYAML tag that names code (``!new:``, ``!name:``, ``!module:``, ``!apply:``,
    ``!applyref:``) must name a callable inside :data:`ALLOWED_PREFIXES` and outside
    :data:`DENIED_PREFIXES`; any other non-YAML tag (``!!python/...``) is refused; an
    ``!include:`` is followed (relative to the including file, as HyperPyYAML does) and checked
    the same way. With ``trust_code`` nothing is refused. Returns the code-naming and include
    tags it saw, sorted and once each (e.g. ``"!new:speechbrain.lobes.features.Fbank"``), for
    the run record. Raises :class:`TeacherCodeRefused`, one line naming the file, line and tag.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherCodeRefused(f"{path}: no such hyperparams file")
    return sorted(set(_check_file(path.resolve(), trust_code, set())))


def _unpickler_reason(message: str) -> str:
    """The clause of torch's weights-only error that names the refused global, else its first."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
    return line.removeprefix("WeightsUnpickler error: ").split(". Please")[0]


def load_checkpoint(path: Path) -> dict:
    """The tensors of a checkpoint (safetensors, or ``torch.load(weights_only=True)``), on CPU.

    A pickle that holds anything but tensors and plain containers (a ``__reduce__`` payload, a
    pickled module) is refused before any of it runs: :class:`UntrustedCheckpoint`, one line
    naming the file and the global torch's weights-only unpickler refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        why = _unpickler_reason(str(err))
        raise UntrustedCheckpoint(
            f"{path}: not a plain tensor checkpoint, refused without running it ({why}); a "
            "teacher's checkpoints must load with torch.load(weights_only=True) or be safetensors"
        ) from None
    if not isinstance(state, dict):
        raise UntrustedCheckpoint(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def require_weights_only_default() -> None:
    """Refuse an environment where ``torch.load`` without ``weights_only`` unpickles anything.

    SpeechBrain's Pretrainer calls ``torch.load`` without ``weights_only``; torch 2.11 then
    loads weights only unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.
    """
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in {"1", "y", "yes", "true"}:
        raise UntrustedCheckpoint(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: SpeechBrain's Pretrainer would unpickle the "
            "teacher's checkpoints; unset it to load a foreign teacher"
        )


def hash_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (links followed), keyed by its relative POSIX path."""
    folder = Path(folder)
    hashes = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        hashes[file.relative_to(folder).as_posix()] = digest.hexdigest()
    return hashes


def check_teacher_folder(
    folder: Path, trust_code: bool, hparams_file: str = "hyperparams.yaml"
) -> dict:
    """Check a hub-format folder before SpeechBrain loads it; its entry for the run record.

    The hyperparams file is checked (:func:`check_hyperparams`), and unless ``trust_code`` every
    checkpoint in the folder is loaded once through :func:`load_checkpoint` and the environment
    must keep torch's weights-only default (:func:`require_weights_only_default`). Returns
    ``{"source", "trust_teacher_code", "callables", "sha256"}``.
    """
    folder = Path(folder)
    callables = check_hyperparams(folder / hparams_file, trust_code)
    if not trust_code:
        require_weights_only_default()
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix in CHECKPOINT_SUFFIXES:
                load_checkpoint(file)
    return {
        "source": str(folder.resolve()),
        "trust_teacher_code": trust_code,
        "callables": callables,
        "sha256": hash_files(folder),
    }
