"""Visual reports: a run's `report.html` and a translate job's `gallery.html`, plus optional
TensorBoard scalars.

- `write_run_report(RUN)` writes RUN/report.html and RUN/plots/*.png: the loss curves, the
  discriminators' D(real)/D(fake) probabilities, validation metrics, the newest sample grids
  and the config. Images are referenced by relative paths inside the run folder, so the folder
  can be copied or served as it is.
- `translate_gallery(results, OUTPUT, targets)` writes OUTPUT/gallery.html: one row per image,
  input | output | target, with PSNR/SSIM when targets are given. Thumbnails are embedded (JPEG,
  base64) so that no extra image file lands in OUTPUT, where `eval` or a later `translate`
  would pick it up; each thumbnail links to its full-size file.
- `TensorBoardWriter` mirrors log.jsonl records as scalars; `export_tensorboard(RUN)` replays a
  finished run's log into RUN/tensorboard/.

Nothing is written outside the folder asked for. Plots are drawn on matplotlib's Agg canvas
through `Figure` (no pyplot), so a report never changes the caller's matplotlib backend. Every
file name is HTML-escaped; the pages hold no scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
import yaml

from img2img.config import ConfigError, require_folder
from img2img.data.header import ImageError
from img2img.data.images import files_by_stem, read_image, write_bytes_atomic
from img2img.gan.checkpoint import saved_steps
from img2img.gan.record import TensorBoardWriter, fmt, is_number
from img2img.hints import install_hint
from img2img.metrics import SSIM_WINDOW

REPORT_FILE = "report.html"
GALLERY_FILE = "gallery.html"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
REPORT_SAMPLES = 12  # newest sample grids shown in full; older ones are linked
GALLERY_MAX_ROWS = 500  # embedded thumbnails make the page grow ~40 KB per row
THUMB_PX = 256
MATPLOTLIB_MISSING = "plots need matplotlib: {}"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f0f0f0; text-align: center; } td.name, th.name { text-align: left; }
img { max-width: 100%; image-rendering: auto; }
figure { display: inline-block; margin: 0 12px 16px 0; } figcaption { color: #555; font-size: 12px; }
td.cell { text-align: center; }
td.cell img { height: 192px; width: auto; max-width: 320px; object-fit: contain; display: block; margin: 0 auto; }
td.cell span { display: block; }
.note { color: #8a5a00; } .error { color: #b00020; } .muted { color: #777; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow-x: auto; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def href(target: Path, page_dir: Path) -> str:
    """A relative URL from `page_dir` to `target`, percent-encoded (and so safe in attributes)."""
    relative = Path(os.path.relpath(Path(target).absolute(), Path(page_dir).absolute()))
    return esc(urllib.parse.quote(relative.as_posix()))


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def table(headers: list[str], rows: list[list[str]], name_columns: int = 1) -> str:
    """`rows` hold HTML already escaped by the caller."""
    head = "".join(f"<th class=\"name\">{esc(h)}</th>" if i < name_columns else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class=\"name\">{c}</td>" if i < name_columns else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---- the training log ---------------------------------------------------------------------


@dataclass
class RunLog:
    train: list[dict] = field(default_factory=list)  # per-step records, by step
    val: list[dict] = field(default_factory=list)  # {"step", "val": {...}} records, by step
    bad_lines: int = 0


def read_log(run_dir: Path) -> RunLog:
    """log.jsonl, one record per step: a resumed run logs some steps again, and the later
    record wins; a line cut short by a crash is counted and skipped."""
    path = Path(run_dir) / "log.jsonl"
    log, train, val = RunLog(), {}, {}
    if not path.is_file():
        return log
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.bad_lines += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            log.bad_lines += 1
            continue
        if isinstance(record.get("val"), dict):
            val[record["step"]] = record
        elif "best" not in record:  # a new best is noted at a step that has its losses too
            train[record["step"]] = record
    log.train = [train[s] for s in sorted(train)]
    log.val = [val[s] for s in sorted(val)]
    return log


def loss_keys(records: list[dict]) -> list[str]:
    return _keys(records, lambda k: k.startswith("loss"))


def probability_keys(records: list[dict]) -> list[str]:
    """D(real)/D(fake): D_real, D_fake for one discriminator, D_A_real, D_B_fake... for CycleGAN."""
    return _keys(records, lambda k: not k.startswith("loss") and k.endswith(("real", "fake")))


def _keys(records: list[dict], wanted) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        keys.update((k, None) for k, v in record.items() if wanted(k) and is_number(v))
    return list(keys)


def series(records: list[dict], key: str, nested: str | None = None) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = (record.get(nested) or {}).get(key) if nested else record.get(key)
        if is_number(value):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


# ---- plots ----------------------------------------------------------------------------------


def _figure(panels: int, width: float = 4.2, height: float = 2.8):
    from matplotlib.figure import Figure

    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    write_bytes_atomic(path, buffer.getvalue())


def plot_losses(records: list[dict], path: Path) -> bool:
    """One panel per loss: their scales differ by orders of magnitude (L1 x 100 vs GAN)."""
    keys = loss_keys(records)
    if not keys:
        return False
    figure, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        ax.plot(*series(records, key), linewidth=1.2)
        ax.set_title(key.removeprefix("loss_"), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _save(figure, path)
    return True


def plot_probabilities(records: list[dict], path: Path) -> bool:
    """D(real) and D(fake) on one axis: a gap that closes to 0/1 means one player has won."""
    keys = probability_keys(records)
    if not keys:
        return False
    figure, (ax,) = _figure(1, width=7, height=3.4)
    for key in keys:
        ax.plot(*series(records, key), label=key, linewidth=1.2, linestyle="-" if key.endswith("real") else "--")
    ax.axhline(0.5, color="#999", linewidth=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("probability")
    ax.set_title("discriminator outputs: D(real) and D(fake)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(figure, path)
    return True


def plot_validation(val_records: list[dict], path: Path) -> bool:
    """One panel per metric; an SR run's `X_bicubic` baseline is drawn dashed on X's panel."""
    keys = _keys([r["val"] for r in val_records], lambda k: True)
    if not keys:
        return False
    baselines = {k.removesuffix("_bicubic"): k for k in keys if k.endswith("_bicubic") and k.removesuffix("_bicubic") in keys}
    panels = [k for k in keys if k not in baselines.values()]
    figure, axes = _figure(len(panels))
    for ax, key in zip(axes, panels):
        ax.plot(*series(val_records, key, nested="val"), marker="o", markersize=3, linewidth=1.2, label=key)
        if key in baselines:
            ax.plot(*series(val_records, baselines[key], nested="val"), linestyle="--", linewidth=1.0, label="bicubic")
            ax.legend(fontsize=8)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _save(figure, path)
    return True


def write_plots(run_dir: Path, log: RunLog) -> tuple[dict[str, Path], list[str]]:
    """name -> PNG path of each plot drawn, and notes on what could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}, [MATPLOTLIB_MISSING.format(install_hint("eval"))]
    folder = Path(run_dir) / PLOTS_DIR
    plots = {}
    for name, draw, records in (("losses", plot_losses, log.train),
                                ("d_probabilities", plot_probabilities, log.train),
                                ("validation", plot_validation, log.val)):
        if records and draw(records, folder / f"{name}.png"):
            plots[name] = folder / f"{name}.png"
    return plots, []


