"""A finished run in SpeechBrain's hub format: a folder ``EncoderClassifier.from_hparams`` loads.

    python tools/export_hub.py --run RUN_FOLDER --out FOLDER [--labels FILE] [--max_key KEY]

writes into ``FOLDER``:

- ``hyperparams.yaml``: the inference file of SpeechBrain's hub models: ``compute_features`` and
  ``mean_var_norm`` (the run's ``front_end``'s ``features`` and ``normalize``), ``embedding_model``
  and ``classifier``, ``label_encoder`` (SpeechBrain's ``CategoricalEncoder``) and the
  ``pretrainer``, whose ``paths`` lie under ``pretrained_path``: this folder, as an absolute path.
  A local folder is fetched by linking, so loading it opens no network connection; a copy
  elsewhere loads with ``overrides={"pretrained_path": COPY}`` (a ``pretrained_path`` that is no
  folder is taken for a hub id, SpeechBrain issues #1253, #2699). Two keys only we read:
  ``hub_tap_points`` (the run's ``tap_points`` as paths of the hub modules) and
  ``hub_logit_scale`` (logits = scale x the classifier's output), as in ``hparams/teacher/
  hub_ecapa.yaml``.
- ``<loadable>.ckpt``: the run's best checkpoint (found as stage 9 finds it,
  :func:`kd_modules.export.run.load_run`), split over the pretrainer's loadables.
- ``label_encoder.txt``: the class names in output order (``labels.json``'s classes or tag
  columns, ``speakers.json``'s training speakers), written by ``CategoricalEncoder.save``.

Two layouts. A speaker model (:class:`~kd_modules.models.SpeakerEmbeddingModel`: an encoder lobe
and a cosine classifier) takes the hub ECAPA models' own: ``embedding_model`` is its encoder and
``classifier`` SpeechBrain's ECAPA ``Classifier`` (no hidden block) holding its speaker weights,
so ``classify_batch`` gives cosines, ``hub_logit_scale`` is the model's AAM scale, and
``hparams/teacher/hub_ecapa.yaml``'s tap points hold for an exported ECAPA. Any other model is
built once as ``model`` and wrapped twice (:mod:`kd_modules.models.hub`): ``embedding_model``
returns its embedding, ``classifier`` its logits from that embedding (``hub_logit_scale`` 1).

The written folder must pass :func:`kd_modules.hub.trust.check_teacher_folder`, and loaded back by
``EncoderClassifier.from_hparams`` it must give the run's embedding and logits (1e-5, on one
second of silence through the run's front end) before the export counts as done. A clip alone
gives exactly the recipe's outputs. In a padded batch SpeechBrain's hub pipeline counts each
clip's frames from its relative length (``wav_lens``), where the recipe counts them from samples
(:class:`kd_modules.replay.FrontEnd`), and ``Fbank``'s dB floor sees the padding; a padded clip
can then differ, as in any hub model.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ruamel.yaml
import torch
from hyperpyyaml import resolve_references
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from speechbrain.dataio.encoder import CategoricalEncoder

from kd_modules.export.run import labels_entry, load_run
from kd_modules.hparams import OneLineError
from kd_modules.hub.trust import check_teacher_folder
from kd_modules.models.hub import has_classifier
from kd_modules.models.speaker import SpeakerEmbeddingModel

logger = logging.getLogger(__name__)

FRONT_END_TAG = "!new:kd_modules.replay.FrontEnd"
ECAPA_CLASSIFIER = "!new:speechbrain.lobes.models.ECAPA_TDNN.Classifier"
LABEL_ENCODER = "!new:speechbrain.dataio.encoder.CategoricalEncoder"
HYPERPARAMS, LABELS = "hyperparams.yaml", "label_encoder.txt"
# Where the recipes keep a run's class names, relative to its data_folder, after labels_file.
LABEL_FILES = ("speakers.json", "labels.json", "../labels.json")
TOLERANCE = 1e-5

HEADER = """\
# An EncoderClassifier in SpeechBrain's hub format, exported by tools/export_hub.py from
#   {run}
#   (checkpoint {checkpoint}).
# Offline: EncoderClassifier.from_hparams(source=<this folder>, savedir=...), this folder being
#   {out}
# (a copy elsewhere: add overrides={{"pretrained_path": <the copy>}}). Input: {rate} Hz mono audio.
# encode_batch -> the model's embedding (B, 1, E); classify_batch -> the best of the scores
#   ({output}), its index and its class name. Logits = hub_logit_scale x those scores.
"""


class HubExportError(OneLineError, ValueError):
    """The run cannot be written in the hub format; the message names the file or key."""


@dataclass
class HubLayout:
    """How a run's model maps onto the hub modules.

    ``nodes``: the YAML keys the layout defines (``embedding_model``, ``classifier``, maybe
    ``model``); ``loadables``: pretrainer loadable -> the key it loads into; ``states``:
    loadable -> the state dict written as ``<loadable>.ckpt``; ``logit_scale``: logits = scale x
    the classifier's output; ``tap_prefix``: a run tap path's prefix -> the hub path's;
    ``output``: what ``classify_batch`` returns, for the header.
    """

    nodes: CommentedMap
    loadables: dict[str, str]
    states: dict[str, dict]
    logit_scale: float
    tap_prefix: tuple[str, str]
    output: str
    has_classifier: bool = field(default=True)


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


def _tagged(tag: str, value: str | dict) -> TaggedScalar | CommentedMap:
    """A YAML node ``tag value`` (a scalar such as ``!ref <model>``, or a mapping of arguments)."""
    if isinstance(value, str):
        return TaggedScalar(value=value, tag=tag)
    node = CommentedMap(value)
    node.yaml_set_ctag(ruamel.yaml.tag.Tag(suffix=tag))
    return node


def _tag(node) -> str:
    tag = getattr(node, "tag", None)
    return (tag.value or "") if tag is not None else ""


def run_tree(run_folder: Path) -> CommentedMap:
    """The run's ``hyperparams.yaml`` with every ``!ref`` resolved, tags kept (nothing built)."""
    text = (run_folder / HYPERPARAMS).read_text(encoding="utf-8")
    return ruamel.yaml.YAML(typ="rt").load(resolve_references(text))


