"""Only what pyproject.toml cannot say: the top-level recipes/ and examples/ folders go into
the wheel as img2img/shipped/recipes and img2img/shipped/examples (see img2img/resources.py)."""

from setuptools import find_packages, setup

SHIPPED = {"img2img.shipped.recipes": "recipes", "img2img.shipped.examples.photos": "examples/photos"}

setup(
    packages=find_packages(include=["img2img", "img2img.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={"img2img.shipped.recipes": ["*.yaml"], "img2img.shipped.examples.photos": ["*.jpg"]},
)
