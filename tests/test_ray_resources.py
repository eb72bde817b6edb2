"""What a file's Ray task declares: CPUs as asked, and on a GPU its profile's share of a card."""

from __future__ import annotations

import pytest
import torch

from pipeline.cluster.resources import file_task_resources, task_profile
from pipeline.config import load_config
from pipeline.device_profiles import DeviceProfile, load_profile
from pipeline.job import JobOptions


def options(device: str, profile: str | None) -> JobOptions:
    return JobOptions(
        config=load_config("passthrough"),
        device=torch.device(device),
        device_profile=load_profile(profile) if profile else None,
    )


def test_on_cpu_a_task_takes_the_cpus_asked_and_no_gpu():
    needs = file_task_resources(options("cpu", None), cpus=2)
    assert (needs.num_cpus, needs.num_gpus) == (2, 0)


def test_on_a_big_card_several_files_share_one_gpu_as_the_profile_sizes_them():
    profile = load_profile("h100-80gb")
    needs = file_task_resources(options("cuda", "h100-80gb"), cpus=1)
    assert 0 < needs.num_gpus < 1
    assert int(1 / needs.num_gpus) == profile.memory_mb // profile.file_task_mb == 4  # four fit, no more
    assert 4 * needs.num_gpus <= 1.0


def test_a_profile_without_a_file_size_gives_each_file_a_whole_card():
    assert file_task_resources(options("cuda", "rtx3060-laptop-6gb"), cpus=1).num_gpus == 1.0


def test_a_task_plans_its_models_within_its_slice_of_the_card():
    whole = load_profile("h100-80gb")
    piece = task_profile(options("cuda", "h100-80gb"))
    assert piece.memory_mb == whole.file_task_mb
    assert piece.reserved_mb == whole.reserved_mb  # each process has its own CUDA context
    assert sum(piece.zones.values()) + piece.reserved_mb <= piece.memory_mb
    assert set(piece.zones) == set(whole.zones)
    assert task_profile(options("cpu", None)).zones == load_profile("cpu").zones  # no slice on a CPU


def test_a_file_size_outside_the_card_is_a_clear_error():
    data = {**load_profile("rtx3060-laptop-6gb").model_dump(), "file_task_mb": 100}  # under its reserved 640 MB
    with pytest.raises(ValueError, match="file_task_mb"):
        DeviceProfile.model_validate(data)


def test_a_task_needs_some_cpu():
    with pytest.raises(ValueError, match="--ray-cpus"):
        file_task_resources(options("cpu", None), cpus=0)
