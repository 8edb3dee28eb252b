"""Training health: repeated non-finite losses, and a discriminator that wins outright."""

from __future__ import annotations

from collections import deque


class Health:
    """Watches a run; answers when to roll back and what to warn about."""

    def __init__(self, window: int = 100, max_nonfinite: int = 10, win_steps: int = 500, margin: float = 0.05):
        self.window, self.max_nonfinite = window, max_nonfinite
        self.win_steps, self.margin = win_steps, margin
        self.nonfinite_steps: deque[int] = deque()
        self.winning_since: int | None = None
        self.flagged = False

    def nonfinite(self, step: int) -> bool:
        """Record a non-finite loss; True when there were too many of them lately."""
        self.nonfinite_steps.append(step)
        while self.nonfinite_steps and self.nonfinite_steps[0] <= step - self.window:
            self.nonfinite_steps.popleft()
        if len(self.nonfinite_steps) >= self.max_nonfinite:
            self.nonfinite_steps.clear()
            return True
        return False

    def discriminator_wins(self, step: int, means: dict) -> str | None:
        """A warning, once, when every D has rated reals ~1 and fakes ~0 for `win_steps` steps:
        G then gets little useful gradient (mode collapse or a D that is too strong)."""
        pairs = [(k, k[: -len("real")] + "fake") for k in means if k.endswith("real") and k[: -len("real")] + "fake" in means]
        winning = bool(pairs) and all(means[r] > 1 - self.margin and means[f] < self.margin for r, f in pairs)
        if not winning:
            self.winning_since, self.flagged = None, False
            return None
        if self.winning_since is None:
            self.winning_since = step
        if step - self.winning_since >= self.win_steps and not self.flagged:
            self.flagged = True
            return (f"the discriminator has won outright since step {self.winning_since} (D(real) > {1 - self.margin:.2f}, "
                    f"D(fake) < {self.margin:.2f}): the generator learns little; consider a lower D learning rate, "
                    "lsgan or more data augmentation")
        return None
