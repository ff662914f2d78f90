"""Saved-activation bytes count what a saved tensor references, not the whole storage behind it.

A batch sliced from a cached dataset (``cache[:32]``) is a view of the whole cache's storage;
``storage.nbytes()`` would charge the step for every cached image.
"""

from __future__ import annotations

import torch
from torch import nn

from tlhelpers.simulator.measure import _storage_key, referenced_bytes, referenced_span, saved_bytes


def test_a_view_counts_its_own_bytes():
    cache = torch.randn(500, 8, 4, 4)
    batch = cache[:32]
    assert referenced_span(batch) == (0, batch.nbytes)
    assert referenced_span(cache[100:132]) == (100 * 8 * 16 * 4, 132 * 8 * 16 * 4)
    assert referenced_bytes([_storage_key(batch)]) == 32 * 8 * 16 * 4 < cache.untyped_storage().nbytes()


def test_channels_last_slices_and_empty_tensors():
    cache = torch.randn(50, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    assert referenced_span(cache[:10]) == (0, cache[:10].nbytes)
    assert referenced_span(cache[:0]) == (0, 0)


def test_views_of_one_storage_are_counted_once_as_their_union():
    x = torch.randn(100)
    keys = [_storage_key(x[:40]), _storage_key(x[20:60]), _storage_key(x[:40].view(4, 10)), _storage_key(x[90:])]
    assert referenced_bytes(keys) == (60 + 10) * 4
    assert referenced_bytes([_storage_key(x), _storage_key(torch.randn(3))]) == (100 + 3) * 4


def test_a_step_on_a_slice_of_a_cache_saves_what_a_step_on_a_copy_saves():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    cache = torch.randn(500, 8, 4, 4)

    def step(inputs):
        return lambda: net(inputs).square().mean()

    on_view, on_copy = saved_bytes(step(cache[:32]), exclude=net), saved_bytes(step(cache[:32].clone()), exclude=net)
    assert on_view == on_copy
    # the first convolution saves its input (32 images), the ReLU its output, the second convolution its input
    # (the same storage as ReLU's output, counted once), the square its input
    assert on_view == (32 * 8 + 32 * 16 + 32 * 4) * 16 * 4
    assert on_view < cache.nbytes


def test_parameters_and_views_of_them_are_left_out():
    linear = nn.Linear(6, 3)
    x = torch.randn(5, 6)
    counted = saved_bytes(lambda: linear(x).sum(), exclude=linear)
    assert counted == x.nbytes                  # addmm saves x and weight.t(), a view of a parameter
