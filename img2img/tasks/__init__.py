"""One module per model family; each exposes prepare_data(cfg) and build(cfg, device, reporter)."""

from img2img.tasks import cut, cyclegan, pix2pix, srgan

TASKS = {"pix2pix": pix2pix, "cyclegan": cyclegan, "cut": cut, "srgan": srgan}
