"""Devices and numerics: what runs where, at which precision, and what a run records of it.

`trainer.precision` is float32 only (`check_precision`): under 16-mixed the divergence guard
would see scaled gradients, and importance log-weights in half precision lose 0.06-0.5 nat.
The numerics policy (TF32, float64 sums) is in `aevb.numerics`. The config checks and the
SLURM resolvers load without torch (aevb-train's command-line check uses them); the functions
that ask the hardware import torch when called.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import ListConfig, OmegaConf

from aevb.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L

#: trainer.precision values aevb accepts (Lightning's spellings of full float32)
PRECISIONS = ("32-true", "32", 32)
#: trainer.accelerator values that need a GPU (Lightning's names)
GPU_ACCELERATORS = ("gpu", "cuda", "mps")


def check_precision(precision: Any) -> None:
    """Refuse anything but float32 training in one line (see the module's policy)."""
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(
            "trainer.precision",
            "32-true (float32; mixed and half precision are not supported: the divergence guard "
            "would see scaled gradients and importance log-weights lose up to 0.5 nat)",
            precision,
        )


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Config checks of the `trainer` group that need no hardware (safe on a login node)."""
    check_precision(trainer.get("precision"))


def gpu_available(accelerator: str) -> bool:
    """Whether this machine has the device `accelerator` asks for."""
    import torch

    if accelerator == "mps":
        return torch.backends.mps.is_available()
    if accelerator == "cuda":
        return torch.cuda.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def check_accelerator(accelerator: Any, key: str = "trainer.accelerator") -> None:
    """One line instead of Lightning's traceback when a GPU is asked for on a machine without."""
    if accelerator in GPU_ACCELERATORS and not gpu_available(accelerator):
        import torch

        raise ConfigError(
            key,
            f"cpu or auto on this machine ({platform.node()}: torch {torch.__version__} "
            "sees no CUDA or MPS device)",
            accelerator,
        )


def runtime_record(trainer: L.Trainer) -> dict[str, Any]:
    """Where and how a run computed: recorded in metrics.json and eval.json."""
    import torch

    device = trainer.strategy.root_device
    name = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": name,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "torch": torch.__version__,
    }


# ----- SLURM: sbatch resources that follow trainer.devices / trainer.num_nodes -----------------
def slurm_tasks(devices: Any) -> int:
    """Resolver `${aevb.slurm_tasks:${trainer.devices}}`: one SLURM task per device."""
    ids = isinstance(devices, list | tuple | ListConfig) and len(devices) > 0
    if isinstance(devices, bool) or not ((isinstance(devices, int) and devices > 0) or ids):
        raise ConfigError(
            "trainer.devices",
            "a number of devices per node > 0 (or a list of device ids) with "
            "hydra/launcher=slurm: sbatch needs the count, -1/auto cannot be requested",
            devices,
        )
    return len(devices) if ids else devices


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """Resolver `${aevb.slurm_gpus:${trainer.accelerator},${trainer.devices}}`: GPUs per node
    (none for accelerator=cpu)."""
    tasks = slurm_tasks(devices)
    return None if accelerator == "cpu" else tasks


OmegaConf.register_new_resolver("aevb.slurm_tasks", slurm_tasks, replace=True)
OmegaConf.register_new_resolver("aevb.slurm_gpus", slurm_gpus, replace=True)
