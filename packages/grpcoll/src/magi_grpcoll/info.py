"""What this installation of magi_grpcoll can run (``python -m magi_grpcoll.info``)."""

from __future__ import annotations

import torch

from magi_grpcoll._version import INTERFACE_VERSION, __version__

__all__ = ["info", "main"]


def info() -> dict:
    from magi_grpcoll.impl import registered_impls
    from magi_grpcoll.kernels._select import triton_available

    return {
        "magi_grpcoll": __version__,
        "interface": INTERFACE_VERSION,
        "torch": torch.__version__,
        "triton": triton_available(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "impls": {name: {"backends": sorted(i.BACKENDS), "devices": sorted(i.DEVICES)}
                  for name, i in registered_impls().items()},
    }


def main() -> None:
    for k, v in info().items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
