"""Multi-process training with torchrun + DDP on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import pytest
import yaml

from img2img import api
from img2img.config import make_config
from img2img.gan.checkpoint import load_generator

# Instance norm (per-sample statistics) and no dropout (its masks depend on the batch layout),
# so 2 processes x batch 2 compute the same gradients as 1 process x batch 4. The vanilla GAN
# loss: with pix2pix's default LSGAN some weights get gradients near 0 in these 4 steps, and Adam
# turns their float noise into one learning-rate step (1.8e-4 here; vanilla agrees to 6e-8).
NETS = ["--size", "32", "--load-size", "40", "--netG", "resnet_6blocks", "--ngf", "8", "--ndf", "8",
        "--norm", "instance", "--no-dropout", "--workers", "0", "--device", "cpu", "--seed", "5", "--gan-loss", "vanilla"]


def img2img(*args, timeout=240, threads: str | None = "1", **kwargs) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"} | {"COLUMNS": "200"}
    env |= {"OMP_NUM_THREADS": threads} if threads else {}
    return subprocess.run([sys.executable, "-m", "img2img", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kwargs)


def test_two_processes_equal_one_process_with_the_combined_batch(paired_photos, tmp_path):
    data = ["--a", paired_photos["a"], "--b", paired_photos["b"]]
    done = img2img("train", "pix2pix", *data, *NETS, "--out", tmp_path / "ddp", "--steps", 4, "--save-every", 4,
                   "--batch-size", 2, "--nproc-per-node", 2)
    assert done.returncode == 0, done.stderr
    assert "effective batch 4" in done.stderr
    config = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())
    assert config["world_size"] == 2 and config["effective_batch_size"] == 4

    single = make_config("pix2pix", {"a": str(paired_photos["a"]), "b": str(paired_photos["b"]),
                                     "out": str(tmp_path / "single"), "steps": 4, "save_every": 4, "batch_size": 4,
                                     "size": 32, "load_size": 40, "netG": "resnet_6blocks", "ngf": 8, "ndf": 8,
                                     "norm": "instance", "dropout": False, "workers": 0, "device": "cpu",
                                     "seed": 5, "gan_loss": "vanilla"})
    api.train(single)
    ddp, _ = load_generator(tmp_path / "ddp")
    one, _ = load_generator(tmp_path / "single")
    # Conv biases that feed an InstanceNorm are cancelled by it: their true gradient is 0, so
    # Adam turns float noise into +-lr steps. Every other weight must agree.
    last_bias = list(one.state_dict())[-1]
    weights = [k for k in one.state_dict() if not k.endswith(".bias") or k == last_bias]
    worst = max(float((ddp.state_dict()[k] - one.state_dict()[k]).abs().max()) for k in weights)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        output_gap = float((ddp(images) - one(images)).abs().max())
    print(f"2 x batch 2 vs 1 x batch 4 after 4 steps: weights differ by {worst:.2e}, outputs by {output_gap:.2e}")
    assert worst < 2e-5 and output_gap < 5e-4
    # The logged losses are the whole batch's (rank 0's half alone differed visibly).
    ddp_log, one_log = ([json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
                         if '"img_per_s"' in line][-1] for run in ("ddp", "single"))
    losses = [key for key in one_log if key.startswith("loss")]
    assert losses and all(abs(ddp_log[key] - one_log[key]) <= 1e-4 * max(1.0, abs(one_log[key])) for key in losses), \
        {key: (ddp_log[key], one_log[key]) for key in losses}

    # The checkpoint of a DDP run translates like any other.
    out = img2img("translate", "--model", tmp_path / "ddp", paired_photos["test_a"], tmp_path / "translated")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "translated").iterdir())) == len(list(paired_photos["test_a"].iterdir()))


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def launch_two_processes(paired_photos, run: Path, save_every: int) -> subprocess.Popen:
    """A long two-process pix2pix run through --nproc-per-node, to be stopped by the test."""
    data = ["--a", paired_photos["a"], "--b", paired_photos["b"]]
    args = ["train", "pix2pix", *data, *NETS, "--out", run, "--steps", 400, "--save-every", save_every,
            "--nproc-per-node", 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "img2img", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_a_killed_rank_fails_clearly_and_the_run_resumes(paired_photos, tmp_path):
    data = ["--a", paired_photos["a"], "--b", paired_photos["b"]]
    launcher = launch_two_processes(paired_photos, tmp_path / "run", save_every=2)
    deadline = time.time() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("state_step*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    workers = children(launcher.pid)
    assert len(workers) == 2, "torchrun should run two worker processes"
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    assert "SIGKILL" in stderr and "--resume" in stderr
    assert "exitcode" not in stderr  # torchrun's own log line: the summary says it once
    assert "Traceback" not in stderr.split("error: distributed training failed")[-1]

    resumed = img2img("train", "pix2pix", *data, *NETS, "--out", tmp_path / "run", "--steps", 12,
                      "--save-every", 2, "--nproc-per-node", 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    _, spec = load_generator(tmp_path / "run")
    assert spec.step == 12


def test_sigterm_to_the_launcher_stops_every_rank_with_one_message_and_143(paired_photos, tmp_path):
    """A batch system stops the job (scancel, a preemption) by signalling the command it ran."""
    launcher = launch_two_processes(paired_photos, tmp_path / "run", save_every=200)
    log, deadline = tmp_path / "run" / "log.jsonl", time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, stderr
    assert stderr.count("stopped by SIGTERM") == 1 and "a checkpoint was written" in stderr, stderr
    assert "distributed training failed" not in stderr and "Traceback" not in stderr and "death signal" not in stderr
    assert list((tmp_path / "run" / "checkpoints").glob("state_step*.pt"))


@pytest.mark.parametrize("task, args", [
    ("cyclegan", ["--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--pool-size", "4", "--size", "32",
                  "--load-size", "36"]),
    # CUT: the projection heads are a third DDP network, and the G phase calls G's encoder
    # through its wrapper; lazy R1 differentiates D's gradient under DDP.
    ("cut", ["--netG", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--num-patches", "16", "--netf-nc", "8",
             "--size", "32", "--load-size", "36", "--r1", "0.1", "--reg-every", "2"]),
    ("srgan", ["--scale", "2", "--netG", "msrresnet", "--ngf", "8", "--n-blocks", "1", "--netD", "unet",
               "--ndf", "8", "--perceptual", "none", "--pretrain-steps", "1", "--size", "32", "--batch-size", "2"]),
])
def test_cyclegan_cut_and_sr_train_on_two_processes(paired_photos, tmp_path, task, args):
    data = (["--a", paired_photos["a"], "--b", paired_photos["b"]] if task in ("cyclegan", "cut")
            else ["--hr", paired_photos["b"]])
    done = img2img("train", task, *data, *args, "--out", tmp_path / "run", "--steps", 3, "--save-every", 3,
                   "--workers", 0, "--device", "cpu", "--nproc-per-node", 2, threads=None)
    assert done.returncode == 0, done.stderr
    assert "OMP_NUM_THREADS" not in done.stderr  # torchrun's note on the threads it sets per process
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["world_size"] == 2
    _, spec = load_generator(tmp_path / "run")
    assert spec.step == 3 and spec.task == task
