"""What one file's Ray task declares, and the share of the machine it keeps to once running.

Ray places tasks by what they declare, not by what they use: a task that declares one CPU but
lets torch spread over every core, or that plans its models against a whole GPU it shares with
three other tasks, oversubscribes the machine Ray thinks it balanced.
"""

from __future__ import annotations

import dataclasses

from pipeline.device_profiles import DeviceProfile, detect_profile
from pipeline.job import JobOptions

GPU_SHARE_DIGITS = 4  # Ray accounts GPU fractions to 1/10000 of a device


@dataclasses.dataclass(frozen=True)
class FileTaskResources:
    """What each file's task asks Ray for."""

    num_cpus: float
    num_gpus: float


def file_task_resources(options: JobOptions, *, cpus: float) -> FileTaskResources:
    """CPUs as asked (`--ray-cpus`); on a GPU, the share of a card the device profile gives one file.

    The share is rounded down so that as many tasks as the profile promises fit on one card.
    """
    if cpus <= 0:
        raise ValueError(f"--ray-cpus {cpus:g}: must be > 0")
    if options.device.type != "cuda":
        return FileTaskResources(num_cpus=cpus, num_gpus=0.0)
    share = (options.device_profile or detect_profile(options.device)).file_task_share
    scale = 10**GPU_SHARE_DIGITS
    return FileTaskResources(num_cpus=cpus, num_gpus=max(1, int(share * scale)) / scale)


def task_profile(options: JobOptions) -> DeviceProfile:
    """The device profile a file's task plans its models with: its slice of the card."""
    profile = options.device_profile or detect_profile(options.device)
    return profile.file_task_slice()
