"""Training's GPU and multi-process paths, checked on the CPU: each torchrun process saves
and restores its own random streams, the process group waits as long as the main process's
data preparation, ``--device cuda:N`` picks (or refuses) a GPU, checkpointing is decided by
free memory, and losses are read once an epoch."""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO

from manas_infer.device import resolve_device
from manas_infer.errors import InputProblem
from manas_infer.train import distributed
from manas_infer.train.device_policy import (
    decide_checkpointing,
    search_needs_checkpoint,
    uses_autocast,
)
from manas_infer.train.distributed import (
    DEFAULT_TIMEOUT,
    DistContext,
    init_distributed,
    shutdown,
)
from manas_infer.train.epochs import LossSum, progress_for
from manas_infer.train.presets import PRESETS, search_activation_bytes, search_step_bytes
from manas_infer.train.trainer import Trainer, TrainingDiverged, saved_rng_states

GIB = 2**30
CPU = torch.device("cpu")


# ------------------------------------------------------------ per-process random streams


def _bare_trainer(ctx: DistContext, folder: Path, seed: int) -> Trainer:
    """A Trainer with only what saving and restoring its random streams touches: its
    augmentation generator and a fresh-noise generator, seeded as a new process seeds them."""
    trainer = Trainer.__new__(Trainer)
    trainer.ctx, trainer.state_path = ctx, folder / "state.pt"
    trainer.state = {"stage": "retrain", "epoch": 1, "history": {}}
    trainer.augment_rng = torch.Generator().manual_seed(seed)
    trainer.fresh = SimpleNamespace(generator=torch.Generator().manual_seed(seed + 1))
    trainer._saved_rngs = {}
    return trainer


def _draws(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: torch.rand(5, generator=g) for name, g in trainer._generators().items()}


