"""img2img: train and run image-to-image translation GANs."""

__version__ = "0.1.0"