# ---- the run report -------------------------------------------------------------------------


@dataclass
class RunReport:
    path: Path
    plots: dict[str, Path]
    notes: list[str]


def write_run_report(run_dir: str | Path) -> RunReport:
    """(Re)write RUN/report.html and RUN/plots/ from the run's log, samples and config."""
    run_dir = Path(run_dir)
    require_folder(run_dir)
    if not any((run_dir / name).exists() for name in ("log.jsonl", "samples", "config.yaml")):
        raise ConfigError(f"{run_dir}: not a run folder (no log.jsonl, samples/ or config.yaml)")
    log = read_log(run_dir)
    plots, notes = write_plots(run_dir, log)
    if log.bad_lines:
        notes.append(f"{log.bad_lines} unreadable line(s) in log.jsonl were skipped")
    config_text = (run_dir / "config.yaml").read_text(errors="replace") if (run_dir / "config.yaml").is_file() else ""
    config = _parse_config(config_text)
    body = _run_summary(run_dir, config, log)
    body += [f"<p class=\"note\">{esc(n)}</p>" for n in notes]
    body += _validation_section(log) + _plots_section(run_dir, plots) + _samples_section(run_dir, config.get("task"))
    body += _warnings_section(log)
    if config_text:
        body.append(f"<h2>Configuration</h2><details><summary>config.yaml</summary><pre>{esc(config_text)}</pre></details>")
    path = run_dir / REPORT_FILE
    write_bytes_atomic(path, page(f"img2img run {run_dir.name}", body).encode())
    return RunReport(path, plots, notes)