def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    """One torchrun-like process over gloo: draw, save state.pt, draw what comes next; then,
    as a resumed process seeded afresh, restore from state.pt and draw again."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    ctx = init_distributed(CPU, timeout=timedelta(seconds=120))
    try:
        root = Path(folder)
        seed = 100 + 10 * rank  # each process its own streams, as the Trainer seeds them
        trainer = _bare_trainer(ctx, root, seed)
        _draws(trainer)  # the epochs before the save
        trainer._save_state()
        expected = _draws(trainer)
        resumed = _bare_trainer(ctx, root, seed)
        resumed.state = torch.load(root / "state.pt", weights_only=False)
        resumed._saved_rngs = saved_rng_states(resumed.state, ctx, resumed.state_path)
        resumed._restore_rngs()
        torch.save({"expected": expected, "got": _draws(resumed)}, root / f"rank{rank}.pt")
    finally:
        shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_each_process_saves_and_restores_its_own_random_streams(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    per_rank = state["rng_per_rank"]
    assert len(per_rank) == 2 and "noise_rng" not in state and "augment_rng" not in state
    for name in ("augment", "noise"):
        assert not torch.equal(per_rank[0][name], per_rank[1][name]), name
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank, run in enumerate(runs):
        for name in ("augment", "noise"):
            torch.testing.assert_close(
                run["got"][name], run["expected"][name], rtol=0, atol=0,
                msg=f"rank {rank} {name}: the resumed stream is not the one it left",
            )  # fmt: skip
    # Restoring the main process's streams everywhere (the old behaviour) would fail this:
    assert not torch.equal(runs[1]["got"]["noise"], runs[0]["expected"]["noise"])


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    state = {"rng_per_rank": [{"augment": torch.Generator().get_state()}] * 2}
    with pytest.raises(InputProblem, match=r"written by 2 .*resumed with 1.*nproc_per_node=2"):
        saved_rng_states(state, DistContext(CPU), tmp_path / "state.pt")
    mine = saved_rng_states(state, DistContext(CPU, rank=1, world=2), tmp_path / "state.pt")
    assert torch.equal(mine["augment"], state["rng_per_rank"][1]["augment"])


def test_a_state_saved_before_per_process_streams_still_resumes(tmp_path: Path) -> None:
    """One process: exactly as before. Under torchrun only the main process had its
    streams saved: it restores them, the others keep their seeds."""
    g = torch.Generator().manual_seed(5)
    old = {"augment_rng": g.get_state(), "noise_rng": g.get_state()}
    single = saved_rng_states(old, DistContext(CPU), tmp_path / "state.pt")
    assert set(single) == {"augment", "noise"}
    assert torch.equal(single["augment"], old["augment_rng"])
    assert saved_rng_states(old, DistContext(CPU, rank=1, world=2), tmp_path) == {}
    assert set(saved_rng_states(old, DistContext(CPU, rank=0, world=2), tmp_path)) == {
        "augment",
        "noise",
    }
    assert saved_rng_states({"stage": "search"}, DistContext(CPU), tmp_path) == {}


# ------------------------------------------------------------ the process group


def _fake_group(monkeypatch: pytest.MonkeyPatch, world: int, rank: int) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw))
    )
    return calls


def test_the_process_group_gets_a_timeout_that_fits_data_preparation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_group(monkeypatch, world=2, rank=1)
    ctx = init_distributed(CPU, timeout=timedelta(minutes=90))
    assert calls == [("gloo", {"timeout": timedelta(minutes=90)})]
    assert (ctx.rank, ctx.world, ctx.device) == (1, 2, CPU)
    init_distributed(CPU)
    assert calls[-1] == ("gloo", {"timeout": DEFAULT_TIMEOUT})
    assert timedelta(hours=1) <= DEFAULT_TIMEOUT, "NCCL's 10 minutes abort a long preparation"


def test_the_launch_line_in_the_docs_is_one_that_runs() -> None:
    assert "-m manas_infer train" in distributed.__doc__
    assert "manas_infer.cli" not in distributed.__doc__


# ------------------------------------------------------------ which GPU


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> list[torch.device]:
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_a_gpu_index_without_cuda_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"--device cuda:1 was asked for, but torch sees no CUDA"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == CPU
    for wrong in ("cuda:x", "cuda:", "gpu", "cuda:-1", "cpu:0"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(wrong)


def test_a_gpu_index_is_checked_against_the_gpus_there_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("CUDA") == torch.device("cuda") and torch.device("cuda").index is None
    with pytest.raises(ValueError, match=r"no GPU 2; torch sees 2 GPUs \(cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_one_process_uses_the_gpu_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _gpus(monkeypatch, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cuda", 1))
    assert ctx.device == torch.device("cuda", 1) and not ctx.active
    assert chosen == [torch.device("cuda", 1)]


def test_under_torchrun_local_rank_picks_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _gpus(monkeypatch, 2)
    calls = _fake_group(monkeypatch, world=2, rank=1)
    ctx = init_distributed(torch.device("cuda"))
    assert ctx.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert calls[0][0] == "nccl"
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        init_distributed(torch.device("cuda", 0))  # N processes cannot share one index
    monkeypatch.setenv("LOCAL_RANK", "2")  # --nproc_per_node larger than the GPUs there are
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2: there is no GPU 2; torch sees 2 GPUs"):
        init_distributed(torch.device("cuda"))


# ------------------------------------------------------------ activation checkpointing


def test_the_search_memory_estimate_matches_the_measurements() -> None:
    """bench/results/search.md: the paper's plain super-net keeps 20.68 GiB for backward
    (exact, meta device), the small preset 595 MiB (measured)."""
    assert search_activation_bytes(PRESETS["paper"]) / GIB == pytest.approx(20.68, rel=0.01)
    assert search_activation_bytes(PRESETS["small"]) / 2**20 == pytest.approx(595, rel=0.01)
    half = PRESETS["paper"].with_overrides(batch=1)
    assert search_activation_bytes(half) * 2 == pytest.approx(
        search_activation_bytes(PRESETS["paper"]), rel=1e-6
    )


def test_checkpointing_only_when_the_plain_step_does_not_fit() -> None:
    assert not search_needs_checkpoint(22 * GIB, 80 * GIB)  # an 80 GB GPU: plain, faster
    assert search_needs_checkpoint(22 * GIB, 24 * GIB)  # a 24 GB GPU: checkpoint
    assert not search_needs_checkpoint(85 * GIB, 100 * GIB)
    assert search_needs_checkpoint(86 * GIB, 100 * GIB)


def test_bf16_autocast_for_the_search_supernet_on_a_gpu_only() -> None:
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_autocast(gpu, "search")  # memory: the paper super-net's activations
    assert not uses_autocast(gpu, "retrain") and not uses_autocast(cpu, "retrain")
    assert not uses_autocast(cpu, "search")
    with pytest.raises(ValueError, match="stage"):
        uses_autocast(gpu, "derive")


def test_the_retrain_precision_follows_the_gpu_measurement() -> None:
    """The policy's reason, read from the H200 run of bench/gpu_check.py: for each network the
    retraining step in bf16 autocast is no faster than in float32 (TF32 on or off) and
    moves the loss further from float32's than TF32 does."""
    results = json.loads((REPO / "bench" / "results" / "gpu-check.json").read_text())
    assert results["mode"] == "gpu" and "H200" in results["environment"]["device_name"]
    rows = results["sections"]["retrain"]["rows"]
    by = {(r["network"], r["precision"]): r for r in rows}
    for network in ("paper-derived", "trained"):
        bf16 = by[network, "bfloat16-autocast"]
        fastest_float32 = min(by[network, p]["s_per_step"] for p in ("float32", "float32+tf32"))
        assert bf16["s_per_step"] > fastest_float32
        assert bf16["loss_vs_float32"] > 5 * by[network, "float32+tf32"]["loss_vs_float32"]


