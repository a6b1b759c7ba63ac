"""A finished run in SpeechBrain's hub format: a folder ``EncoderClassifier.from_hparams`` loads.

    python tools/export_hub.py --run RUN_FOLDER --out FOLDER [--labels FILE] [--max_key KEY]

writes into ``FOLDER``:

- ``hyperparams.yaml``: the inference file of SpeechBrain's hub models. ``compute_features`` and
  ``mean_var_norm`` are the run's front end (its ``front_end``'s ``features`` and ``normalize``),
  ``model`` the run's model as its own YAML builds it, ``embedding_model`` / ``classifier`` the
  two views of that one model that ``EncoderClassifier`` calls
  (:mod:`kd_modules.models.hub`), ``label_encoder`` SpeechBrain's ``CategoricalEncoder``,
  ``tap_points`` the run's roles renamed to the hub modules' paths, and the ``pretrainer`` with
  its ``paths`` under ``pretrained_path``: this folder, as an absolute path. A local folder is
  fetched by linking, so loading it opens no network connection; a copy elsewhere loads with
  ``overrides={"pretrained_path": COPY}`` (a ``pretrained_path`` that is no folder is taken for a
  hub id, SpeechBrain issues #1253, #2699).
- ``embedding_model.ckpt``: the run's best checkpoint of the model (found as stage 9 finds it,
  :func:`kd_modules.export.run.load_run`), byte for byte.
- ``label_encoder.txt``: the class names in output order (``labels.json``'s classes or tag
  columns, ``speakers.json``'s training speakers), written by ``CategoricalEncoder.save``.

The written ``hyperparams.yaml`` must pass :func:`kd_modules.hub.trust.check_hyperparams` and the
checkpoint :func:`kd_modules.hub.trust.load_checkpoint`, so an exported run loads back as a
teacher without ``--trust_teacher_code``. ``classify_batch`` returns the model's logits (the
ensemble's log mean probability, the speaker model's scaled cosine), not probabilities.

A clip alone gives exactly the outputs of the recipe's own pipeline. In a padded batch
SpeechBrain's hub pipeline counts each clip's frames from its relative length (``wav_lens``),
where the recipe counts them from samples (:class:`kd_modules.replay.FrontEnd`), and ``Fbank``'s
dB floor sees the padding; a padded clip can then differ, as in any hub model.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import ruamel.yaml
import torch
from hyperpyyaml import resolve_references
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from speechbrain.dataio.encoder import CategoricalEncoder

from kd_modules.export.run import labels_entry, load_run
from kd_modules.hparams import OneLineError
from kd_modules.hub.trust import check_hyperparams, load_checkpoint
from kd_modules.models.hub import has_classifier, logits_from_embedding

logger = logging.getLogger(__name__)

FRONT_END_TAG = "!new:kd_modules.replay.FrontEnd"
HYPERPARAMS, CHECKPOINT, LABELS = "hyperparams.yaml", "embedding_model.ckpt", "label_encoder.txt"
# Where the recipes keep a run's class names, relative to its data_folder, after labels_file.
LABEL_FILES = ("speakers.json", "labels.json", "../labels.json")
EMBEDDING_PREFIX = "embedding_model.model."

HEADER = """\
# An EncoderClassifier in SpeechBrain's hub format, exported by tools/export_hub.py from
#   {run}
#   (checkpoint {checkpoint}).
# Offline: EncoderClassifier.from_hparams(source=<this folder>, savedir=...), this folder being
#   {out}
# (a copy elsewhere: add overrides={{"pretrained_path": <the copy>}}). Input: {rate} Hz mono audio.
# encode_batch -> the model's embedding (B, 1, E); classify_batch -> its logits (not
# probabilities), the best one, its index and its class name.
"""

TEMPLATE = """\
embedding_model: !new:kd_modules.models.hub.HubEmbedding
    model: !ref <model>
{classifier}label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
{classifier_module}pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <model>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/{checkpoint}
        label_encoder: !ref <pretrained_path>/{labels}
