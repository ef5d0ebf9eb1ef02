"""scripts/bench_step.py: per-step timings print one row per family."""

from __future__ import annotations

import pytest
import torch

# The script sets torch's thread count for the process.
pytestmark = pytest.mark.usefixtures("keep_torch_threads")


@pytest.fixture
def script(load_script):
    """scripts/bench_step.py, freshly imported."""
    return load_script("bench_step")


def test_bench_step_times_each_family_in_three_parts(script, capsys):
    assert script.main(["--families", "cissvae", "notmiwae", "--rows", "300", "--batch-size", "100",
                        "--steps", "2", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| cissvae", "| notmiwae"))]
    assert len(rows) == 2
    for row in rows:
        forward, backward, optimiser, step = (float(v) for v in row.strip("|").split("|")[1:])
        assert min(forward, backward, optimiser) > 0
        assert abs(step - (forward + backward + optimiser)) < 0.02


def test_bench_step_package_arch_uses_the_package_batch(script, capsys):
    assert script.main(["--families", "cissvae", "--package-arch", "--rows", "8000",
                        "--steps", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    # The package's batch of 4000 rows replaces --batch-size, and the row is timed.
    assert "batch 4000" in out
    row = next(line for line in out.splitlines() if line.startswith("| cissvae"))
    assert float(row.strip("|").split("|")[-1]) > 0


def test_bench_step_trainer_step_runs_the_trainers_optimiser(script, capsys, monkeypatch):
    from ciss_autoimpute.training import _flat

    steps = []

    class CountingFlatAdam(_flat.FlatAdam):
        def lean_step(self):
            steps.append(self)
            return super().lean_step()

    monkeypatch.setattr(_flat, "FlatAdam", CountingFlatAdam)
    assert script.main(["--families", "vae", "--rows", "300", "--batch-size", "100", "--steps", "2",
                         "--rounds", "1", "--trainer-step", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    # 10 warm-up steps and one round of 2: every optimiser step went through the Trainer's FlatAdam.
    assert len(steps) == 12 and len(set(map(id, steps))) == 1
    assert "2 threads" in out and "the Trainer's step (FlatAdam)" in out and "wall-clock ms per step" in out
    row = next(line for line in out.splitlines() if line.startswith("| vae"))
    assert float(row.strip("|").split("|")[-1]) > 0


def test_bench_step_one_thread_reports_cpu_time_with_torchs_adam(script, capsys):
    assert script.main(["--families", "vae", "--rows", "300", "--batch-size", "100", "--steps", "1",
                         "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 thread;" in out and "torch.optim.Adam + clip_grad_norm_" in out and "CPU ms per step" in out


def test_bench_step_rejects_zero_threads(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--threads", "0"])
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_bench_step_passes_the_trainers_cluster_index_and_plain_ids_on_request(script, capsys, monkeypatch):
    from ciss_autoimpute.models.families.vae import VAE
    from ciss_autoimpute.models.layers import ClusterIndex

    seen = []
    loss = VAE.loss

    def spy(self, x, mask, clusters, **kw):
        seen.append(clusters)
        return loss(self, x, mask, clusters, **kw)

    monkeypatch.setattr(VAE, "loss", spy)  # cissvae's loss is the VAE's
    assert script.main(["--families", "cissvae", "--rows", "300", "--batch-size", "100", "--steps", "2",
                        "--rounds", "1", "--plain-ids", "--loss-pads"]) == 0
    out = capsys.readouterr().out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| cissvae")] == [
        "cissvae", "cissvae (plain ids)", "cissvae (loss pads)"]
    # 10 warm-up steps and one round of 2, each way: the Trainer's index (of padded blocks laid
    # out beforehand for batches of about equal clusters, else grouped), plain ids, grouped.
    indexes = [c for c in seen if isinstance(c, ClusterIndex)]
    assert len(indexes) == 2 * (len(seen) - len(indexes)) == 24
    assert all(isinstance(c, torch.Tensor) for c in seen if not isinstance(c, ClusterIndex))
    padded = [c for c in indexes if c.is_padded]
    assert 1 <= len(padded) <= 12 and sum(c.is_grouped for c in indexes) == 24 - len(padded)
    assert all(sum(c.counts) == 100 for c in indexes)


def test_bench_step_times_the_segment_products_beside_the_padded_blocks(script, capsys, monkeypatch):
    from ciss_autoimpute.models.layers import ClusterLinear

    ways = []
    forward_blocks, segment_products = ClusterLinear._forward_blocks, ClusterLinear._segment_products

    def blocks(self, *args):
        ways.append("blocks")
        return forward_blocks(self, *args)

    def segments(self, *args):
        ways.append("segments")
        return segment_products(self, *args)

    monkeypatch.setattr(ClusterLinear, "_forward_blocks", blocks)
    monkeypatch.setattr(ClusterLinear, "_segment_products", segments)
    assert script.main(["--families", "cissvae", "--rows", "400", "--batch-size", "200", "--steps", "2",
                        "--rounds", "1", "--segments"]) == 0
    out = capsys.readouterr().out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| cissvae")] == [
        "cissvae", "cissvae (segments)"]
    # 12 steps each way (10 warm-up, one round of 2), four cluster-specific layers per step,
    # alternating: the default padded blocks, then max_padding=None's segment products.
    assert ways.count("blocks") == ways.count("segments") == 48
    assert ways[:8] == ["blocks"] * 4 + ["segments"] * 4


def test_bench_step_count_ops_counts_one_gradient_accumulation_per_parameter(script, capsys):
    import re

    from ciss_autoimpute.data.layout import FeatureLayout
    from ciss_autoimpute.models.registry import build_model

    assert script.main(["--families", "vae", "cissvae", "--rows", "400", "--batch-size", "100", "--steps", "1",
                         "--rounds", "1", "--trainer-step", "--count-ops", "3"]) == 0
    out = capsys.readouterr().out
    for family in ("vae", "cissvae"):
        found = re.search(rf"^{family}: per step ([\d.]+) top-level operator calls and ([\d.]+) autograd nodes\n"
                          r"- top-level operator calls: .*\n- autograd nodes: (.*)$", out, re.MULTILINE)
        assert found is not None
        ops, nodes = float(found.group(1)), float(found.group(2))
        tally = dict(item.rsplit(" ", 1) for item in found.group(3).split(", "))
        # Every parameter tensor gets its gradient accumulated exactly once per backward pass.
        n_params = len(list(build_model(family, FeatureLayout.all_numeric(50), 4, {}, seed=0).parameters()))
        assert float(tally["AccumulateGrad"]) == n_params
        assert ops > nodes > n_params
    # cissvae's cluster-specific layers show up as their own backward nodes (padded blocks or
    # segments, depending on how equal a batch's clusters are); vae has none.
    vae_part, ciss_part = out.split("cissvae: per step")
    cluster_nodes = ("BaddbmmBackward0", "_SegmentLinearBackward")
    assert any(name in ciss_part for name in cluster_nodes)
    assert not any(name in vae_part for name in cluster_nodes)


def test_count_ops_keeps_top_level_calls_and_names_nodes(script):

    class Event:
        def __init__(self, name, parent=None):
            self.name, self.cpu_parent = name, parent

    step = Event("ProfilerStep")
    linear = Event("aten::linear", step)
    events = [step, linear, Event("aten::addmm", linear), Event("aten::relu", step),
              Event("autograd::engine::evaluate_function: AddmmBackward0"),
              Event("aten::mm", Event("AddmmBackward0")),
              Event("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad")]
    ops, nodes = script.count_ops(events, steps=2)
    # addmm runs inside linear and is not counted; mm under an autograd node is.
    assert ops == {"aten::linear": 0.5, "aten::relu": 0.5, "aten::mm": 0.5}
    assert nodes == {"AddmmBackward0": 0.5, "AccumulateGrad": 0.5}
