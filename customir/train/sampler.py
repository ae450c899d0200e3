"""A no-duplicates batch sampler over the batch the loss sees when N workers gather theirs.

sentence-transformers' ``NoDuplicatesBatchSampler`` keeps repeated texts out of one batch, where
they would be false in-batch negatives. Under DDP the data loader hands batch i to worker
i mod N and the loss gathers the N batches of a step, so duplicates *across* those N batches
still meet (a title query and an LLM query of the same chunk, the rows of a multi-hop
question). This sampler draws each step's N·B rows as one duplicate-free batch and yields it
as N consecutive batches of B: worker r gets piece r. With one worker it is the library's
sampler unchanged.

Imports sentence-transformers: import it only where training runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler, NoDuplicatesBatchSampler


class GatheredNoDuplicatesBatchSampler(DefaultBatchSampler):
    def __init__(self, dataset, batch_size: int, drop_last: bool, *, world_size: int = 1,
                 **kwargs) -> None:
        super().__init__(dataset, batch_size, drop_last, **kwargs)
        self.world_size = world_size
        self.steps = NoDuplicatesBatchSampler(dataset, batch_size * world_size, drop_last,
                                              **kwargs)

    def set_epoch(self, epoch: int) -> None:  # the trainer calls it: each epoch reshuffles
        super().set_epoch(epoch)
        self.steps.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            # a short last step still gives every worker its piece, so pieces stay aligned
            for piece in np.array_split(np.asarray(step), self.world_size):
                if len(piece):
                    yield piece.tolist()

    def __len__(self) -> int:
        return len(self.steps) * self.world_size
