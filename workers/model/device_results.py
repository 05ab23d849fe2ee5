"""Results of a forward pass on their way back from the device, without stopping the thread that queued it.

``tensor.cpu()`` blocks its thread until the GPU has finished everything queued before it, so a thread
that runs forward passes one after another leaves the GPU idle from the end of one pass until it has
built, copied and queued the next one.  :class:`DeviceResults` queues the copies instead (into pinned
host memory, behind the kernels that compute them, on the same stream) and records an event after them;
:meth:`DeviceResults.wait`, on any thread, blocks until that event.  The forward thread is then free to
queue the next pass while this one's kernels still run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class DeviceResults:
    """Host copies of ``tensors`` (queued at construction); :meth:`wait` hands them over as numpy arrays.

    Safe to wait on from another thread than the one that built it.  Off CUDA the copies are made at
    once and :meth:`wait` returns without blocking.
    """

    def __init__(self, tensors: Mapping[int, torch.Tensor]) -> None:
        import torch

        self._event: torch.cuda.Event | None = None
        if not any(tensor.is_cuda for tensor in tensors.values()):
            self._host = {key: tensor.cpu() for key, tensor in tensors.items()}
            return
        self._host = {}
        for key, tensor in tensors.items():
            # Pinned, so that the copy is asynchronous; the caching host allocator reuses these
            # buffers once the event recorded after their copy has passed.
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self._host[key] = host
        self._event = torch.cuda.Event()
        self._event.record()

    def wait(self) -> dict[int, np.ndarray]:
        """Block until the copies are done (and with them every kernel queued before them); the arrays.

        An error of the device's queued work (an illegal memory access, a device-side assert) is raised here.
        """
        if self._event is not None:
            self._event.synchronize()
        return {key: host.numpy() for key, host in self._host.items()}
