"""Learning-rate multipliers against hand-computed values, and the resumable batch sampler."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from mmssl.data.sampler import ResumableBatchSampler
from mmssl.train.schedule import lr_multiplier

# Schedules. LambdaLR calls f(0) for the first optimizer step, f(1) for the second, ...


def test_warmup_is_linear_from_one_over_warmup() -> None:
    for schedule in ("cosine", "wsd", "constant"):
        f = lr_multiplier(schedule, total_steps=100, warmup_steps=4)
        assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
        assert f(4) == pytest.approx(1.0)


def test_cosine_values() -> None:
    f = lr_multiplier("cosine", total_steps=10, warmup_steps=2, min_ratio=0.1)
    # After warmup, progress = (step - 2) / 8.
    assert f(2) == pytest.approx(1.0)
    assert f(4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4)))  # 0.868198...
    assert f(4) == pytest.approx(0.8681980515)
    assert f(6) == pytest.approx(0.5 * (1 + 0.1))  # midpoint
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(3 * np.pi / 4)))
    assert f(10) == pytest.approx(0.1)
    assert f(25) == pytest.approx(0.1)  # clamped past the end


def test_cosine_without_warmup_or_floor() -> None:
    f = lr_multiplier("cosine", total_steps=4)
    assert [f(s) for s in range(5)] == pytest.approx([1.0, 0.8535533906, 0.5, 0.1464466094, 0.0])


def test_cosine_is_monotone_after_warmup() -> None:
    f = lr_multiplier("cosine", total_steps=50, warmup_steps=5, min_ratio=0.2)
    values = [f(s) for s in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert min(values) == pytest.approx(0.2)


def test_wsd_flat_then_linear_to_min() -> None:
    # 20 steps, 25 % decay: decay over the last 5 steps, from step 15.
    f = lr_multiplier("wsd", total_steps=20, warmup_steps=2, decay_fraction=0.25, min_ratio=0.2)
    assert [f(s) for s in range(2)] == pytest.approx([0.5, 1.0])
    assert [f(s) for s in range(2, 16)] == pytest.approx([1.0] * 14)
    assert [f(s) for s in range(15, 21)] == pytest.approx([1.0, 0.84, 0.68, 0.52, 0.36, 0.2])
    assert f(30) == pytest.approx(0.2)


def test_constant_after_warmup() -> None:
    f = lr_multiplier("constant", total_steps=10, warmup_steps=3, min_ratio=0.5)
    assert [f(s) for s in range(12)] == pytest.approx([1 / 3, 2 / 3] + [1.0] * 10)


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid: cosine, wsd, constant"):
        lr_multiplier("linear", 10)


def test_schedule_drives_lambda_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", total_steps=4, warmup_steps=2))
    used = []
    for _ in range(4):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup 1/2, 2/2, then cosine over the remaining 2 steps: progress 0, 0.5.
    assert used == pytest.approx([1.0, 2.0, 2.0, 1.0])


# Sampler.


def rows(batches: list[list[tuple[int, int]]]) -> list[int]:
    return [i for batch in batches for i, _ in batch]


def take(sampler: ResumableBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(islice(iter(sampler), n))


def test_sampler_is_deterministic_per_seed() -> None:
    a = take(ResumableBatchSampler(50, 8, seed=1), 20)
    b = take(ResumableBatchSampler(50, 8, seed=1), 20)
    c = take(ResumableBatchSampler(50, 8, seed=2), 20)
    assert a == b
    assert rows(a) != rows(c)
    assert all(len(batch) == 8 for batch in a)


def test_each_epoch_is_a_permutation() -> None:
    sampler = ResumableBatchSampler(50, 8, seed=0)
    assert sampler.batches_per_epoch == 6  # 48 rows; the 2-row tail is dropped
    batches = take(sampler, 18)  # three epochs
    epochs = []
    for e in range(3):
        chunk = batches[6 * e : 6 * (e + 1)]
        assert {ep for batch in chunk for _, ep in batch} == {e}
        seen = rows(chunk)
        assert len(seen) == len(set(seen)) == 48
        assert seen == sampler.epoch_order(e)[:48].tolist()
        assert sorted(sampler.epoch_order(e).tolist()) == list(range(50))
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]


def test_ranks_partition_the_global_batch() -> None:
    world, per_rank = 3, 4
    samplers = [ResumableBatchSampler(40, per_rank, seed=5, rank=r, world_size=world) for r in range(world)]
    single = ResumableBatchSampler(40, per_rank * world, seed=5)
    assert samplers[0].batches_per_epoch == single.batches_per_epoch == 3
    per_rank_batches = [take(s, 7) for s in samplers]
    for step, global_batch in enumerate(take(single, 7)):
        parts = [set(per_rank_batches[r][step]) for r in range(world)]
        for r in range(world):
            for q in range(r + 1, world):
                assert not parts[r] & parts[q], (step, r, q)
        assert set().union(*parts) == set(global_batch)
        # Rank r holds the r-th slice of the global batch, in order.
        assert sum((per_rank_batches[r][step] for r in range(world)), []) == global_batch


@pytest.mark.parametrize("start", [0, 1, 5, 6, 13])
def test_start_continues_a_fresh_sampler(start: int) -> None:
    fresh = take(ResumableBatchSampler(50, 8, seed=3, rank=1, world_size=2), start + 9)
    resumed = take(ResumableBatchSampler(50, 8, seed=3, rank=1, world_size=2, start=start), 9)
    assert resumed == fresh[start:]


def test_batch_matches_iteration() -> None:
    sampler = ResumableBatchSampler(30, 4, seed=9, rank=1, world_size=2)
    assert [sampler.batch(m) for m in range(10)] == take(sampler, 10)


def test_grad_accum_sees_the_rows_of_one_big_batch() -> None:
    """Micro-batches 2k and 2k+1 of batch 16 are micro-batch k of batch 32 (what grad_accum relies on)."""
    small, big = ResumableBatchSampler(256, 16, seed=3), ResumableBatchSampler(256, 32, seed=3)
    for k in range(3):
        assert small.batch(2 * k) + small.batch(2 * k + 1) == big.batch(k)


def test_too_few_rows_for_a_global_batch() -> None:
    with pytest.raises(ValueError, match="has 10 rows, fewer than one global batch"):
        ResumableBatchSampler(10, 4, seed=0, world_size=3)
