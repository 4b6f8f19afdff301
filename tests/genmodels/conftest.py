"""Fixtures shared by the family tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """The family tests' tensors are tiny: intra-op threads only contend on a shared machine
    (2 threads made them 10-60x slower when other processes loaded the 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