"""
CLASSIFIER = "classifier: !new:kd_modules.models.hub.HubClassifier\n    model: !ref <model>\n"
CLASSIFIER_MODULE = "    classifier: !ref <classifier>\n"


class HubExportError(OneLineError, ValueError):
    """The run cannot be written in the hub format; the message names the file or key."""


def _plain(node):
    """A copy of a round-trip YAML subtree with its tags and flow styles but no comments (the
    run's YAML carries the comments of every file it was composed from)."""
    if isinstance(node, CommentedMap):
        out = CommentedMap((key, _plain(value)) for key, value in node.items())
    elif isinstance(node, CommentedSeq):
        out = CommentedSeq(_plain(value) for value in node)
    elif isinstance(node, TaggedScalar):
        return TaggedScalar(value=node.value, style=node.style, tag=node.tag.value)
    else:
        return node
    if node.tag.value:
        out.yaml_set_ctag(node.tag)
    if node.fa.flow_style():
        out.fa.set_flow_style()
    return out


def run_tree(run_folder: Path) -> CommentedMap:
    """The run's ``hyperparams.yaml`` with every ``!ref`` resolved, tags kept (nothing built)."""
    text = (run_folder / HYPERPARAMS).read_text(encoding="utf-8")
    return ruamel.yaml.YAML(typ="rt").load(resolve_references(text))


def _tag(node) -> str:
    tag = getattr(node, "tag", None)
    return (tag.value or "") if tag is not None else ""


def front_end_nodes(tree: CommentedMap, path: Path) -> tuple:
    """The run's ``(features, normalize)`` subtrees: its ``front_end``'s two parts."""
    front_end = tree.get("front_end")
    if _tag(front_end) != FRONT_END_TAG:
        raise HubExportError(
            f"{path}: front_end is {_tag(front_end) or 'missing'}, not {FRONT_END_TAG} "
            "(compute_features + mean_var_norm): no hub form for it"
        )
    return front_end["features"], front_end["normalize"]


def hub_tap_points(tree: CommentedMap) -> CommentedMap | None:
    """The run's ``tap_points`` (role -> model path) as paths of the hub modules."""
    taps = tree.get("tap_points")
    if not taps:
        return None
    return CommentedMap((role, EMBEDDING_PREFIX + str(where)) for role, where in taps.items())


def class_names(hparams: dict, labels_file: Path | None) -> list[str]:
    """The run's class names in output order: ``labels_file`` if given, else the run's
    ``labels_file`` key or :data:`LABEL_FILES` under its ``data_folder`` (relative paths from
    the current folder, as run.sh runs them)."""
    tried = [labels_file] if labels_file is not None else []
    if labels_file is None:
        if hparams.get("labels_file"):
            tried.append(Path(hparams["labels_file"]))
        data = hparams.get("data_folder")
        tried += [Path(data) / name for name in LABEL_FILES] if data else []
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        raise HubExportError(
            f"no class names for the label encoder: none of {[str(p) for p in tried]} exists; "
            "pass --labels FILE (labels.json or speakers.json)"
        )
    names = labels_entry(found)["columns"]
    if not names or len(set(map(str, names))) != len(names):
        raise HubExportError(f"{found}: not a list of distinct class names (or a tag layout)")
    return [str(name) for name in names]


def check_classifier(hparams: dict, n_names: int) -> None:
    """The hub classifier gives the run's logits from its embedding, one logit per class name.

    Checked on one second of silence through the run's front end: any input shows a head that
    reads more than the embedding. One forward pass gives both sides, so the noise SpeechBrain's
    statistics pooling adds is the same on both (the caller's random state is kept)."""
    model, rate = hparams["model"], int(hparams["sample_rate"])
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        feats, lens = hparams["front_end"].features_and_lengths(torch.zeros(1, rate), torch.ones(1))
        outputs = model(feats, lens)
        logits = logits_from_embedding(model, outputs["embedding"])
    if not torch.allclose(logits, outputs["logits"], atol=1e-5, rtol=0):
        raise HubExportError(
            f"{type(model).__name__}: its logits are not a function of its embedding alone"
        )
    if logits.shape[-1] != n_names:
        raise HubExportError(
            f"the model has {logits.shape[-1]} outputs but the class names are {n_names}"
        )


def write_label_encoder(names: list[str], path: Path) -> None:
    """``label_encoder.txt``: index i is ``names[i]``, as ``CategoricalEncoder`` saves it."""
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(names, sequence_input=False)
    encoder.save(path)


def hub_yaml(tree: CommentedMap, hparams: dict, out: Path, header: str, classifier: bool) -> str:
    """The text of the exported ``hyperparams.yaml`` (see the module doc)."""
    features, normalize = front_end_nodes(tree, out / HYPERPARAMS)
    head = CommentedMap()
    head["sample_rate"] = int(hparams["sample_rate"])
    head["pretrained_path"] = str(out.resolve())
    head["compute_features"] = _plain(features)
    head["mean_var_norm"] = _plain(normalize)
    head["model"] = _plain(tree["model"])
    taps = hub_tap_points(tree)
    if taps is not None:
        head["tap_points"] = taps
    stream = io.StringIO()
    yaml = ruamel.yaml.YAML(typ="rt")
    yaml.indent(mapping=4, sequence=4, offset=0)
    yaml.dump(head, stream)
    rest = TEMPLATE.format(
        classifier=CLASSIFIER if classifier else "",
        classifier_module=CLASSIFIER_MODULE if classifier else "",
        checkpoint=CHECKPOINT,
        labels=LABELS,
    )
    return header + stream.getvalue() + rest


def export_hub(
    run_folder: str | Path,
    out: str | Path,
    labels_file: str | Path | None = None,
    max_key: str | None = None,
) -> dict:
    """Write the run in ``run_folder`` as a hub-format folder ``out`` (see the module doc).

    Returns ``{"run_folder", "checkpoint", "out", "classes", "callables"}``; raises
    :class:`HubExportError` (one line) when the run has no hub form or no class names.
    """
    run_folder, out = Path(run_folder), Path(out)
    try:
        hparams, checkpoint = load_run(run_folder, max_key)
    except FileNotFoundError as err:
        raise HubExportError(str(err)) from None
    classifier = has_classifier(hparams["model"].eval())
    names = class_names(hparams, None if labels_file is None else Path(labels_file))
    if classifier:
        check_classifier(hparams, len(names))
    out.mkdir(parents=True, exist_ok=True)
    header = HEADER.format(
        run=run_folder.resolve(),
        checkpoint=Path(checkpoint).name,
        out=out.resolve(),
        rate=hparams["sample_rate"],
    )
    text = hub_yaml(run_tree(run_folder), hparams, out, header, classifier)
    shutil.copyfile(Path(checkpoint) / "model.ckpt", out / CHECKPOINT)
    write_label_encoder(names, out / LABELS)
    (out / HYPERPARAMS).write_text(text, encoding="utf-8")
    callables = check_hyperparams(out / HYPERPARAMS, trust_code=False)
    load_checkpoint(out / CHECKPOINT)
    logger.info("%s: written in the hub format to %s", run_folder, out)
    return {
        "run_folder": str(run_folder),
        "checkpoint": str(checkpoint),
        "out": str(out),
        "classes": len(names),
        "callables": callables,
    }