def _free_memory(monkeypatch: pytest.MonkeyPatch, free: float, cached: float = 0.0) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free), int(80 * GIB)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: int(cached + GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: int(GIB))


def test_the_decision_reads_the_gpus_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    paper, gpu, n = PRESETS["paper"], torch.device("cuda", 0), 2_000_000
    assert paper.checkpoint is None, "the paper preset no longer forces checkpointing"
    assert search_step_bytes(paper, n) / GIB == pytest.approx(21.7 + 0.04, abs=0.05)
    _free_memory(monkeypatch, 70 * GIB)
    on, why = decide_checkpointing(paper, gpu, n)
    assert not on and "21.7 GiB" in why and "70.0 GiB are free on cuda:0" in why
    _free_memory(monkeypatch, 20 * GIB)
    assert decide_checkpointing(paper, gpu, n)[0]
    _free_memory(monkeypatch, 20 * GIB, cached=10 * GIB)  # the allocator's unused cache counts
    assert not decide_checkpointing(paper, gpu, n)[0]
    _free_memory(monkeypatch, 1 * GIB)
    assert not decide_checkpointing(paper.with_overrides(checkpoint=False), gpu, n)[0]
    assert decide_checkpointing(paper.with_overrides(checkpoint=True), CPU, n)[0]
    assert decide_checkpointing(paper, CPU, n) == (False, "not needed on cpu")


# ------------------------------------------------------------ host syncs and progress


def test_losses_summed_on_the_device_give_the_same_mean() -> None:
    values = torch.rand(37, generator=torch.Generator().manual_seed(0)) * 1e-2
    losses = LossSum(CPU)
    for v in values:
        losses.add(v)
    floats = [float(v) for v in values]
    assert losses.mean() == sum(floats) / len(floats)  # exactly: history is unchanged
    assert losses.total.dtype == torch.float64 and losses.count == 37


def test_a_non_finite_loss_stops_the_run_before_the_epoch_is_saved(tmp_path: Path) -> None:
    trainer = _bare_trainer(DistContext(CPU), tmp_path, 0)
    fine, bad = LossSum(CPU), LossSum(CPU)
    fine.add(torch.tensor(0.5))
    bad.add(torch.tensor(0.5))
    bad.add(torch.tensor(math.nan))
    assert trainer._check_finite("retrain", 3, fine) == [0.5]
    with pytest.raises(TrainingDiverged, match=r"retrain epoch 4: .*keeps epoch 3"):
        trainer._check_finite("retrain", 3, fine, bad)


def test_only_the_main_process_shows_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MANAS_NO_PROGRESS", raising=False)
    assert not progress_for(DistContext(CPU, rank=0, world=2)).disable
    assert progress_for(DistContext(CPU, rank=1, world=2)).disable
