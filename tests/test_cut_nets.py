"""CUT's networks: the anti-aliased ResnetGenerator against a plain restatement of the
reference layout, recognition of its .pth files, the projection heads and PatchNCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from img2img.cli import app
from img2img.data.images import Image, read_image, write_image
from img2img.gan.checkpoint import load_generator
from img2img.nets import registry
from img2img.nets.cut import CutResnetGenerator, PatchHeads, patch_nce

runner = CliRunner()
CUT_LAYERS = (0, 4, 8, 12, 16)


def random_reference_weights(n_blocks: int, ngf: int, antialias: bool = True, antialias_up: bool = True) -> dict:
    """A state dict in the reference's key layout with random values (blur buffers as saved)."""
    weights = CutResnetGenerator(ngf=ngf, n_blocks=n_blocks, antialias=antialias, antialias_up=antialias_up).state_dict()
    generator = torch.Generator().manual_seed(5)
    return {k: v if k.endswith(".filt") else torch.randn(v.shape, generator=generator) * 0.2 for k, v in weights.items()}


def restated_forward(sd: dict, x: torch.Tensor, n_blocks: int, antialias: bool, antialias_up: bool) -> torch.Tensor:
    """The reference ResnetGenerator (instance norm, reflect padding), written out op by op."""
    def conv(x, i, **kw):
        return F.conv2d(x, sd[f"model.{i}.weight"], sd.get(f"model.{i}.bias"), **kw)

    def norm_relu(x):
        return F.relu(F.instance_norm(x))

    x = norm_relu(conv(F.pad(x, (3,) * 4, mode="reflect"), 1))
    i = 4
    for _ in range(2):
        if antialias:  # conv stride 1, norm, relu, blur-pool: reflect pad 1, [1 2 1]^2/16, stride 2
            x = norm_relu(conv(x, i, padding=1))
            x = F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), sd[f"model.{i + 3}.filt"], stride=2, groups=x.shape[1])
            i += 4
        else:
            x = norm_relu(conv(x, i, stride=2, padding=1))
            i += 3
    for _ in range(n_blocks):
        p = f"model.{i}.conv_block"
        h = F.relu(F.instance_norm(F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), sd[f"{p}.1.weight"], sd[f"{p}.1.bias"])))
        h = F.instance_norm(F.conv2d(F.pad(h, (1,) * 4, mode="reflect"), sd[f"{p}.5.weight"], sd[f"{p}.5.bias"]))
        x, i = x + h, i + 1
    for _ in range(2):
        if antialias_up:  # replicate pad 1, transposed blur, [1:, 1:], even filter: [:-1, :-1]; then conv
            up = F.conv_transpose2d(F.pad(x, (1,) * 4, mode="replicate"), sd[f"model.{i}.filt"], stride=2,
                                    padding=2, groups=x.shape[1])[:, :, 1:, 1:][:, :, :-1, :-1]
            x = norm_relu(conv(up, i + 1, padding=1))
            i += 4
        else:
            x = norm_relu(F.conv_transpose2d(x, sd[f"model.{i}.weight"], sd[f"model.{i}.bias"], stride=2, padding=1,
                                             output_padding=1))
            i += 3
    return torch.tanh(conv(F.pad(x, (3,) * 4, mode="reflect"), i + 1))


