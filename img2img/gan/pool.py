"""The image pool of Shrivastava et al. (2017), as the reference CycleGAN uses it: the
discriminator is shown a mix of current fakes and fakes from earlier generators, which damps
the oscillation between G and D.

Randomness comes from torch's global RNG, which the training loop saves and restores; the
stored images are part of the task's checkpoint state, so a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import torch


class ImagePool:
    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """Per image: while the pool fills, store and return it; once full, with probability
        0.5 return a random stored image and store the new one in its place."""
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1).item() > 0.5:
                slot = int(torch.randint(0, self.size, (1,)).item())
                out.append(self.images[slot].to(image.device, image.dtype))
                self.images[slot] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"images": [image.cpu() for image in self.images]}

    def load_state_dict(self, state: dict) -> None:
        # A run resumed with a smaller --pool-size keeps what fits.
        self.images = [image.clone() for image in state["images"][: self.size]]