def speaker_layout(tree: CommentedMap, model: SpeakerEmbeddingModel) -> HubLayout:
    """The hub ECAPA layout: the encoder lobe as ``embedding_model``, SpeechBrain's ECAPA
    ``Classifier`` (no hidden block: the cosine with each speaker's weight) as ``classifier``."""
    state = model.state_dict()
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if set(state) != {"weight", *(f"encoder.{k}" for k in encoder)}:
        raise HubExportError(f"{type(model).__name__}: parameters outside encoder and weight")
    classes, width = model.weight.shape
    nodes = CommentedMap()
    nodes["embedding_model"] = _plain(tree["model"]["encoder"])
    arguments = {"input_size": int(width), "lin_blocks": 0, "out_neurons": int(classes)}
    nodes["classifier"] = _tagged(ECAPA_CLASSIFIER, arguments)
    return HubLayout(
        nodes=nodes,
        loadables={"embedding_model": "embedding_model", "classifier": "classifier"},
        states={"embedding_model": encoder, "classifier": {"weight": state["weight"]}},
        logit_scale=model.scale,
        tap_prefix=("encoder.", "embedding_model."),
        output="the cosine with each training speaker",
    )


def wrapped_layout(tree: CommentedMap, model: torch.nn.Module) -> HubLayout:
    """Any other model: built once as ``model``, wrapped as ``embedding_model`` and
    ``classifier`` (:class:`~kd_modules.models.hub.HubEmbedding` / ``HubClassifier``)."""
    nodes = CommentedMap()
    nodes["model"] = _plain(tree["model"])
    ref = {"model": TaggedScalar(value="<model>", tag="!ref")}
    nodes["embedding_model"] = _tagged("!new:kd_modules.models.hub.HubEmbedding", ref)
    classifier = has_classifier(model)
    if classifier:
        nodes["classifier"] = _tagged("!new:kd_modules.models.hub.HubClassifier", ref)
    return HubLayout(
        nodes=nodes,
        loadables={"embedding_model": "model"},
        states={"embedding_model": model.state_dict()},
        logit_scale=1.0,
        tap_prefix=("", "embedding_model.model."),
        output="its logits (not probabilities)",
        has_classifier=classifier,
    )