@pytest.mark.parametrize("antialias, antialias_up", [(True, True), (False, True), (True, False)])
def test_a_reference_cut_checkpoint_is_recognised_and_translates_as_the_reference(tmp_path, antialias, antialias_up):
    sd = random_reference_weights(n_blocks=3, ngf=4, antialias=antialias, antialias_up=antialias_up)
    torch.save(sd, tmp_path / "latest_net_G.pth")
    module, spec = load_generator(tmp_path / "latest_net_G.pth")
    assert spec.arch == "cut_resnet"
    assert spec.hparams == {"in_ch": 3, "out_ch": 3, "ngf": 4, "n_blocks": 3, "norm": "instance", "use_dropout": False,
                            "antialias": antialias, "antialias_up": antialias_up}
    # An odd-sized photograph through the whole command: padded (reflect) to a multiple of 4, cropped back.
    rgb = torch.rand(3, 29, 35)
    write_image(tmp_path / "in" / "x.png", Image(rgb=rgb, alpha=None, gray=False, bits=8))
    result = runner.invoke(app, ["translate", "--model", str(tmp_path / "latest_net_G.pth"), str(tmp_path / "in"),
                                 str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    source = read_image(tmp_path / "in" / "x.png").rgb[None] * 2 - 1
    padded = F.pad(source, (0, 1, 0, 3), mode="reflect")  # 29 x 35 -> 32 x 36
    expected = (restated_forward(sd, padded, 3, antialias, antialias_up)[..., :29, :35] + 1) / 2
    ours = read_image(tmp_path / "out" / "x.png").rgb[None]
    assert (ours - expected.clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    with torch.no_grad():
        assert torch.allclose(module(padded), restated_forward(sd, padded, 3, antialias, antialias_up), atol=1e-5)


def test_the_cycleGAN_layout_is_still_read_as_the_plain_resnet():
    sd = random_reference_weights(n_blocks=2, ngf=4, antialias=False, antialias_up=False)
    assert registry.infer_from_state_dict(sd)[0] == "resnet"


def test_encoder_features_and_their_widths_follow_the_reference_indices():
    generator = CutResnetGenerator(ngf=8, n_blocks=6)
    x = torch.randn(2, 3, 32, 40)
    features = generator.encode(x, CUT_LAYERS)
    # 0: the reflect-padded input; 4: the first down conv (full size); 8: the second (half);
    # 12 and 16: the outputs of residual blocks 1 and 5 (quarter size).
    assert [tuple(f.shape[1:]) for f in features] == [(3, 38, 46), (16, 32, 40), (32, 16, 20), (32, 8, 10), (32, 8, 10)]
    assert generator.feature_channels(CUT_LAYERS) == [3, 16, 32, 32, 32]
    assert torch.equal(features[0], F.pad(x, (3,) * 4, mode="reflect"))


def test_heads_sample_the_same_positions_for_query_and_key_and_normalise():
    torch.manual_seed(0)
    heads = PatchHeads([3, 16], width=8)
    assert [k for k in heads.state_dict()] == ["mlp_0.0.weight", "mlp_0.0.bias", "mlp_0.2.weight", "mlp_0.2.bias",
                                               "mlp_1.0.weight", "mlp_1.0.bias", "mlp_1.2.weight", "mlp_1.2.bias"]
    features = [torch.randn(2, 3, 6, 6), torch.randn(2, 16, 4, 4)]
    keys, ids = heads(features, num_patches=10)
    again, same_ids = heads(features, num_patches=10, patch_ids=ids)
    assert [k.shape for k in keys] == [(20, 8), (20, 8)]  # 10 positions x 2 images per layer
    assert all(torch.equal(a, b) for a, b in zip(ids, same_ids)) and all(torch.allclose(a, b) for a, b in zip(keys, again))
    assert len(set(ids[1].tolist())) == 10 and all(torch.allclose(k.norm(dim=1), torch.ones(20), atol=1e-3) for k in keys)
    few, few_ids = heads([features[0][:, :, :4, :4]], num_patches=256)
    assert few[0].shape == (2 * 16, 8) and sorted(few_ids[0].tolist()) == list(range(16))  # fewer positions than asked


def test_patch_nce_matches_the_reference_formula():
    torch.manual_seed(1)
    batch, patches, width, tau = 2, 5, 4, 0.07
    q = F.normalize(torch.randn(batch * patches, width), dim=1)
    k = F.normalize(torch.randn(batch * patches, width), dim=1)
    # Restated from the reference PatchNCELoss: positives by bmm, negatives within each image,
    # the diagonal set to -10, cross-entropy towards index 0.
    positive = torch.bmm(q.view(-1, 1, width), k.view(-1, width, 1)).view(-1, 1)
    negative = torch.bmm(q.view(batch, -1, width), k.view(batch, -1, width).transpose(2, 1))
    negative.masked_fill_(torch.eye(patches, dtype=torch.bool)[None], -10.0)
    logits = torch.cat([positive, negative.view(-1, patches)], dim=1) / tau
    expected = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long), reduction="none")
    assert torch.allclose(patch_nce(q, k, batch, tau), expected, atol=1e-6)
    # A patch that matches its own key and no other is nearly free; a shuffled one is not.
    eye = torch.eye(patches).repeat(batch, 1)
    assert patch_nce(eye, eye, batch, tau).max() < 1e-4
    assert patch_nce(eye.roll(1, 0), eye, batch, tau).min() > 10
