"""FeatureTaps: capture by dotted path, gradients, errors, removal, DDP wrapping."""

import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from kd_modules.checkpoints import Checkpointer
from kd_modules.hparams import run_main
from kd_modules.taps import FeatureTaps
from kd_modules.teacher import Teacher


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh())])
        self.rnn = nn.LSTM(4, 2, batch_first=True)
        self.head = nn.Linear(2, 2)

    def forward(self, x, skip_rnn=False):
        h = self.blocks[1](self.blocks[0](x))
        if skip_rnn:
            return h
        return self.head(self.rnn(h)[0])


def test_capture_output_and_input_by_dotted_path():
    net, x = Net(), torch.randn(2, 5, 3)
    with FeatureTaps(net, {"hint": "blocks.1.0", "rnn": "rnn"}) as taps:
        net(x)
        feats = taps.features
    expected = net.blocks[1][0](net.blocks[0](x))
    torch.testing.assert_close(feats["hint"], expected)
    assert feats["rnn"].shape == (2, 5, 2)  # LSTM tuple → its output sequence
    with FeatureTaps(net, {"head_in": "head"}, capture="input") as taps:
        net(x)
        torch.testing.assert_close(taps.features["head_in"], net.rnn(torch.tanh(expected))[0])


def test_gradient_flows_through_captured_features():
    net = Net()
    taps = FeatureTaps(net, {"hint": "blocks.0"})
    net(torch.randn(2, 5, 3))
    taps.features["hint"].pow(2).sum().backward()
    assert net.blocks[0].weight.grad.abs().sum() > 0


def test_features_cleared_each_forward_and_remove_stops_capture():
    net = Net()
    taps = FeatureTaps(net, {"rnn": "rnn"})
    net(torch.randn(1, 2, 3))
    assert "rnn" in taps.features
    net(torch.randn(1, 2, 3), skip_rnn=True)
    assert taps.features == {}  # stale feature of the previous forward is gone
    taps.remove()
    net(torch.randn(1, 2, 3))
    assert taps.features == {}


def test_unknown_path_lists_nearby_names():
    with pytest.raises(ValueError, match=r"'blocks\.3'.*'blocks\.0', 'blocks\.1'"):
        FeatureTaps(Net(), {"hint": "blocks.3"})
    with pytest.raises(ValueError, match="capture"):
        FeatureTaps(Net(), {}, capture="grad")


