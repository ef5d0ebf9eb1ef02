"""scripts/bench_speed.py: the package comparison's alternating repeats and their median."""

from __future__ import annotations

import sys

import pytest

#: How the report names the second reference's products.
AS_RUN = "one per cluster segment, or batched over padded blocks"


@pytest.fixture
def script(load_script):
    """scripts/bench_speed.py, freshly imported."""
    return load_script("bench_speed")


def _ours(**values):
    """A child result of our Trainer for the fake runs: 1 s epochs at 30 of 100 GFLOP/s, unless overridden."""
    return {"epoch_seconds": 1.0, "all_epoch_seconds": [1.0, 1.0], "cpu_epoch_seconds": 1.0,
            "gflops": 30.0, "matmul_gflops": 100.0, "cpu_gflops": 30.0, "cpu_matmul_gflops": 100.0,
            "run_matmul_gflops": 100.0, "cpu_run_matmul_gflops": 100.0, "linear_shapes": [[1000, 50, 128]],
            "run_linear_shapes": [[1000, 50, 128]], "rows_per_second": 1.0, "gflop_per_epoch": 30.0,
            "peak_rss_mb": 100.0, "load_start": 0.0, "batch_size_used": 1000, **values}


def _repeating_child(specs, varying, gflops, *, whole, segments, **values):
    """A fake child for repeated family runs, recording each spec it gets.

    ``varying`` reaches ``gflops[repeat]`` GFLOP/s of the whole-batch reference's 100 (CPU time:
    half of each), every other family 20; cissvae multiplies ``segments``, the others ``whole``.
    """
    def fake_child(python, spec, threads):
        specs.append(spec)
        g = gflops[spec["repeat"]] if spec["family"] == varying else 20.0
        run = segments if spec["family"] == "cissvae" else whole
        return _ours(cpu_epoch_seconds=2.0, gflops=g, cpu_gflops=g / 2, cpu_matmul_gflops=50.0,
                     linear_shapes=whole, run_linear_shapes=run, **values)

    return fake_child


def _target_line(text, family):
    """The report's matmul-share target line of ``family``."""
    return next(x for x in text.splitlines() if x.startswith("- GFLOP/s") and f", {family}:" in x)


def test_repeats_alternate_both_sides_and_report_the_median(script, monkeypatch, tmp_path):
    order = []
    # Package epochs of 4, 3 and 5 s against ours of 1 s (val every epoch 2 s): the CPU
    # speedups are 4 / 3 / 5x (default) and 2 / 1.5 / 2.5x (like for like); medians 4 and 2.
    package_seconds = [4.0, 3.0, 5.0]

    def fake_child(python, spec, threads):
        order.append((spec["kind"], spec.get("val_every"), spec["repeat"]))
        if spec["kind"] == "package":
            s = package_seconds[spec["repeat"]]
            return {"epoch_seconds": s, "cpu_epoch_seconds": s, "peak_rss_mb": 100.0, "version": "x"}
        s = 2.0 if spec["val_every"] else 1.0
        return {"epoch_seconds": s, "cpu_epoch_seconds": s, "gflops": 10.0, "matmul_gflops": 20.0,
                "cpu_gflops": 10.0, "cpu_matmul_gflops": 20.0, "gflop_per_epoch": 10.0, "peak_rss_mb": 100.0,
                "batch_size_used": 4000}

    monkeypatch.setattr(script, "run_child", fake_child)
    out = tmp_path / "speed.md"
    assert script.main(["--rows", "1000", "--sections", "package", "--cissvae-python", sys.executable,
                        "--repeats", "3", "--memory-rows", "0", "--out", str(out)]) == 0
    # Ours (validation every epoch, then the default epoch) and the package, run after run.
    assert order == [(kind, val, r) for r in range(3) for kind, val in (("ours", 1), ("ours", 0), ("package", None))]
    text = out.read_text()
    assert "| 1,000 (run 1) | 4.00 |" in text and "| 1,000 (run 3) | 5.00 |" in text
    median = next(line for line in text.splitlines() if "median of 3 alternating runs" in line)
    assert "2.0x like for like (runs 2.0, 1.5, 2.5)" in median
    assert "4.0x with our default (runs 4.0, 3.0, 5.0)" in median
    assert "like for like NOT met, default NOT met" in median