def front_end_nodes(tree: CommentedMap, path: Path) -> tuple:
    """The run's ``(features, normalize)`` subtrees: its ``front_end``'s two parts."""
    front_end = tree.get("front_end")
    if _tag(front_end) != FRONT_END_TAG:
        raise HubExportError(
            f"{path}: front_end is {_tag(front_end) or 'missing'}, not {FRONT_END_TAG} "
            "(compute_features + mean_var_norm): no hub form for it"
        )
    return front_end["features"], front_end["normalize"]


def hub_tap_points(tree: CommentedMap, prefix: tuple[str, str]) -> CommentedMap:
    """The run's ``tap_points`` (role -> model path) as paths of the hub modules; a tap outside
    the exported modules is left out (and logged)."""
    old, new = prefix
    taps = CommentedMap()
    for role, where in (tree.get("tap_points") or {}).items():
        if str(where).startswith(old):
            taps[role] = new + str(where).removeprefix(old)
        else:
            logger.warning("tap point %s (%s) is not in the hub modules: left out", role, where)
    return taps


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


def write_label_encoder(names: list[str], path: Path) -> None:
    """``label_encoder.txt``: index i is ``names[i]``, as ``CategoricalEncoder`` saves it."""
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(names, sequence_input=False)
    encoder.save(path)


def hub_yaml(tree: CommentedMap, hparams: dict, out: Path, layout: HubLayout) -> str:
    """The body of the exported ``hyperparams.yaml`` (see the module doc)."""
    features, normalize = front_end_nodes(tree, out / HYPERPARAMS)
    doc = CommentedMap()
    doc["sample_rate"] = int(hparams["sample_rate"])
    doc["pretrained_path"] = str(out.resolve())
    doc["hub_logit_scale"] = float(layout.logit_scale)
    doc["hub_tap_points"] = hub_tap_points(tree, layout.tap_prefix)
    doc["compute_features"] = _plain(features)
    doc["mean_var_norm"] = _plain(normalize)
    doc.update(layout.nodes)
    doc["label_encoder"] = TaggedScalar(value="", tag=LABEL_ENCODER)
    modules = ["compute_features", "mean_var_norm", "embedding_model"]
    modules += ["classifier"] if layout.has_classifier else []
    doc["modules"] = CommentedMap((name, _ref(name)) for name in modules)
    loadables = {**layout.loadables, "label_encoder": "label_encoder"}
    paths = {name: f"{name}.ckpt" for name in layout.states} | {"label_encoder": LABELS}
    doc["pretrainer"] = _tagged(
        "!new:speechbrain.utils.parameter_transfer.Pretrainer",
        {
            "loadables": CommentedMap((name, _ref(key)) for name, key in loadables.items()),
            "paths": CommentedMap(
                (name, TaggedScalar(value=f"<pretrained_path>/{file}", tag="!ref"))
                for name, file in paths.items()
            ),
        },
    )
    stream = io.StringIO()
    yaml = ruamel.yaml.YAML(typ="rt")
    yaml.indent(mapping=4, sequence=4, offset=0)
    yaml.dump(doc, stream)
    return stream.getvalue()


def _ref(key: str) -> TaggedScalar:
    return TaggedScalar(value=f"<{key}>", tag="!ref")


