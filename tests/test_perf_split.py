"""scripts/perf_split.py: samples grouped by thread and kind, and the child that trains."""

from __future__ import annotations

import pytest

# The script sets torch's thread count for the process.
pytestmark = pytest.mark.usefixtures("keep_torch_threads")


# `perf script -F tid,ip,sym,dso` lines as perf prints them (one sample each), plus noise.
PERF_TEXT = """\
  101      7f0001 mkl_blas_def_sgemm_kernel_0_zen (/venv/torch/lib/libtorch_cpu.so)
  101      7f0002 mkl_blas_def_sgemm_kernel_0_zen (/venv/torch/lib/libtorch_cpu.so)
  101      7f0003 c10::function_ref<void (char**, long const*, long, long)>::callback_fn<at::native::AVX2::\
VectorizedLoop2d<at::native::(anonymous namespace)::mul_kernel(at::TensorIteratorBase&)::{lambda()#2}> > \
(/venv/torch/lib/libtorch_cpu.so)
  101      7f0004 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)
  101      7f0005 c10::impl::OperatorEntry::lookup (/venv/torch/lib/libtorch_cpu.so)
  101      7f0006 _int_malloc (/usr/lib/x86_64-linux-gnu/libc.so.6)
  102      7f0007 [unknown] (/venv/torch/lib/libgomp.so.1)
  102      7f0008 [unknown] (/venv/torch/lib/libgomp.so.1)
  102      7f0009 [unknown] (/venv/torch/lib/libgomp.so.1)
  102      7f000a mkl_blas_def_sgemm_kernel_0_zen (/venv/torch/lib/libtorch_cpu.so)
not a sample line
"""


@pytest.fixture
def script(load_script):
    """scripts/perf_split.py, freshly imported."""
    return load_script("perf_split")


def test_samples_are_grouped_by_thread_and_kind(script):
    threads, functions = script.split_samples(PERF_TEXT)
    assert set(threads) == {101, 102}
    assert threads[101] == {
        "matrix products": 2, "elementwise, reductions, copies": 1, "Python interpreter": 1,
        "dispatch, autograd, other libtorch": 1, "malloc / free": 1,
    }
    assert threads[102] == {"OpenMP wait": 3, "matrix products": 1}
    # The elementwise loop's library is the last parenthesised part, not its signature's.
    assert functions[101][("elementwise, reductions, copies", "loop of mul_kernel", "libtorch_cpu.so")] == 1


def test_render_puts_the_main_thread_first_with_shares(script):
    threads, _ = script.split_samples(PERF_TEXT)
    table = script.render(threads, main_tid=102).splitlines()
    assert table[0] == "| kind | main thread (4 samples) | thread 101 (6 samples) |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert rows["OpenMP wait"] == "| OpenMP wait | 75.0 % | 0.0 % |"
    assert rows["matrix products"] == "| matrix products | 25.0 % | 33.3 % |"
    # Kinds no thread hit are left out.
    assert "kernel" not in rows and "torch Python bindings" not in rows


def test_short_names_drop_template_arguments(script):
    assert script.short_name("c10::impl::wrap_kernel_functor_unboxed_<c10::Foo<int>, bool>::call") == (
        "c10::impl::wrap_kernel_functor_unboxed_::call")
    assert script.short_name("mkl_blas_def_sgemm_kernel_0_zen") == "mkl_blas_def_sgemm_kernel_0_zen"


def test_missing_perf_is_reported_with_the_fix(script, monkeypatch, capsys):
    monkeypatch.setattr(script.shutil, "which", lambda name: None)
    assert script.main(["--family", "vae"]) == 2
    assert "apt-get install linux-perf" in capsys.readouterr().err


def test_bad_arguments_are_refused(script):
    with pytest.raises(SystemExit):
        script.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        script.main(["--warmup-epochs", "3", "--max-epochs", "3"])
    with pytest.raises(SystemExit):
        script.main(["--family", "vae", "--package-arch"])


def test_a_child_that_fails_before_its_warm_up_is_reported_and_nothing_sampled(script, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(script.shutil, "which", lambda name: "/usr/bin/perf-that-must-not-run")
    real_run = script.subprocess.run
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    # An unknown family: the child fails while building its model, before any epoch.
    assert script.main(["--family", "no-such-family", "--rows", "200", "--threads", "1"]) == 1
    assert "ended before its warm-up was over" in capsys.readouterr().err
    assert calls == []


def test_child_announces_the_end_of_its_warm_up(script, capsys):
    assert script.main(["--child", "--family", "vae", "--rows", "300", "--batch-size", "100", "--threads", "1",
                        "--warmup-epochs", "1", "--max-epochs", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "perf_split", "epoch 2", "epoch 3"]
    assert lines[1] == "perf_split: warm-up done"


@pytest.mark.parametrize(("symbol", "library", "kind"), [
    ("mkl_blas_def_sgemm_scopy_down4_bdz", "libtorch_cpu.so", "matrix products"),
    ("gemm_batch_internal32._omp_fn.8", "libtorch_cpu.so", "matrix products"),
    # fbgemm's radix sort (the Trainer's per-epoch cluster sort) is not a product.
    ("fbgemm::radix_sort_parallel<long, long>", "libtorch_cpu.so", "elementwise, reductions, copies"),
    ("at::native::(anonymous namespace)::fused_adam_kernel<float, float>(x)", "libtorch_cpu.so",
     "elementwise, reductions, copies"),
    ("at::native::(anonymous namespace)::multi_row_sum<float>", "libtorch_cpu.so", "elementwise, reductions, copies"),
    # The dispatcher's wrapper is dispatch even though its name holds "_kernel".
    ("c10::impl::wrap_kernel_functor_unboxed_<c10::Foo>::call", "libtorch_cpu.so",
     "dispatch, autograd, other libtorch"),
    ("torch::FunctionSignature::parse", "libtorch_python.so", "torch Python bindings"),
    ("[unknown]", "libgomp.so.1", "OpenMP wait"),
    ("clear_page_erms", "[kernel.kallsyms]", "kernel"),
    ("__tls_get_addr", "ld-linux-x86-64.so.2", "other"),
])
def test_classify(script, symbol, library, kind):
    assert script.classify(symbol, "/some/dir/" + library) == kind


def test_child_with_package_arch_trains_the_package_comparisons_model(script, monkeypatch, capsys):
    from ciss_autoimpute import training
    from ciss_autoimpute.models import registry

    built, configs = [], []
    real_build, real_config = registry.build_model, training.TrainConfig

    def build(family, layout, n_clusters, params, seed=0):
        built.append((family, params))
        return real_build(family, layout, n_clusters, params, seed=seed)

    def config(**kw):
        configs.append(kw)
        return real_config(**kw)

    monkeypatch.setattr(registry, "build_model", build)
    monkeypatch.setattr(training, "TrainConfig", config)
    assert script.main(["--child", "--family", "cissvae", "--package-arch", "--rows", "300", "--threads", "1",
                        "--warmup-epochs", "1", "--max-epochs", "2"]) == 0
    assert "perf_split: warm-up done" in capsys.readouterr().out
    (family, params), = built
    assert family == "cissvae" and params["hidden_dims"] == [150, 120, 60] and params["likelihood"] == "gaussian_fixed"
    assert configs[0]["batch_size"] == 4000 and configs[0]["grad_clip"] is None and configs[0]["lr"] == 0.01