def test_several_threads_are_judged_on_the_wall_clock(script, monkeypatch, tmp_path):
    """With 2 threads CPU time counts waiting worker threads: the verdict reads wall seconds."""

    def fake_child(python, spec, threads):
        assert threads == 2
        if spec["kind"] == "package":
            # 4 s of wall clock, 6 s of CPU (its second thread mostly waits).
            return {"epoch_seconds": 4.0, "cpu_epoch_seconds": 6.0, "peak_rss_mb": 100.0, "version": "x"}
        wall = 1.0 if spec["val_every"] else 0.5
        return {"epoch_seconds": wall, "cpu_epoch_seconds": 2 * wall, "gflops": 10.0, "matmul_gflops": 20.0,
                "cpu_gflops": 5.0, "cpu_matmul_gflops": 20.0, "gflop_per_epoch": 10.0, "peak_rss_mb": 100.0,
                "batch_size_used": 4000}

    monkeypatch.setattr(script, "run_child", fake_child)
    for repeats in ("1", "3"):
        out = tmp_path / f"speed{repeats}.md"
        assert script.main(["--cissvae-rows", "100000", "--sections", "package", "--cissvae-python", sys.executable,
                            "--threads", "2", "--repeats", repeats, "--memory-rows", "0", "--out", str(out)]) == 0
        text = out.read_text()
        # Wall: 4x like for like, 8x default; CPU time would say 3x / 6x.
        verdict = next(line for line in text.splitlines() if line.startswith("- >= 5x"))
        assert "like for like NOT met, default met" in verdict and "(wall)" in verdict, verdict
        assert "8.0x with our default" in verdict, verdict
        share = next(line for line in text.splitlines() if "package architecture (batch 4000)" in line)
        assert "wall 50%, CPU time 25% -> met (wall)" in share, share


def test_repeats_must_be_positive(script):
    import pytest

    with pytest.raises(SystemExit):
        script.main(["--repeats", "0", "--sections", "package"])


def test_segment_shapes_are_the_products_a_layer_runs(script):
    import torch

    from ciss_autoimpute.models.layers import ClusterIndex, ClusterLinear

    unshared = ClusterLinear(50, 128, n_clusters=4, shared=False)
    grouped = ClusterIndex.grouped([10, 0, 20, 30], 4)
    # Rows sorted by cluster: one product per non-empty segment; 3 importance samples ride along.
    assert script.segment_shapes(unshared, (torch.zeros(60, 50), grouped), 60) == [
        (10, 50, 128), (20, 50, 128), (30, 50, 128)]
    assert script.segment_shapes(unshared, (torch.zeros(3, 60, 50), grouped), 180) == [
        (30, 50, 128), (60, 50, 128), (90, 50, 128)]
    # Unsorted rows: segments too once the layer is large; small layers multiply every row.
    ids = torch.tensor([0] * 1000 + [2] * 2000)
    assert script.segment_shapes(unshared, (torch.zeros(3000, 50), ClusterIndex.build(ids, 4)), 3000) == [
        (1000, 50, 128), (2000, 50, 128)]
    small = torch.tensor([0] * 10 + [2] * 20)
    assert script.segment_shapes(unshared, (torch.zeros(30, 50), ClusterIndex.build(small, 4)), 30) == [(30, 50, 128)]
    shared = ClusterLinear(50, 128, n_clusters=4, shared=True)
    assert script.segment_shapes(shared, (torch.zeros(60, 50), grouped), 60) == [(60, 50, 128)]
    # Padded cluster blocks (the VAE loss's layout): one batched product over equal blocks, one per
    # cluster, padding included in the products as run; the FLOPs counted are the real rows' only.
    blocks = ClusterIndex.grouped([25, 28, 30, 27], 4).padded_blocks(0.2)
    assert script.segment_shapes(unshared, (torch.zeros(120, 50), blocks), 120) == [(30, 50, 128, 4)]
    assert script.segment_shapes(shared, (torch.zeros(120, 50), blocks), 120) == [(120, 50, 128)]
    assert script.useful_rows((torch.zeros(120, 50), blocks), 120) == 110
    assert script.useful_rows((torch.zeros(3, 120, 50), blocks), 360) == 330
    assert script.useful_rows((torch.zeros(60, 50), grouped), 60) == 60
    assert script.useful_rows((torch.zeros(60, 50),), 60) == 60


def test_cluster_shares_draw_clusters_of_unequal_size(script):
    x, equal = script.make_data(20_000, 5, 0)
    x2, unequal = script.make_data(20_000, 5, 0, [0.5, 0.25, 0.15, 0.1])
    # Same values and missing cells either way; only the labels change.
    assert ((x == x2) | (x != x)).all()
    assert abs(sorted(script.np.bincount(equal) / 20_000)[0] - 0.25) < 0.02
    assert script.np.allclose(script.np.bincount(unequal) / 20_000, [0.5, 0.25, 0.15, 0.1], atol=0.015)
    assert script.clusters_text([2, 1, 1]) == "3 random clusters with shares 50% / 25% / 25%"
    with pytest.raises(SystemExit):
        script.main(["--cluster-shares", "1", "--sections", "auto"])
    with pytest.raises(SystemExit):
        script.main(["--cluster-shares", "1", "0", "--sections", "auto"])


