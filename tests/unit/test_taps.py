"""FeatureTaps: capture by dotted path, gradients, errors, removal, DDP wrapping."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from kd_modules.taps import FeatureTaps


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
