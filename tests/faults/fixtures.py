"""Fixtures shared by the reliability tests (kept out of tests/faults/__init__.py so that the
kill test's child processes do not import pytest)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread, as the app uses on a 2-core CPU: on a shared, loaded machine two
    threads fight for the cores and tiny steps get many times slower. Import it into a test
    module to make it apply there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
