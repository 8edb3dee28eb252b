"""The Quickstart's demo, run as `img2img demo` runs it: its restorations of held-out photos
must beat the degraded inputs on both PSNR and SSIM (a checkerboard texture fails SSIM)."""

from __future__ import annotations

import pytest

from img2img.demo import DEMO_STEPS, run_demo


@pytest.mark.slow
def test_the_demo_restores_held_out_photographs_on_both_measures(tmp_path):
    result = run_demo(tmp_path / "demo", steps=DEMO_STEPS, device="cpu")
    print(f"input PSNR {result.input_psnr:.2f} SSIM {result.input_ssim:.3f}; "
          f"output PSNR {result.output_psnr:.2f} SSIM {result.output_ssim:.3f}")
    assert result.grid.is_file()
    assert result.output_psnr > result.input_psnr + 1.0
    assert result.output_ssim > result.input_ssim
