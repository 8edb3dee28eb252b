"""`img2img translate` starts fast: its imports leave out what only training and reports use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The task files are imported (the train commands' flags come from their configs), but they
# import these only where training uses them.
TRAINING_ONLY = ("albumentations", "kornia", "matplotlib", "torchvision", "scipy")


def test_the_translate_command_imports_no_training_libraries():
    code = ("import sys, json, img2img.cli, img2img.api, img2img.infer, img2img.sharding; "
            f"print(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded == []


def test_loading_any_registered_generator_imports_no_compiler(tmp_path):
    """Skipping the random init must not cost more than it saves: random fills on the meta
    device, for one, import torch._dynamo (seconds)."""
    from img2img.gan.checkpoint import GeneratorSpec, save_generator
    from img2img.nets import registry

    from helpers import TRAINABLE

    for arch, cases in TRAINABLE.items():
        hparams = cases[0]
        save_generator(tmp_path / f"{arch}.safetensors", registry.build(arch, **hparams),
                       GeneratorSpec(arch=arch, hparams=hparams, pixel_range=registry.get(arch).pixel_range))
    code = ("import sys, pathlib; from img2img.gan.checkpoint import load_generator; "
            f"[load_generator(p) for p in sorted(pathlib.Path({str(tmp_path)!r}).glob('*.safetensors'))]; "
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_starts_ends_it_quietly(tmp_path, name):
    """SIGINT or SIGTERM at any moment of start-up (imports take a second or more): a word,
    the signal's exit code, never a traceback."""
    import signal
    import time

    sig = getattr(signal, name)

    from helpers import save_tiny_generator

    model = save_tiny_generator(tmp_path / "g.safetensors")
    (tmp_path / "in").mkdir()
    # From 0.3 s: before that, on a loaded machine, the interpreter itself may still be starting
    # (runpy reading img2img's files), where no code of ours can catch anything.
    for delay in (0.3, 0.6, 1.0, 1.5):
        command = [sys.executable, "-m", "img2img", "translate", "--model", str(model), str(tmp_path / "in"),
                   str(tmp_path / "out")]
        started = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        started.send_signal(sig)
        _, stderr = started.communicate(timeout=60)
        assert "Traceback" not in stderr, (delay, stderr)
        assert started.returncode in (128 + sig, -sig, 2), (delay, started.returncode, stderr)


def test_ctrl_c_between_our_handlers_still_says_interrupted(monkeypatch, capsys):
    """The command line library turns a KeyboardInterrupt outside our handlers (e.g. while a
    command imports torch) into exit 130 without a word."""
    from img2img import cli_train, console, launch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "_train", interrupted)
    monkeypatch.setitem(console._told, "interrupted", False)
    monkeypatch.setattr(sys, "argv", ["img2img", "train", "pix2pix", "--data", "."])
    with pytest.raises(SystemExit) as stopped:
        launch.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("name, code, word", [("SIGTERM", 143, "stopped by SIGTERM"), ("SIGINT", 130, "interrupted")])
def test_a_signal_while_a_module_is_importing_ends_the_process_at_once(tmp_path, name, code, word):
    """Raised inside an extension's initialisation, a stop aborted the process ("terminate called
    after throwing an instance of 'pybind11::error_already_set'", exit -6, once in a CI run)."""
    (tmp_path / "slow_module.py").write_text(f"import os, signal, time\nos.kill(os.getpid(), signal.{name})\n"
                                             "time.sleep(5)\n")
    code_text = ("import signal, sys; sys.path.insert(0, sys.argv[1]); from img2img import launch; "
                 "signal.signal(signal.SIGTERM, launch._terminate); signal.signal(signal.SIGINT, launch._interrupt); "
                 "import slow_module; print('not stopped')")
    result = subprocess.run([sys.executable, "-c", code_text, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (code, word, "")
