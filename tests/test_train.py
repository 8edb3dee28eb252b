"""Training pix2pix end to end: run folder contents, exact resume, refusal to overwrite a run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from img2img import api
from img2img.cli import app
from img2img.config import ConfigError, make_config, resolve
from img2img.data.datasets import DataError
from img2img.gan.checkpoint import load_generator
from img2img.progress import Silent
from helpers import CrashAt, flat

runner = CliRunner()


def tiny_config(paired_photos, out, **overrides):
    values = {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(out), "steps": 8,
              "size": 32, "load_size": 40, "netG": "unet_32", "ngf": 8, "ndf": 8, "batch_size": 2,
              "workers": 0, "save_every": 4, "log_every": 1, "seed": 3}
    return make_config("pix2pix", {**values, **overrides})


def generator_weights(run_dir):
    module, _ = load_generator(run_dir)
    return module.state_dict()


def test_run_folder_holds_config_log_samples_and_checkpoints(paired_photos, tmp_path):
    run = api.train(tiny_config(paired_photos, tmp_path / "run"))
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"loss_D", "loss_G_GAN", "loss_G_L1", "D_real", "D_fake", "lr", "img_per_s"} <= records[0].keys()
    assert 0 <= records[0]["D_real"] <= 1 and 0 <= records[0]["D_fake"] <= 1
    assert records[0]["lr"]["G"] == pytest.approx(2e-4) and records[-1]["lr"]["G"] == pytest.approx(0.0)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000004.png", "step_00000008.png"]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "generator.safetensors", "state_step00000004.pt", "state_step00000008.pt"}
    _, spec = load_generator(run)
    assert spec.arch == "unet" and spec.step == 8 and spec.config["size"] == 32


@pytest.mark.parametrize("overrides", [{}, {"ema": 0.9, "norm": "instance", "gan_loss": "lsgan"}])
def test_resume_after_a_crash_gives_the_same_weights_as_a_straight_run(paired_photos, tmp_path, overrides):
    straight = api.train(tiny_config(paired_photos, tmp_path / "straight", **overrides))

    interrupted = tiny_config(paired_photos, tmp_path / "resumed", **overrides)
    with pytest.raises(KeyboardInterrupt):
        api.train(interrupted, reporter=CrashAt(6))  # dies after the step-4 checkpoint
    api.train(interrupted, resume=True)

    expected, got = generator_weights(straight), generator_weights(tmp_path / "resumed")
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.parametrize("change", [None, "added", "removed"])
def test_a_resume_says_when_the_training_data_changed(paired_photos, tmp_path, change):
    import shutil

    class Messages(Silent):
        def __init__(self):
            self.said = []

        def message(self, text):
            self.said.append(text)

    for side in ("a", "b"):
        shutil.copytree(paired_photos[side], tmp_path / side)
    cfg = tiny_config(paired_photos, tmp_path / "run", a=str(tmp_path / "a"), b=str(tmp_path / "b"), steps=2,
                      save_every=2)
    api.train(cfg)
    count = len(list((tmp_path / "a").iterdir()))
    for side in ("a", "b"):
        first = sorted((tmp_path / side).iterdir())[0]
        if change == "added":
            shutil.copy(first, tmp_path / side / f"extra{first.suffix}")
        elif change == "removed":
            first.unlink()
    messages = Messages()
    api.train(make_config("pix2pix", {**cfg.to_dict(), "steps": 3}), resume=True, reporter=messages)
    changed = [m for m in messages.said if "training data changed" in m]
    now = {None: count, "added": count + 1, "removed": count - 1}[change]
    assert changed == ([] if change is None else [changed[0]])
    assert change is None or f"({count} items then, {now} now)" in changed[0]


def test_bf16_trains_on_a_cpu_when_asked(paired_photos, tmp_path):
    run = api.train(tiny_config(paired_photos, tmp_path / "run", amp="bf16", steps=4))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["loss_G_L1"], r["loss_D"]])).all() for r in records)
    untrained = api.train(tiny_config(paired_photos, tmp_path / "untrained", amp="bf16", steps=4, lr=0.0))
    assert any(not torch.equal(a, b) for a, b in zip(generator_weights(run).values(),
                                                      generator_weights(untrained).values()))


def test_ema_decay_warms_up_so_a_short_run_exports_its_recent_weights():
    from torch import nn
    from torch.optim.swa_utils import AveragedModel

    from img2img.gan.loop import warmup_ema

    net = nn.BatchNorm1d(1)  # a float weight and an integer buffer (num_batches_tracked)
    ema = AveragedModel(net, multi_avg_fn=warmup_ema(0.999), use_buffers=True)
    expected = 0.0
    for t in range(300):
        net.weight.data.fill_(float(t))
        net.num_batches_tracked.fill_(t)
        ema.update_parameters(net)
        expected += (1 - min(0.999, (1 + t) / (10 + t))) * (t - expected) if t else 0.0
    assert float(ema.module.weight.detach()) == pytest.approx(expected, rel=1e-5)
    assert int(ema.module.num_batches_tracked) == 299
    # A fixed 0.999 would still sit near the first weights (about 41); the warm-up follows the
    # run, and the decay reaches 0.999 once t passes about 9000 steps.
    assert 250 < expected < 299


def test_an_existing_run_is_never_overwritten(paired_photos, tmp_path):
    cfg = tiny_config(paired_photos, tmp_path / "run", steps=4)
    api.train(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        api.train(cfg)


def test_aligned_layout_trains_and_samples_from_val(aligned_photos, tmp_path):
    cfg = make_config("pix2pix", {"data": str(aligned_photos), "out": str(tmp_path / "run"), "steps": 2,
                                  "size": 32, "netG": "resnet_6blocks", "ngf": 4, "ndf": 4,
                                  "norm": "instance", "workers": 0, "save_every": 2})
    run = api.train(cfg)
    _, spec = load_generator(run)
    assert spec.arch == "resnet"
    assert (run / "samples" / "step_00000002.png").is_file()


@pytest.mark.parametrize("splits", [("Train", "val"), ("test",), ("val", "test")])
def test_an_aligned_folder_with_held_out_splits_but_no_train_is_refused_not_trained_on_whole(
        aligned_photos, tmp_path, splits):
    import shutil

    for name in splits:
        shutil.copytree(aligned_photos / ("train" if name == "Train" else "val"), tmp_path / "data" / name)
    result = runner.invoke(app, ["train", "pix2pix", "--data", str(tmp_path / "data"), "--steps", "1", "--size", "32",
                                 "--ngf", "4", "--ndf", "4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "but no train/ subfolder" in flat(result.stderr), result.output
    assert not (tmp_path / "run").exists()
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "data"), "--aligned"])
    assert checked.exit_code == 1 and "but no train/ subfolder" in flat(checked.stderr), checked.output


def test_data_check_aligned_checks_the_validation_split_that_train_reads(aligned_photos, tmp_path):
    import shutil

    import cv2

    shutil.copytree(aligned_photos, tmp_path / "data")
    odd = sorted((tmp_path / "data" / "val").iterdir())[0]
    cv2.imwrite(str(odd), cv2.imread(str(odd))[:, :-1])
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "data"), "--aligned"])
    assert checked.exit_code == 1 and f"{odd}: width" in flat(checked.stderr), checked.output


def test_pairs_with_missing_partners_or_different_sizes_are_named(tmp_path, paired_photos):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(paired_photos["a"], a)
    shutil.copytree(paired_photos["b"], b)
    (b / "coffee_0.png").unlink()
    import cv2

    cv2.imwrite(str(b / "hubble_1.png"), cv2.imread(str(b / "hubble_1.png"))[:50])
    cfg = make_config("pix2pix", {"a": str(a), "b": str(b), "out": str(tmp_path / "run"), "steps": 1})
    with pytest.raises(DataError) as err:
        api.train(cfg)
    assert "coffee_0.png: no partner" in str(err.value)
    assert "hubble_1.png is 64x64" in str(err.value) and "is 64x50" in str(err.value)


@pytest.mark.parametrize("command", ["train pix2pix", "train srgan", "data check", "translate --targets"])
def test_a_name_in_two_formats_is_named_where_files_are_paired_by_name(tmp_path, paired_photos, command):
    import shutil

    import cv2

    from helpers import save_tiny_generator

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(paired_photos["a"], a)
    shutil.copytree(paired_photos["b"], b)
    cv2.imwrite(str(b / "coffee_0.bmp"), cv2.imread(str(a / "coffee_0.png")))  # which one is the partner?
    args = {"train pix2pix": ["train", "pix2pix", "--a", a, "--b", b],
            "train srgan": ["train", "srgan", "--lr-dir", a, "--hr", b, "--scale", "2", "--pretrain-steps", 1],
            "data check": ["data", "check", a, "--b", b],
            "translate --targets": ["translate", "--model", save_tiny_generator(tmp_path / "g.safetensors"), a,
                                    tmp_path / "out", "--targets", b]}[command]
    result = runner.invoke(app, [str(arg) for arg in [*args, *(["--out", tmp_path / "run", "--steps", 1]
                                                                if command.startswith("train") else [])]])
    assert result.exit_code in (1, 2), result.output
    assert f"{b / 'coffee_0.bmp'}, {b / 'coffee_0.png'}: one name in 2 formats" in flat(result.stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_validation_metrics_are_logged_and_the_best_generator_kept(aligned_photos, tmp_path):
    cfg = make_config("pix2pix", {"data": str(aligned_photos), "out": str(tmp_path / "run"), "steps": 6,
                                  "save_every": 3, "size": 32, "netG": "unet_32", "ngf": 8, "ndf": 8,
                                  "workers": 0, "gan_loss": "lsgan", "lr": 1e-3})
    run = api.train(cfg)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r["val"] for r in records if "val" in r]
    assert len(vals) == 2
    assert {"val_l1", "val_psnr", "val_l1_identity", "val_psnr_identity"} <= vals[0].keys()
    best = [r["best"]["val_l1"] for r in records if "best" in r]
    assert best and best[-1] == min(v["val_l1"] for v in vals)
    _, spec = load_generator(run / "checkpoints" / "best_generator.safetensors")
    assert spec.arch == "unet"


def test_tensorboard_mirrors_the_log_while_training(paired_photos, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run = api.train(tiny_config(paired_photos, tmp_path / "run", steps=4, tensorboard=True))
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (run / "report.html").is_file()  # written when training ends


def test_optimiser_settings_and_ema_given_with_resume_are_used_and_the_seed_is_kept(paired_photos, tmp_path):
    run = tmp_path / "run"
    api.train(tiny_config(paired_photos, run, steps=4, save_every=2))
    messages = []

    class Recorder(Silent):
        def message(self, text):
            messages.append(text)

    args = {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]), "out": str(run), "steps": 6, "lr": 1e-3,
            "ema": 0.9}
    api.train(resolve("pix2pix", overrides=args, sets=["beta1=0.9"], resume=True), resume=True, reporter=Recorder())
    assert any("--ema 0.9: the run kept no average of G so far; it starts from the weights of step 4" in m
               for m in messages), messages
    changes = next(m for m in messages if m.startswith("settings this resume changes: "))
    assert all(change in changes for change in ("steps 4 -> 6", "lr 0.0002 -> 0.001", "beta1 0.5 -> 0.9")), changes
    state = torch.load(run / "checkpoints" / "state_step00000006.pt", weights_only=True)
    for name, optimizer in state["optimizers"].items():
        assert [group["betas"] for group in optimizer["param_groups"]] == [(0.9, 0.999)]
        assert state["schedulers"][name]["base_lrs"] == [1e-3]
    assert "G" in state["ema"]
    with pytest.raises(ConfigError, match="trained with --seed 3"):
        resolve("pix2pix", overrides={**args, "seed": 0}, resume=True)


def test_resuming_a_run_stopped_before_its_first_checkpoint_says_to_start_it_again(paired_photos, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = tiny_config(paired_photos, run, steps=2)
    (run / "config.yaml").write_text("task: pix2pix\n")
    # what the killed run had made: log lines, a sample grid and a best generator of its own
    (run / "log.jsonl").write_text('{"step": 10, "losses": {"G": 9.0}}\n{"step": 20, "losses": {"G": 8.0}}\n')
    (run / "samples").mkdir()
    (run / "samples" / "step_00000010.png").write_bytes(b"old")
    (run / "checkpoints" / "best_generator.safetensors").write_bytes(b"old")
    with pytest.raises(ConfigError, match="holds no checkpoint yet.*start it again without --resume"):
        api.train(cfg, resume=True)
    api.train(cfg)  # as the message says: a new run, with nothing of the killed one mixed in
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records and all(record["step"] <= 2 for record in records)
    assert not (run / "samples" / "step_00000010.png").exists()
    assert not (run / "checkpoints" / "best_generator.safetensors").exists()
    for state in (run / "checkpoints").glob("state_step*.pt"):
        state.write_bytes(b"cut short")
    with pytest.raises(ConfigError, match="none of the training states"):
        api.train(tiny_config(paired_photos, run, steps=4), resume=True)


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan", "cut"])
def test_data_and_a_b_together_are_refused_not_one_of_them_ignored(aligned_photos, paired_photos, task):
    with pytest.raises(ConfigError, match="--a/--b both name the training images"):
        make_config(task, {"data": str(aligned_photos), "a": str(paired_photos["a"]), "b": str(paired_photos["b"])})


def test_the_api_resume_of_a_config_built_without_the_run_refuses_changed_kept_settings(paired_photos, tmp_path):
    run = api.train(tiny_config(paired_photos, tmp_path / "run", steps=2))
    with pytest.raises(ConfigError, match="was trained with --seed 3, and a resumed run keeps it"):
        api.train(tiny_config(paired_photos, tmp_path / "run", steps=4, seed=0), resume=True)
    api.train(resolve("pix2pix", overrides={"out": str(run), "steps": 4}, resume=True), resume=True)
    assert load_generator(run)[1].step == 4
