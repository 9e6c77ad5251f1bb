"""BatchPool (data/batch_pool.py): loader workers stack batches into reused shared-memory blocks, and a block is
reused only once the main process is done with it: the batches stay the ones workers=0 gives, across epochs, an
abandoned iteration, and a consumer that keeps every batch."""
from types import SimpleNamespace

import pytest
import torch

from pgt_train.config import DataConfig
from pgt_train.data import batch_pool, build_loaders
from pgt_train.dist import DistInfo


@pytest.fixture
def as_worker(monkeypatch):
    """BatchPool.stack as if called in loader worker 0."""
    monkeypatch.setattr(batch_pool, "get_worker_info", lambda: SimpleNamespace(id=0))


def batch(value: int, n: int = 2) -> list[torch.Tensor]:
    return [torch.full((3, 4, 4), value + k, dtype=torch.uint8) for k in range(n)]


def test_a_block_is_reused_only_once_released_or_from_an_earlier_iteration(as_worker):
    pool = batch_pool.BatchPool(workers=1, slots=2)
    first, lease1 = pool.stack(batch(10))
    second, lease2 = pool.stack(batch(20))
    assert {lease1, lease2} == {(0, 0), (0, 1)} and first.is_shared()
    third, lease3 = pool.stack(batch(30))  # both blocks held: a new block, nothing overwritten
    assert lease3 is None and int(pool.fresh[0]) == 1 and third.is_shared()
    assert torch.equal(first[0], batch(10)[0]) and torch.equal(second[1], batch(20)[1])
    pool.release(lease1)
    again, lease = pool.stack(batch(40))
    assert lease == lease1 and again.data_ptr() == first.data_ptr()  # the released block, reused
    assert torch.equal(second[1], batch(20)[1])  # the held one untouched
    pool.next_iteration()  # blocks filled before it are free: their batches were dropped with the iteration
    assert pool.stack(batch(50))[1] is not None and pool.stack(batch(60))[1] is not None
    assert int(pool.fresh[0]) == 1


def test_a_larger_or_other_shaped_batch_gets_a_new_block(as_worker):
    pool = batch_pool.BatchPool(workers=1, slots=1)
    small, lease = pool.stack(batch(1, n=2))
    pool.release(lease)
    big, lease = pool.stack(batch(2, n=3))
    assert big.shape == (3, 3, 4, 4) and lease == (0, 0) and torch.equal(big[2], batch(2, n=3)[2])
    pool.release(lease)
    short, _ = pool.stack(batch(3, n=1))  # a shorter one (validation's last batch) is a view of the block
    assert short.shape == (1, 3, 4, 4) and short.data_ptr() == big.data_ptr()


def test_in_the_main_process_nothing_is_shared():
    images, lease = batch_pool.BatchPool(workers=0, slots=2).stack(batch(0))
    assert lease is None and not images.is_shared()


def loaders(root, workers: int):
    cfg = DataConfig(root=str(root), batch_size=3, workers=workers, img_size=24)
    return build_loaders(cfg, num_classes=3, seed=4, dist=DistInfo(), channels_last=False)


def epoch(loader, number: int, stop_after: int = None) -> list:
    loader.set_epoch(number)
    out = []
    for images, targets in loader:
        out.append((images, targets))
        if len(out) == stop_after:
            break
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_reused_blocks_give_workers_0s_batches_across_epochs_and_an_abandoned_one(jpeg_folder, workers):
    """Every batch of every epoch is kept to the end (a later reuse of its block must not change it), and equals
    the in-process batches; and the pool's blocks were reused."""
    reference_train, reference_val = loaders(jpeg_folder, 0)
    train, val = loaders(jpeg_folder, workers)
    expected = [epoch(reference_train, e) for e in (1, 2, 3, 4)] + [list(reference_val)] * 2
    got = [epoch(train, e) for e in (1, 2, 3)]
    pooled = sum(map(len, got)) - int(train.pool.fresh.sum())  # a worker that ran ahead took a new block
    assert pooled > train.pool.holder.numel()  # more batches in pooled blocks than there are blocks: reused
    epoch(train, 4, stop_after=1)  # abandoned with batches in flight, then the whole epoch
    got += [epoch(train, 4), list(val), list(val)]
    assert [len(e) for e in got] == [len(e) for e in expected] == [6, 6, 6, 6, 3, 3]
    for mine, theirs in zip(got, expected):
        for (x, y), (x2, y2) in zip(mine, theirs):
            assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.slow
def test_a_consumer_that_keeps_raw_batches_gets_new_blocks_not_overwritten_ones(jpeg_folder):
    """The raw DataLoader never releases: once the blocks are all held, batches go to new blocks, and every kept
    batch still holds its own images at the end."""
    reference, _ = loaders(jpeg_folder, 0)
    train, _ = loaders(jpeg_folder, 1)
    kept = []
    for number in (1, 2):  # no next_iteration(): that would say the batches kept so far were dropped
        train.set_epoch(number)
        kept += [(images, targets) for images, targets, _, _ in train.loader]
    expected = [(images, targets) for number in (1, 2) for images, targets, _, _ in epoch_raw(reference, number)]
    assert int(train.pool.fresh.sum()) == len(kept) - train.pool.holder.numel() > 0
    for (x, y), (x2, y2) in zip(kept, expected, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def epoch_raw(loader, number: int) -> list:
    loader.set_epoch(number)
    return list(loader.loader)


class Keys(torch.utils.data.Sampler):
    """(index, epoch) keys, as the loaders' samplers give them."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter((i, 0) for i in range(self.n))

    def __len__(self):
        return self.n


@pytest.mark.slow
def test_workers_started_by_spawn_share_the_pools_counters():
    """Python 3.14 starts workers by forkserver on Linux: the pool reaches them pickled (its counters as shared
    memory, its lock made anew), and blocks are still reused and released."""
    import functools

    from torch.utils.data import DataLoader

    from pgt_train.data.synthetic import SyntheticImages
    from pgt_train.data.torch_loader import collate_skipping_corrupt
    images = SyntheticImages(48, num_classes=4, img_size=16, seed=0)
    reference = [b[0] for b in DataLoader(images, batch_size=8, sampler=Keys(48), collate_fn=collate_skipping_corrupt)]
    pool = batch_pool.BatchPool(workers=2, slots=3)
    loader = DataLoader(images, batch_size=8, sampler=Keys(48), num_workers=2, multiprocessing_context="spawn",
                        collate_fn=functools.partial(collate_skipping_corrupt, pool=pool), persistent_workers=True)
    for _ in range(3):
        pool.next_iteration()
        for (batch, _, _, lease), expected in zip(loader, reference, strict=True):
            assert lease is not None and torch.equal(batch, expected)
            pool.release(lease)
    assert int(pool.fresh.sum()) == 0 and int(pool.holder.sum()) == 0
