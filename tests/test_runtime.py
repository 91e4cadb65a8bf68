"""Host-side runtime settings."""

import resource

import pytest
import torch

from mt.runtime import keep_freed_memory


def _faults_of_a_fresh_64mb_tensor() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20)  # 64 MB
    x.fill_(1.0)  # first touch of every page
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_without_faulting_pages_in_again():
    if not keep_freed_memory():
        pytest.skip("needs Linux with glibc")
    _faults_of_a_fresh_64mb_tensor()  # the heap grows once
    # 64 MB is 16,384 pages of 4 KB: handed back and mapped again, each would fault anew.
    assert _faults_of_a_fresh_64mb_tensor() < 1000
