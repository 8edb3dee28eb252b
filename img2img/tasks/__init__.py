"""One module per model family; each exposes prepare_data(cfg) and build(cfg, device, reporter)."""

from img2img.tasks import pix2pix

TASKS = {"pix2pix": pix2pix}