def test_the_matmul_reference_times_batched_blocks_as_batched_products(script, monkeypatch):
    """A (rows, in, out, blocks) shape is one baddbmm + two bmm over [blocks, rows, ...], with its FLOPs."""
    import torch

    calls = []
    for name in ("baddbmm", "bmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, _name=name: calls.append(
            (_name, tuple(a[-2].shape), tuple(a[-1].shape))) or _real(*a))
    ref = script.MatmulReference([(30, 50, 128, 4), (120, 128, 64)], torch)
    assert ref.flops_per_step == 6.0 * (4 * 30 * 50 * 128 + 120 * 128 * 64)
    assert calls == [("baddbmm", (4, 30, 50), (4, 50, 128)), ("bmm", (4, 30, 128), (4, 128, 50)),
                     ("bmm", (4, 50, 30), (4, 30, 128))]
    ref.run(0.01, blocks=1)
    assert len(ref.rates) == 1 and ref.gflops() > 0


def test_the_share_is_also_judged_against_the_products_as_run(script, monkeypatch, tmp_path):
    """A cluster-specific family gets a second verdict against its segment products."""
    whole = [[1000, 50, 128]]
    segments = [[500, 50, 128], [500, 50, 128]]

    def fake_child(python, spec, threads):
        run = segments if spec["family"] == "cissvae" else whole
        return _ours(run_matmul_gflops=60.0, cpu_run_matmul_gflops=60.0, linear_shapes=whole, run_linear_shapes=run)

    monkeypatch.setattr(script, "run_child", fake_child)
    out = tmp_path / "auto.md"
    assert script.main(["--rows", "100000", "--sections", "auto", "--families", "vae", "cissvae",
                        "--memory-rows", "0", "--out", str(out)]) == 0
    text = out.read_text()
    lines = {f: _target_line(text, f) for f in ("vae", "cissvae")}
    # 30 of 100 GFLOP/s against whole batches; 30 of 60 against the segment products.
    assert "CPU time 30.0% -> NOT met at the default" in lines["cissvae"]
    assert f"against the products as run ({AS_RUN}): wall 50.0%, CPU time 50.0% -> met" in lines["cissvae"]
    # All-shared families multiply whole batches: one verdict.
    assert "products as run" not in lines["vae"] and "NOT met" in lines["vae"]
    row = next(line for line in text.splitlines() if line.startswith("| cissvae |"))
    assert "| 60.0 / 60.0 | 50% / 50% |" in row


def test_repeated_default_batch_runs_are_judged_on_their_median(script, monkeypatch, tmp_path):
    specs = []
    # cissvae reaches 30, 45 and 50 % of the whole-batch rate (median 45 %: met) in three runs.
    monkeypatch.setattr(script, "run_child", _repeating_child(
        specs, "cissvae", {0: 30.0, 1: 45.0, 2: 50.0}, whole=[[1000, 50, 128]],
        segments=[[500, 50, 128], [500, 50, 128]], run_matmul_gflops=80.0, cpu_run_matmul_gflops=40.0))
    out = tmp_path / "auto.md"
    assert script.main(["--rows", "100000", "--sections", "auto", "--families", "vae", "cissvae", "--threads", "2",
                        "--repeats", "3", "--memory-rows", "0", "--out", str(out)]) == 0
    # The families alternate within each run.
    assert [(s["repeat"], s["family"]) for s in specs] == [(r, f) for r in range(3) for f in ("vae", "cissvae")]
    text = out.read_text()
    assert "| cissvae (run 3) | 100,000 |" in text
    line = _target_line(text, "cissvae")
    assert "median 45.0% of 3 alternating runs (30%, 45%, 50%; wall) -> met" in line, line
    # Against the segment products (80 GFLOP/s): 38 / 56 / 62 %, median 56 %.
    assert f"products as run ({AS_RUN}): median 56.2% of 3 alternating runs" in line, line
    vae = _target_line(text, "vae")
    assert "median 20.0% of 3 alternating runs (20%, 20%, 20%; wall) -> NOT met" in vae


