"""The ensemble teacher (kd_modules.models.Ensemble, sound classification's teacher/ensemble.yaml)
on real FSDD clips: averaged in probability, members different but fixed by the seed, and each
member trained on the labels alone."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch

from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.models import classification_loss

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "sound_classification"
FSDD = REPO / "tests" / "samples" / "fsdd" / "free-spoken-digit-dataset" / "recordings"


def ensemble_recipe(tmp_path: Path, seed: int = 1) -> dict:
    files = [
        RECIPE / "hparams" / f for f in ("common.yaml", "teacher/ensemble.yaml", "kd/none.yaml")
    ]
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "exp")}
    return load_composed(files, {**overrides, "n_classes": 10, "seed": seed})


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (B, T, 40) and frame lengths of 6 real digits of different lengths, and labels."""
    paths = sorted(FSDD.glob("*.flac"))[:6]
    sigs = PaddedBatch([{"id": p.stem, "sig": read_audio(p, 16000)} for p in paths]).sig
    hparams = ensemble_recipe(Path("/nonexistent"))
    feats, lens = hparams["front_end"].features_and_lengths(*sigs)
    labels = torch.tensor([int(p.stem.split("_")[0]) for p in paths])
    return feats, lens, labels


def test_outputs_are_the_members_mean_probability_and_their_embeddings(tmp_path, batch):
    feats, lens, _ = batch
    model = ensemble_recipe(tmp_path)["model"].eval()
    with torch.no_grad():
        out = model(feats, lens)
        members = [member(feats, lens) for member in model.members]
    mean_probs = torch.stack([F.softmax(m["logits"], dim=-1) for m in members]).mean(0)
    close = {"atol": 1e-4, "rtol": 1e-3}  # statistics pooling adds noise of about 1e-5
    torch.testing.assert_close(F.softmax(out["logits"], dim=-1), mean_probs, **close)
    torch.testing.assert_close(out["logits"].exp().sum(-1), torch.ones(len(feats)))
    embeddings = torch.cat([m["embedding"] for m in members], -1)
    torch.testing.assert_close(out["embedding"], embeddings, **close)
    assert out["embedding"].shape == (len(feats), 4 * 64)
    assert "member_logits" not in out  # a teacher (eval mode) and its cache see the ensemble only
    assert model.train()(feats, lens)["member_logits"].shape == (4, len(feats), 10)


def test_members_are_initialised_apart_and_the_seed_fixes_them(tmp_path):
    first, again = ensemble_recipe(tmp_path)["model"], ensemble_recipe(tmp_path)["model"]
    other_seed = ensemble_recipe(tmp_path, seed=2)["model"]
    weights = [m.head[1].weight for m in first.members]
    assert all(not torch.equal(weights[0], w) for w in weights[1:])
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.members[1].head[1].weight, other_seed.members[1].head[1].weight)


def test_each_member_learns_from_the_labels_alone(tmp_path, batch):
    """The training loss's gradient on member 0 is its own cross-entropy's (over M), whatever the
    other members output: cross-entropy of the averaged prediction would couple them."""
    feats, lens, labels = batch
    model = ensemble_recipe(tmp_path)["model"].train()
    torch.manual_seed(0)
    classification_loss(model(feats, lens), labels).backward()
    together = model.members[0].head[1].weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(0)  # statistics pooling's noise: the same draws as above for member 0
    own = F.cross_entropy(model.members[0](feats, lens)["logits"], labels) / len(model.members)
    own.backward()
    torch.testing.assert_close(together, model.members[0].head[1].weight.grad)
    coupled = F.cross_entropy(model(feats, lens)["logits"], labels)
    model.zero_grad()
    coupled.backward()
    assert not torch.allclose(together, model.members[0].head[1].weight.grad, atol=1e-6)


def test_a_single_classifier_keeps_its_cross_entropy(batch):
    logits = torch.randn(6, 10)
    labels = batch[2]
    loss = classification_loss({"logits": logits}, labels, label_smoothing=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
