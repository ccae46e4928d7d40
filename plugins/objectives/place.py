"""``place``: LIFT over difficulty-ordered groups (Han, Yoo, Yeo, CVPR 2026, arXiv 2605.19729)."""

from __future__ import annotations

from torch import Tensor

from harness import hookimpl
from harness.errors import OptionError
from harness.tunables import Choice, LogUniform
from plugins.objectives._checks import check_int
from plugins.objectives._fit import COARSE
from plugins.objectives._grouped import GroupedFit, difficulty_order
from plugins.objectives.lift import LIFT


class PLACE(LIFT):
    """PLACE: LIFT with several fitting sets per (sample, channel), grouped by difficulty.

    Per (sample, channel), the H*W elements are ordered by the key ``sg((t - s)^2)``
    (ascending) and cut into consecutive groups of ``group_size`` elements (the paper's
    K = 16 is elements per group).  The released code needs H*W divisible by K; here the
    remainder joins the last group, whose moments use its true count, and only
    ``H*W < group_size`` is an error.  Each group is fitted as in LIFT (centred population
    moments); ``coarse`` and ``w`` average over groups (every group counts once), ``fine``
    averages over all elements; ``loss = coarse + w * fine``.  With one group covering
    H*W it equals ``lift``.  The fit runs as one autograd function (see ``_grouped``).
    """

    name = "place"
    tunables = {
        "weight": LogUniform(0.1, 10.0),
        "coarse": Choice(COARSE),
        "group_size": Choice((4, 8, 16, 32)),
    }

    def __init__(self, *, group_size: int = 16, coarse: str = "l1", eps: float = 1e-6):
        group_size = check_int(
            self.name, "group_size", group_size, minimum=2, why="a line fit needs two elements"
        )
        super().__init__(coarse=coarse, eps=eps)
        self.group_size = group_size

    def fitting_sets(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        s2, t2 = super().fitting_sets(s, t)
        if s2.shape[1] < self.group_size:
            h, w = s.shape[-2:]
            raise OptionError(
                f"objective 'place': H*W = {h}x{w} = {h * w} elements per channel is fewer than "
                f"group_size = {self.group_size}; use group_size <= {h * w}"
            )
        return s2, t2

    def fit(self, s2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """LIFT's fit per difficulty-ordered group of each row (one autograd function)."""
        order = difficulty_order((t2 - s2.detach()).square_())
        return GroupedFit.apply(s2, t2, order, self.group_size, self.eps, self.coarse)


@hookimpl
def register_objectives(register):
    register(PLACE)
