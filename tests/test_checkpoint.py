"""Generator files, training state and untrusted files."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from img2img.config import ConfigError
from img2img.gan import checkpoint
from img2img.gan.checkpoint import CheckpointError, GeneratorSpec, load_generator, save_generator
from img2img.nets import registry

from helpers import generator_cases, generator_input_size, save_tiny_generator


def test_generator_file_round_trip_needs_nothing_else(tmp_path):
    hparams = {"in_ch": 3, "out_ch": 3, "ngf": 8, "n_blocks": 2, "norm": "instance", "use_dropout": False}
    net = registry.build("resnet", **hparams).eval()
    spec = GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1", task="cyclegan",
                         direction="AtoB", step=7, config={"lr": 2e-4})
    save_generator(tmp_path / "g.safetensors", net, spec)
    loaded, loaded_spec = load_generator(tmp_path / "g.safetensors")
    assert loaded_spec == spec
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x), net(x))


@pytest.mark.parametrize("arch, hparams", generator_cases())
def test_every_generator_loads_its_file_exactly_without_initialising_first(tmp_path, arch, hparams):
    """Loading skips the random init and assigns the file's tensors."""
    torch.manual_seed(0)
    net = registry.build(arch, **hparams).eval()
    spec = GeneratorSpec(arch=arch, hparams=hparams, pixel_range=registry.get(arch).pixel_range)
    save_generator(tmp_path / "g.safetensors", net, spec)
    loaded, _ = load_generator(tmp_path / "g.safetensors")
    assert not loaded.training
    x = torch.rand(1, 3, generator_input_size(arch), generator_input_size(arch))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_a_run_folder_resolves_to_its_generator(tmp_path):
    net = registry.build("unet", num_downs=5, ngf=4)
    spec = GeneratorSpec(arch="unet", hparams={"num_downs": 5, "ngf": 4}, pixel_range="-1,1")
    save_generator(tmp_path / "run" / "checkpoints" / "generator.safetensors", net, spec)
    _, loaded_spec = load_generator(tmp_path / "run")
    assert loaded_spec.arch == "unet"
    with pytest.raises(ConfigError, match="no generator file"):
        load_generator(tmp_path)


class Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"model.1.weight": Exploit()}, handle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_generator(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickle_protocol_the_safe_loader_cannot_read_is_named(tmp_path, protocol, zipped):
    state = registry.build("resnet", ngf=4, n_blocks=1).state_dict()
    torch.save(state, tmp_path / "net.pth", pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own note on the protocol stays out of the user's terminal
        if protocol <= 3:
            assert load_generator(tmp_path / "net.pth")[1].arch == "resnet"
        else:
            with pytest.raises(CheckpointError, match=f"saved with pickle protocol {protocol}.*default protocol"):
                load_generator(tmp_path / "net.pth")


def test_basicsr_wrappers_and_ddp_prefixes_are_unwrapped(tmp_path):
    net = registry.build("resnet", ngf=4, n_blocks=1)
    wrapped = {"params": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "net.pth")
    _, spec = load_generator(tmp_path / "net.pth")
    assert spec.arch == "resnet" and spec.hparams["ngf"] == 4


def test_weights_that_do_not_fit_are_reported(tmp_path):
    state = registry.build("resnet", ngf=4, n_blocks=2).state_dict()
    state["model.1.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "bad.pth")


def test_the_newest_readable_state_wins_and_old_ones_are_pruned(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save_state(tmp_path, step, {"step": step, "w": torch.ones(2) * step})
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["state_step00000020.pt", "state_step00000030.pt"]
    (tmp_path / "state_step00000030.pt").write_bytes(b"truncated")
    state, path = checkpoint.load_latest_state(tmp_path)
    assert state["step"] == 20 and path.name == "state_step00000020.pt"


def test_the_api_refuses_a_direction_that_is_neither(tmp_path):
    from helpers import save_tiny_generator

    with pytest.raises(ValueError, match="direction 'sideways': choose 'AtoB' or 'BtoA'"):
        load_generator(save_tiny_generator(tmp_path / "g.safetensors"), direction="sideways")


@pytest.mark.parametrize("written", [(), ("generator.safetensors",), ("G_AB.safetensors", "G_BA.safetensors")])
def test_a_training_state_given_as_a_model_points_to_the_generator(tmp_path, written):
    torch.save({"format": "img2img-train-state", "step": 3, "nets": {}}, tmp_path / "state_step00000003.pt")
    for name in written:
        save_tiny_generator(tmp_path / name)
    with pytest.raises(CheckpointError) as refused:
        load_generator(tmp_path / "state_step00000003.pt")
    said = str(refused.value)
    assert "a training state, for --resume;" in said
    assert all(str(tmp_path / name) in said for name in written) and ("no generator file yet" in said) == (not written)
