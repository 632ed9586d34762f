"""The machine a timing ran on, recorded with it."""

import os

import pytest

from torch_imdb.machine import machine_info


def test_machine_info_tells_processors_apart():
    """Virtual machines name different processors alike ("AMD EPYC"): the family/model numbers tell them apart."""
    info = machine_info()
    assert info["cpu_count"] == os.cpu_count() and info["torch_threads"] >= 1
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo on this system: the family/model numbers come from it")
    family, model = info["cpu_family_model"].split("/")
    assert family.isdigit() and model.isdigit() and isinstance(info["avx512"], bool)
