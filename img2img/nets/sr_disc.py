"""Super-resolution discriminators in the BasicSR / Real-ESRGAN state_dict layouts.

VGGStyleDiscriminator (ESRGAN; one real/fake logit per patch) and
UNetDiscriminatorSN (Real-ESRGAN; one logit per pixel, spectral-normalised). Both take
pixels in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from img2img.nets.registry import register


class VGGStyleDiscriminator(nn.Module):
    """Strided VGG stages down to about 4x4, then two linear layers: one logit per patch.

    BasicSR builds it for 128 or 256 px only: five (six) stride-2 stages take those exactly to
    4x4 for the linear layer. Here the stage count follows `input_size` (as many halvings as
    leave at least 4x4, so 96 px, SRGAN's own patch size, gets four stages and 6x6), and an
    adaptive average pool brings whatever is left to 4x4. At 128 and 256 px the pool is the
    identity and the layers, keys and outputs are BasicSR's, so its files load unchanged.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128):
        super().__init__()
        if input_size < 2:
            raise ValueError(f"vgg discriminator needs patches of at least 2 px, not {input_size}")
        self.input_size = input_size
        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(num_feat, affine=True)
        # Stage i widens in its 3x3 conv and halves the size in its 4x4 stride-2 conv; the
        # attribute names (conv{i}_0, bn{i}_0, conv{i}_1, bn{i}_1) are the BasicSR keys.
        self.num_stages = max(1, (input_size // 4).bit_length() - 1)
        widths = [num_feat * min(2**i, 8) for i in range(self.num_stages)]
        for i in range(1, self.num_stages):
            self.add_module(f"conv{i}_0", nn.Conv2d(widths[i - 1], widths[i], 3, 1, 1, bias=False))
            self.add_module(f"bn{i}_0", nn.BatchNorm2d(widths[i], affine=True))
            self.add_module(f"conv{i}_1", nn.Conv2d(widths[i], widths[i], 4, 2, 1, bias=False))
            self.add_module(f"bn{i}_1", nn.BatchNorm2d(widths[i], affine=True))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.linear1 = nn.Linear(widths[-1] * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))
        for i in range(1, self.num_stages):
            for j in (0, 1):
                conv, bn = getattr(self, f"conv{i}_{j}"), getattr(self, f"bn{i}_{j}")
                feat = self.lrelu(bn(conv(feat)))
        feat = self.lrelu(self.linear1(self.pool(feat).flatten(1)))
        return self.linear2(feat)


class UNetDiscriminatorSN(nn.Module):
    """U-Net with spectral norm: per-pixel realness, so it also judges local texture."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        nf = num_feat

        # The legacy hook API on purpose: it stores weight_orig / weight_u / weight_v, the keys
        # of the released Real-ESRGAN *_netD.pth files (the parametrize API names them otherwise).
        def sn_conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel, stride, 1, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1)
        self.conv1 = sn_conv(nf, nf * 2, 4, 2)
        self.conv2 = sn_conv(nf * 2, nf * 4, 4, 2)
        self.conv3 = sn_conv(nf * 4, nf * 8, 4, 2)
        self.conv4 = sn_conv(nf * 8, nf * 4, 3, 1)
        self.conv5 = sn_conv(nf * 4, nf * 2, 3, 1)
        self.conv6 = sn_conv(nf * 2, nf, 3, 1)
        self.conv7 = sn_conv(nf, nf, 3, 1)
        self.conv8 = sn_conv(nf, nf, 3, 1)
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(
                f"unet_sn discriminator needs height and width that are multiples of 8 "
                f"(three stride-2 stages, mirrored by the skips), got {height}x{width}"
            )
        x0 = lrelu(self.conv0(x))
        x1 = lrelu(self.conv1(x0))
        x2 = lrelu(self.conv2(x1))
        x3 = lrelu(self.conv3(x2))
        up = x3
        for conv, skip in ((self.conv4, x2), (self.conv5, x1), (self.conv6, x0)):
            up = lrelu(conv(upsample2x(up)))
            if self.skip_connection:
                up = up + skip
        out = lrelu(self.conv7(up))
        out = lrelu(self.conv8(out))
        return self.conv9(out)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@register("vgg", pixel_range="0,1", kind="discriminator")
def build_vgg(**hparams) -> VGGStyleDiscriminator:
    return VGGStyleDiscriminator(**hparams)


@register("unet_sn", pixel_range="0,1", kind="discriminator")
def build_unet_sn(**hparams) -> UNetDiscriminatorSN:
    return UNetDiscriminatorSN(**hparams)