def hub_outputs(folder: Path, wavs: torch.Tensor, logit_scale: float) -> dict:
    """The embedding and logits of ``folder`` loaded by ``EncoderClassifier.from_hparams``."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.utils.fetching import LocalStrategy

    with tempfile.TemporaryDirectory() as savedir, torch.no_grad():
        hub = EncoderClassifier.from_hparams(
            source=str(folder), savedir=savedir, local_strategy=LocalStrategy.NO_LINK
        )
        torch.manual_seed(0)  # as run_outputs: the same noise in statistics pooling
        embedding = hub.encode_batch(wavs)
        outputs = {"embedding": embedding.squeeze(1)}
        if "classifier" in hub.mods:
            outputs["logits"] = logit_scale * hub.mods.classifier(embedding).squeeze(1)
    return outputs


def silence(hparams: dict) -> torch.Tensor:
    """One second of silence ``(1, S)``: the round trip's input, shown to both sides."""
    return torch.zeros(1, int(hparams["sample_rate"]))


def run_outputs(hparams: dict) -> dict:
    """The run's model on :func:`silence` through its own front end, seeded (statistics pooling
    adds noise to its mean); the caller's random state is kept."""
    wavs = silence(hparams)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        feats, lens = hparams["front_end"].features_and_lengths(wavs, torch.ones(1))
        torch.manual_seed(0)
        return hparams["model"].eval()(feats, lens)


def check_round_trip(folder: Path, hparams: dict, layout: HubLayout, reference: dict) -> None:
    """Loaded back, ``folder`` gives ``reference`` (:func:`run_outputs`): the run's embedding
    and logits, to :data:`TOLERANCE`, seeded alike."""
    with torch.random.fork_rng(devices=[]):
        loaded = hub_outputs(folder, silence(hparams), layout.logit_scale)
    for key, value in loaded.items():
        ours = reference[key]
        if value.shape != ours.shape or not torch.allclose(value, ours, atol=TOLERANCE, rtol=0):
            (folder / HYPERPARAMS).unlink()
            raise HubExportError(
                f"{folder}: loaded back, its {key} differs from the run's model's; not exported"
            )


def export_hub(
    run_folder: str | Path,
    out: str | Path,
    labels_file: str | Path | None = None,
    max_key: str | None = None,
) -> dict:
    """Write the run in ``run_folder`` as a hub-format folder ``out`` (see the module doc).

    Returns ``{"run_folder", "checkpoint", "out", "classes", "callables", "sha256"}``; raises
    :class:`HubExportError` (one line) when the run has no hub form, no class names, or its
    folder does not load back with the run's outputs.
    """
    run_folder, out = Path(run_folder), Path(out)
    try:
        hparams, checkpoint = load_run(run_folder, max_key)
    except FileNotFoundError as err:
        raise HubExportError(str(err)) from None
    model, tree = hparams["model"], run_tree(run_folder)
    layout = (
        speaker_layout(tree, model)
        if isinstance(model, SpeakerEmbeddingModel)
        else wrapped_layout(tree, model)
    )
    names = class_names(hparams, None if labels_file is None else Path(labels_file))
    reference = run_outputs(hparams)
    if layout.has_classifier and reference["logits"].shape[-1] != len(names):
        raise HubExportError(
            f"the model has {reference['logits'].shape[-1]} outputs but the class names are "
            f"{len(names)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    header = HEADER.format(
        run=run_folder.resolve(),
        checkpoint=Path(checkpoint).name,
        out=out.resolve(),
        rate=hparams["sample_rate"],
        output=layout.output,
    )
    text = header + hub_yaml(tree, hparams, out, layout)
    for name, state in layout.states.items():
        torch.save(state, out / f"{name}.ckpt")
    write_label_encoder(names, out / LABELS)
    (out / HYPERPARAMS).write_text(text, encoding="utf-8")
    checked = check_teacher_folder(out, trust_code=False)
    check_round_trip(out, hparams, layout, reference)
    logger.info("%s: written in the hub format to %s", run_folder, out)
    return {
        "run_folder": str(run_folder),
        "checkpoint": str(checkpoint),
        "out": str(out),
        "classes": len(names),
        "callables": checked["callables"],
        "sha256": checked["sha256"],
    }