def _parse_config(text: str) -> dict:
    try:
        config = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def _run_summary(run_dir: Path, config: dict, log: RunLog) -> list[str]:
    body = [f"<h1>Run {esc(run_dir.absolute().name)}</h1>"]
    facts = [f"task <b>{esc(config.get('task', '?'))}</b>"]
    last = log.train[-1] if log.train else None
    saved = max(saved_steps(run_dir / "checkpoints"), default=0)  # a run stopped between log lines saved it
    if last or saved:
        total, logged = config.get("steps"), last["step"] if last else 0
        step = f"step <b>{max(logged, saved)}</b>" + (f" of {esc(total)}" if total else "")
        facts.append(step + (f" (logged to step {logged}; every --log-every steps)" if saved > logged else ""))
        if last and is_number(last.get("img_per_s")):
            facts.append(f"{last['img_per_s']:.1f} img/s")
    pixel_only = is_number(config.get("steps")) and config.get("steps", 0) <= config.get("pretrain_steps", -1)
    for key in ("netG", "size", "batch_size") if pixel_only else ("netG", "netD", "gan_loss", "size", "batch_size"):
        if key in config:
            facts.append(f"{esc(key)} {esc(config[key])}")
    body.append(f"<p>{' · '.join(facts)}</p>")
    if last:
        keys = loss_keys([last]) + probability_keys([last])
        body.append("<h2>Latest logged values</h2>")
        body.append(table(["step", *keys], [[str(last["step"]), *(esc(fmt(last[k])) for k in keys)]]))
    return body


def _validation_section(log: RunLog) -> list[str]:
    if not log.val:
        return []
    keys = _keys([r["val"] for r in log.val], lambda k: True)
    rows = [[str(r["step"]), *(esc(fmt(r["val"].get(k, ""))) for k in keys)] for r in log.val[-20:]]
    return ["<h2>Validation</h2>", table(["step", *keys], rows)]


def _plots_section(run_dir: Path, plots: dict[str, Path]) -> list[str]:
    if not plots:
        return ["<h2>Training curves</h2><p class=\"muted\">nothing logged yet</p>"]
    captions = {"losses": "losses", "d_probabilities": "D(real) / D(fake)", "validation": "validation metrics"}
    figures = [f"<figure><img src=\"{href(path, run_dir)}\" alt=\"{esc(captions[name])}\">"
               f"<figcaption>{esc(captions[name])}</figcaption></figure>" for name, path in plots.items()]
    return ["<h2>Training curves</h2>", *figures]


def _samples_section(run_dir: Path, task: str | None) -> list[str]:
    from img2img.tasks import TASKS

    samples = sorted((run_dir / "samples").glob("step_*.png"), reverse=True) if (run_dir / "samples").is_dir() else []
    if not samples:
        return []
    caption = TASKS[task].sample_caption if task in TASKS else "rows as the task draws them"
    body = [f"<h2>Samples</h2><p class=\"muted\">newest first; {esc(caption)}</p>"]
    for path in samples[:REPORT_SAMPLES]:
        body.append(f"<figure><img src=\"{href(path, run_dir)}\" alt=\"{esc(path.name)}\">"
                    f"<figcaption>{esc(path.stem)}</figcaption></figure>")
    older = samples[REPORT_SAMPLES:]
    if older:
        links = ", ".join(f"<a href=\"{href(p, run_dir)}\">{esc(p.stem)}</a>" for p in older)
        body.append(f"<p>older: {links}</p>")
    return body


