"""`translate --devices cuda:0,cuda:1`: one process per device, each taking every n-th file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TextIO

import torch

from img2img.data.header import failure
from img2img.gan.checkpoint import load_generator
from img2img.infer import InputError, Job, Options, Result, plan_outputs, prepare_output, run_jobs
from img2img.progress import Reporter, Silent
from img2img.translator import Translator


def parse_devices(spec: str) -> list[torch.device]:
    """'cuda:0,cuda:1', 'all' (every CUDA device) or a single device name."""
    if spec == "all":
        if not torch.cuda.is_available():
            raise InputError("--devices all: no CUDA GPU is available here")
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    try:
        devices = [torch.device(name.strip()) for name in spec.split(",") if name.strip()]
    except RuntimeError:
        raise InputError(f"--devices {spec!r}: use names like cuda:0,cuda:1, or all") from None
    for device in devices:
        if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
            raise InputError(f"--devices: {device} is not available here")
    return devices


def translate_sharded(model: str | Path, source: str, out_dir: str | Path, devices: list[torch.device], *,
                      options: Options, reporter: Reporter | None = None, stdin: TextIO | None = None,
                      on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """One process per device, each translating every len(devices)-th file."""
    import torch.multiprocessing as mp

    reporter = reporter or Silent()
    outputs = plan_outputs(source, Path(out_dir), stdin, options.ext)
    prepare_output(outputs, options)
    out_dir, jobs = outputs.folder, outputs.jobs
    context = mp.get_context("spawn")
    queue = context.Queue()
    shards = [list(range(rank, len(jobs), len(devices))) for rank in range(len(devices))]
    # Not daemonic: a daemonic process may not start the DataLoader workers that decode for it,
    # so the finally clause stops them instead when this process is interrupted.
    processes = [context.Process(target=_shard_main,
                                 args=(str(model), [jobs[i] for i in shard], str(out_dir), options, str(device),
                                       len(devices), queue))
                 for shard, device in zip(shards, devices)]
    results = []
    try:
        for process in processes:
            process.start()
        reporter.start(len(jobs), 0, f"translating on {len(devices)} devices")
        while len(results) < len(jobs):
            message = _next_message(queue, processes)
            if message is None:
                break
            result = Result(Job(Path(message["source"]), Path(message["relative"])),
                            Path(message["output"]) if message["output"] else None, message["error"],
                            message["ms"], message["skipped"], tuple(message["size"]) if message["size"] else None)
            results.append(result)
            if on_result:
                on_result(result)
            reporter.update(len(results))
        reporter.finish()
        for process in processes:
            process.join(timeout=10)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
    done = {str(r.job.source) for r in results}
    for job in jobs:  # a shard that died leaves its remaining files unaccounted for
        if str(job.source) not in done:
            results.append(Result(job, None, error=f"{job.source}: not translated: a device process stopped early"))
    return results


def _next_message(queue, processes) -> dict | None:
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            if not any(p.is_alive() for p in processes):
                return None


def _shard_main(model: str, jobs: list[Job], out_dir: str, options: Options, device: str, shards: int, queue) -> None:
    sent: set[str] = set()

    def send(result: Result) -> None:
        sent.add(str(result.job.source))
        queue.put({"source": str(result.job.source), "relative": str(result.job.relative),
                   "output": str(result.output) if result.output else None, "error": result.error,
                   "ms": result.milliseconds, "skipped": result.skipped,
                   "size": list(result.size) if result.size else None})

    try:
        device = torch.device(device)
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // shards))
        else:
            torch.cuda.set_device(device)
        options = Options(**{**options.__dict__, "device": device})
        module, spec = load_generator(Path(model), options.direction)
        translator = Translator(module, spec, device, options.bn_mode, options.amp, options.compile)
        run_jobs(translator, jobs, Path(out_dir), options, Silent(), send)
    except Exception as err:  # this process's boundary: its unfinished files fail, named, not the run
        for job in jobs:
            if str(job.source) not in sent:
                send(Result(job, None, error=failure(job.source, err, f"translating on {device}")))