def test_taps_survive_ddp_wrapping(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net, x = Net(), torch.randn(2, 5, 3)
        taps = FeatureTaps(net, {"hint": "blocks.0"})  # taps first, then wrap
        ddp = nn.parallel.DistributedDataParallel(net)
        ddp(x)
        torch.testing.assert_close(taps.features["hint"], net.blocks[0](x))
        wrapped = FeatureTaps(ddp, {"hint": "blocks.0"})  # already wrapped: paths stay the same
        ddp(x)
        assert "hint" in wrapped.features
    finally:
        dist.destroy_process_group()


# ----- a teacher's tap points: methods ask for a role, each architecture says where it lives -----
SOUND_HP = Path(__file__).resolve().parents[2] / "recipes/sound_classification/hparams"


def save_teacher_experiment(folder: Path, tap_points: str) -> None:
    """A minimal teacher experiment folder: hyperparams.yaml (a CNN) and one checkpoint."""
    folder.mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(
        "model: !new:kd_modules.models.CNNTagger\n"
        "    n_mels: 16\n    n_outputs: 3\n    channels: [4, 8]\n" + tap_points
    )
    with open(folder / "hyperparams.yaml") as stream:
        model = load_hyperpyyaml(stream)["model"]
    Checkpointer(folder / "save", recoverables={"model": model}).save_checkpoint(
        meta={"accuracy": 0.5}
    )


def test_teacher_taps_by_role_resolve_to_the_teachers_own_tap_points(tmp_path):
    save_teacher_experiment(tmp_path / "t", "tap_points:\n    frames: frames\n")
    teacher = Teacher.from_experiment(
        tmp_path / "t", taps={"sp": "@frames", "first": "blocks.0"}, max_key="accuracy"
    )
    out = teacher(torch.randn(2, 32, 16))
    assert out["sp"].shape == (2, 8, 8)  # (B, T/4, C): the CNN's frame states, by role
    assert out["first"].shape == (2, 4, 16, 8)  # a module path is still taken literally


def test_a_role_the_teacher_does_not_declare_is_refused_naming_it(tmp_path):
    save_teacher_experiment(tmp_path / "t", "tap_points:\n    frames: frames\n")
    with pytest.raises(KeyError, match=r"declares no tap point 'pre'.*tap_points: frames"):
        Teacher.from_experiment(tmp_path / "t", taps={"pre": "@pre"}, max_key="accuracy")
    save_teacher_experiment(tmp_path / "old", "")
    with pytest.raises(KeyError, match="tap_points: none"):
        Teacher.from_experiment(tmp_path / "old", taps={"x": "@frames"})


def test_a_missing_tap_point_ends_a_recipe_script_in_one_line(tmp_path, capsys):
    """E.g. FRAMI (stage 6) asked of the CNN teacher: one line naming the role, no traceback."""
    save_teacher_experiment(tmp_path / "t", "tap_points:\n    frames: frames\n")

    def main(argv):
        Teacher.from_experiment(tmp_path / "t", taps={"pre": "@pre"}, max_key="accuracy")

    with pytest.raises(SystemExit) as stop:
        run_main(main, [])
    assert stop.value.code == 1
    err = capsys.readouterr().err  # log lines may come first when logging goes to stderr
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert "declares no tap point 'pre'" in line and "tap_points: frames" in line
    assert not line.split(": ", 1)[1].startswith('"')  # the message, not KeyError's repr


def yaml_mapping(path: Path, key: str) -> dict:
    """The top-level mapping ``key`` of a recipe YAML (its other keys may hold HyperPyYAML tags)."""
    block = re.search(rf"^{key}:\n((?: {{4}}.*\n)+)", path.read_text(), re.M)
    return yaml.safe_load(block.group(1)) if block else {}


@pytest.mark.parametrize("method", ["sp", "fitnets", "frami"])
def test_sound_classification_methods_ask_roles_the_statistics_pooling_teacher_declares(method):
    """Every role a KD method asks for exists in xvector_large (the recipe's default teacher, the
    only one FRAMI can use); SP and FitNets also work with the CNN teacher."""
    asked = yaml_mapping(SOUND_HP / f"kd/{method}.yaml", "teacher_taps")
    assert asked and all(path.startswith("@") for path in asked.values())
    roles = {path[1:] for path in asked.values()}
    teachers = ["xvector_large"] + (["cnn"] if method in ("sp", "fitnets") else [])
    for arch in teachers:
        assert roles <= set(yaml_mapping(SOUND_HP / f"teacher/{arch}.yaml", "tap_points")), arch


def test_a_transpose_path_records_channels_first_frames_time_first():
    """``#transpose``: ECAPA's (B, C, T) layers recorded as (B, T, C), the layout the teacher
    cache pads along time; the graph is kept, and every tap point of the speaker teachers'
    YAML resolves on a real ECAPA-TDNN."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    from kd_modules.stages.status import yaml_value

    torch.manual_seed(0)
    ecapa = ECAPA_TDNN(
        20, channels=[8, 8, 8, 8, 24], attention_channels=4, se_channels=4, lin_neurons=6
    )
    model = nn.ModuleDict({"encoder": ecapa})
    x = torch.randn(2, 30, 20, requires_grad=True)
    paths = {"raw": "encoder.mfa", "frames": "encoder.mfa#transpose"}
    paths["post"] = "encoder.asp_bn#transpose"
    with FeatureTaps(model, paths) as taps:
        ecapa(x, torch.ones(2))
        feats = taps.features
        assert feats["raw"].shape == (2, 24, 30) and feats["frames"].shape == (2, 30, 24)
        torch.testing.assert_close(feats["frames"], feats["raw"].transpose(1, 2))
        assert feats["post"].shape == (2, 1, 48)
        feats["frames"].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    teachers = SOUND_HP.parents[1] / "speaker_verification" / "hparams" / "teacher"
    for arch in ("ecapa_tiny.yaml", "ecapa_c1024.yaml"):
        tap_points = yaml_value(teachers / arch, "tap_points")
        assert set(tap_points) == {"hint", "frames", "pre", "post"}
        FeatureTaps(model, tap_points).remove()  # every path resolves