def _warnings_section(log: RunLog) -> list[str]:
    warned = [r for r in log.train if isinstance(r.get("warning"), str)]
    if not warned:
        return []
    items = "".join(f"<li>step {r['step']}: {esc(r['warning'])}</li>" for r in warned[-10:])
    return [f"<h2>Training warnings</h2><ul class=\"note\">{items}</ul>"]


# ---- galleries --------------------------------------------------------------------------------


@dataclass
class Cell:
    path: Path | None  # None: no such image (e.g. no target)
    thumb: str | None = None  # data: URI; None with a path: unreadable, or past the rows shown
    size: tuple[int, int] | None = None  # width, height


@dataclass
class GalleryRow:
    name: str
    cells: list[Cell]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    unmeasured: str | None = None  # why an output with a target has no metrics


def thumbnail(rgb: torch.Tensor, max_px: int = THUMB_PX) -> str:
    """A data: URI holding a JPEG that fits in max_px x max_px."""
    hwc = np.ascontiguousarray((rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    height, width = hwc.shape[:2]
    scale = min(1.0, max_px / max(height, width))
    if scale < 1.0:
        hwc = cv2.resize(hwc, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(hwc[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ImageError("cannot encode a thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def make_cell(path: Path | None, image: torch.Tensor | None) -> Cell:
    """A cell for `path`, whose decoded pixels (or None: unreadable) are `image`."""
    if path is None or image is None:
        return Cell(path)
    return Cell(path, thumbnail(image), (image.shape[2], image.shape[1]))


def _cell_html(cell: Cell, page_dir: Path) -> str:
    if cell.path is None:
        return "<td class=\"cell muted\">-</td>"
    name = esc(cell.path.name)
    if cell.thumb is None:
        return f"<td class=\"cell error\">{name}: unreadable</td>"
    return (f"<td class=\"cell\"><a href=\"{href(cell.path, page_dir)}\" title=\"{esc(cell.path)}\">"
            f"<img src=\"{cell.thumb}\" alt=\"{name}\"></a><span class=\"muted\">{cell.size[0]}x{cell.size[1]}</span></td>")


def write_gallery(out_dir: str | Path, rows: list[GalleryRow], columns: list[str], title: str,
                  notes: Iterable[str] = ()) -> Path:
    """OUTPUT/gallery.html: one row per image, one cell per column, then its metrics; the means
    cover every row, the table shows the first GALLERY_MAX_ROWS."""
    out_dir = Path(out_dir)
    metric_names = list(dict.fromkeys(k for row in rows for k in row.metrics))
    body = [f"<h1>{esc(title)}</h1>"]
    body += [f"<p class=\"note\">{esc(n)}</p>" for n in notes]
    if metric_names:
        body.append(_means_table(rows, metric_names))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns) + "".join(f"<th>{esc(m)}</th>" for m in metric_names)
    body.append(f"<table><tr><th class=\"name\">name</th>{head}</tr>")
    body += [_row_html(row, len(columns), metric_names, out_dir) for row in rows[:GALLERY_MAX_ROWS]]
    body.append("</table>")
    if len(rows) > GALLERY_MAX_ROWS:
        body.append(f"<p class=\"note\">showing the first {GALLERY_MAX_ROWS} of {len(rows)} images</p>")
    path = out_dir / GALLERY_FILE
    write_bytes_atomic(path, page(title, body).encode())
    return path


def _means_table(rows: list[GalleryRow], names: list[str]) -> str:
    cells = []
    for name in names:
        values = [r.metrics[name] for r in rows if name in r.metrics]
        cells.append(esc(fmt(sum(values) / len(values))) if values else "-")
    return table(["images measured", *names], [[str(sum(1 for r in rows if r.metrics)), *cells]])


def _row_html(row: GalleryRow, columns: int, metric_names: list[str], out_dir: Path) -> str:
    name = f"<td class=\"name\">{esc(row.name)}</td>"
    if row.error:
        return f"<tr>{name}<td class=\"name error\" colspan=\"{columns + len(metric_names)}\">{esc(row.error)}</td></tr>"
    cells = "".join(_cell_html(cell, out_dir) for cell in row.cells)
    values = "".join(f"<td>{esc(fmt(row.metrics[m])) if m in row.metrics else '-'}</td>" for m in metric_names)
    return f"<tr>{name}{cells}{values}</tr>"


def _try_read(path: Path | None) -> torch.Tensor | None:
    if path is None:
        return None
    try:
        return read_image(path).rgb
    except Exception:  # shown as unreadable in the gallery; translate has named it already
        return None


def translate_gallery(results: list, out_dir: str | Path, targets: str | Path | None = None,
                      say: Callable[[str], None] = lambda note: None) -> Path:
    """OUTPUT/gallery.html for the Results of `infer.translate`: input | output (| target),
    with PSNR and SSIM (RGB) of each output against its target when `targets` is given; what
    could not be measured is noted on the page and given to `say`. Each image is decoded once,
    measured and shrunk to its thumbnail right away, so memory stays flat however many images
    there are."""
    out_dir = Path(out_dir)
    target_files = _targets_by_key(Path(targets)) if targets is not None else None
    rows = [_translate_row(result, target_files, shown=i < GALLERY_MAX_ROWS)
            for i, result in enumerate(sorted(results, key=lambda r: r.job.relative.as_posix()))]
    notes = []
    if target_files is not None:
        missing = sum(1 for r in rows if not r.error and r.cells[-1].path is None)
        if missing:
            notes.append(f"{missing} output(s) have no target of the same relative path and stem in {targets}")
        if unmeasured := [r for r in rows if r.unmeasured]:
            notes.append(f"{len(unmeasured)} output(s) not measured in full against their targets, e.g. "
                         f"{unmeasured[0].name}: {unmeasured[0].unmeasured}")
        for note in notes:
            say(note)
        if any(r.metrics for r in rows):
            notes.append("PSNR (dB) and SSIM on RGB, no border crop; `img2img eval` measures more")
    columns = ["input", "output"] + (["target"] if target_files is not None else [])
    return write_gallery(out_dir, rows, columns, f"img2img translate: {out_dir.absolute().name}", notes)


def _translate_row(result, target_files: dict[str, Path] | None, shown: bool) -> GalleryRow:
    from img2img.evaluate import paired_values

    name = result.job.relative.as_posix()
    if result.error or result.output is None:
        return GalleryRow(name, [], error=result.error or "no output was written")
    paths = [result.job.source, result.output]
    if target_files is not None:
        paths.append(target_files.get(result.job.relative.with_suffix("").as_posix()))
    # Past the rows shown, only the metrics need pixels (of the output and the target).
    images = {i: _try_read(p) for i, p in enumerate(paths) if shown or (i > 0 and target_files is not None)}
    row = GalleryRow(name, [make_cell(p, images.get(i)) if shown else Cell(p) for i, p in enumerate(paths)])
    output, target = images.get(1), images.get(2)
    if output is None or target is None:
        return row
    if output.shape != target.shape:
        row.unmeasured = (f"the output is {output.shape[2]}x{output.shape[1]} px, the target "
                          f"{target.shape[2]}x{target.shape[1]} px")
        return row
    small = min(output.shape[1:]) < SSIM_WINDOW
    if small:
        row.unmeasured = f"{output.shape[2]}x{output.shape[1]} px is smaller than SSIM's window (PSNR only)"
    row.metrics = paired_values(output, target, ("psnr",) if small else ("psnr", "ssim"))
    return row


def _targets_by_key(folder: Path) -> dict[str, Path]:
    require_folder(folder, "--targets")
    return files_by_stem(folder)  # a name in several formats is refused before translating (cli)


# ---- TensorBoard ------------------------------------------------------------------------------


def export_tensorboard(run_dir: str | Path) -> Path:
    """Replay RUN/log.jsonl into RUN/tensorboard/, replacing event files an earlier export wrote
    (the log holds everything they held)."""
    run_dir = Path(run_dir)
    log = read_log(run_dir)
    folder = run_dir / TENSORBOARD_DIR
    if folder.is_dir():
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
    writer = TensorBoardWriter(run_dir)  # the writer training uses, so both give the same tags
    try:
        for record in sorted(log.train + log.val, key=lambda r: r["step"]):
            writer.write(record)
    finally:
        writer.close()
    return folder