def test_repeated_fixed_batch_runs_alternate_and_are_judged_on_their_median(script, monkeypatch, tmp_path):
    """--repeats also repeats the fixed-batch family table (section ``families``)."""
    specs = []
    # At batch 2048 vae reaches 35, 50 and 42 % (median 42 %: met); cissvae 20 % in every run.
    monkeypatch.setattr(script, "run_child", _repeating_child(
        specs, "vae", {0: 35.0, 1: 50.0, 2: 42.0}, whole=[[2048, 50, 128]],
        segments=[[1000, 50, 128], [1048, 50, 128]], run_matmul_gflops=40.0, cpu_run_matmul_gflops=20.0,
        batch_size_used=2048))
    out = tmp_path / "families.md"
    assert script.main(["--rows", "100000", "--sections", "families", "--families", "vae", "cissvae",
                        "--batch-size", "2048", "--threads", "2", "--repeats", "3", "--memory-rows", "0",
                        "--out", str(out)]) == 0
    assert all(s["batch_size"] == 2048 for s in specs)
    assert [(s["repeat"], s["family"]) for s in specs] == [(r, f) for r in range(3) for f in ("vae", "cissvae")]
    text = out.read_text()
    assert "| vae (run 2) | 100,000 |" in text and "| cissvae (run 3) | 100,000 |" in text
    vae = _target_line(text, "vae")
    assert "batch 2048: median 42.0% of 3 alternating runs (35%, 50%, 42%; wall) -> met" in vae, vae
    assert "default batch not measured" in vae
    cissvae = _target_line(text, "cissvae")
    # Whole batches: 20 %; the segment products (40 GFLOP/s): 50 %.
    assert "batch 2048: median 20.0% of 3 alternating runs (20%, 20%, 20%; wall) -> NOT met" in cissvae, cissvae
    assert f"products as run ({AS_RUN}): median 50.0% of 3 alternating runs" in cissvae, cissvae


def test_a_single_fixed_batch_run_names_its_basis(script, monkeypatch, tmp_path):

    def fake_child(python, spec, threads):
        return _ours(gflops=45.0, cpu_gflops=35.0, batch_size_used=256)

    monkeypatch.setattr(script, "run_child", fake_child)
    out = tmp_path / "one.md"
    assert script.main(["--rows", "100000", "--sections", "families", "--families", "vae",
                        "--memory-rows", "0", "--out", str(out)]) == 0
    line = _target_line(out.read_text(), "vae")
    # One thread: judged on CPU time (35 %), not the wall clock (45 %).
    assert "batch 256: wall 45.0%, CPU time 35.0% -> NOT met (CPU time); default batch not measured" in line, line


def test_the_layers_section_compares_unshared_with_shared_at_the_default_batch(script, monkeypatch, tmp_path):
    specs = []

    def fake_child(python, spec, threads):
        specs.append(spec)
        unshared = spec["params"]["latent_shared"] is False
        return _ours(epoch_seconds=1.5 if unshared else 1.0, cpu_epoch_seconds=3.0 if unshared else 2.0)

    monkeypatch.setattr(script, "run_child", fake_child)
    out = tmp_path / "layers.md"
    assert script.main(["--rows", "100000", "--sections", "layers", "--memory-rows", "0",
                        "--cluster-shares", "2", "1", "1", "--out", str(out)]) == 0
    assert [s["batch_size"] for s in specs] == ["auto", "auto"]
    assert [s["cluster_shares"] for s in specs] == [[2.0, 1.0, 1.0]] * 2
    assert [s["params"]["layer_order_enc"] for s in specs] == [["shared"] * 2, ["unshared"] * 2]
    text = out.read_text()
    assert "3 random clusters with shares 50% / 25% / 25%, default widths" in text
    assert "| 100,000 | 1000 | 1.00 | 1.50 | 1.50x | 2.00 / 3.00 | 1.50x |" in text


def test_repeated_layers_runs_alternate_and_report_the_median_ratio(script, monkeypatch, tmp_path):
    specs = []
    unshared_seconds = [1.2, 1.5, 1.3]  # against 1 s shared: ratios 1.2, 1.5, 1.3 -> median 1.3

    def fake_child(python, spec, threads):
        specs.append(spec)
        s = unshared_seconds[spec["repeat"]] if spec["params"]["latent_shared"] is False else 1.0
        return _ours(epoch_seconds=s, cpu_epoch_seconds=s)

    monkeypatch.setattr(script, "run_child", fake_child)
    out = tmp_path / "layers.md"
    assert script.main(["--rows", "100000", "--sections", "layers", "--memory-rows", "0", "--repeats", "3",
                        "--out", str(out)]) == 0
    assert [(s["repeat"], s["params"]["latent_shared"]) for s in specs] == [
        (0, True), (0, False), (1, True), (1, False), (2, True), (2, False)]
    text = out.read_text()
    assert "| 100,000 (run 2) | 1000 | 1.00 | 1.50 | 1.50x |" in text
    assert "Median unshared / shared at 100,000 rows over 3 alternating runs: **1.30x** (wall)." in text
