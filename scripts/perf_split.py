"""Split a training run's time by thread and by kind of work, sampled with Linux ``perf``.

``scripts/bench_speed.py`` says how far an epoch is from the matrix-product rate and
``scripts/bench_step.py`` times the parts of one step in-process; this script says what the
CPU is doing meanwhile, without torch.profiler's own cost per op. It trains a family on the
same synthetic data as ``bench_speed.py`` in a child process, waits until the warm-up epochs
are done, attaches ``perf record`` to the child for ``--seconds`` (top frame only, no call
graphs) and groups every sample by the thread it came from and the kind of function it hit:

* matrix products (MKL's GEMM kernels and their packing),
* elementwise kernels, reductions and copies (torch's vectorised loops, MKL's vector math),
* operator dispatch, autograd and the rest of libtorch / libc10,
* the Python interpreter, torch's Python bindings, malloc / free,
* OpenMP waiting: a thread spinning or sleeping at a barrier, with no work to do.

With ``--threads 2`` the first column of the table is the main thread, which runs Python and
hands each op's work out; the second is the OpenMP worker::

    .venv/bin/python scripts/perf_split.py --family cissvae --threads 2

Needs ``perf`` (Debian: ``apt-get install linux-perf``) and permission to attach to one's
own processes (``/proc/sys/kernel/perf_event_paranoid`` at most 2). Sampling slows the child
down a little; its epoch times during the sample are printed beside the table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The kinds a sample is put in, in the order the table shows them.
KINDS = (
    "matrix products",
    "elementwise, reductions, copies",
    "dispatch, autograd, other libtorch",
    "Python interpreter",
    "torch Python bindings",
    "malloc / free",
    "OpenMP wait",
    "kernel",
    "other",
)

# MKL's GEMM kernels and packing (not fbgemm, whose name holds "gemm" too: it sorts here).
_PRODUCT = re.compile(r"^mkl_blas|(?<!fb)gemm")
# torch's and MKL's names for loops over tensor elements: the loop templates, "..._kernel"
# functions (not wrap_kernel_functor, the dispatcher's wrapper), reductions, sorts, copies.
_ELEMENTWISE = re.compile(
    r"VectorizedLoop2d|loop_2d|cpu_kernel|vectorized_|\w_kernel(?:_impl)?\b|NormalFill|adam_fused|mkl_vml"
    r"|invoke_parallel|serial_for_each|mem(?:move|set|cpy)|radix_sort|index_select_out|reduce|_sum\b"
    r"|CPUGeneratorImpl"
)
# The library is the last parenthesised part: symbols such as function_ref<void (char**, ...)> hold some too.
_SAMPLE = re.compile(r"^\s*(\d+)\s+[0-9a-f]+\s+(.*)\s+\(([^()]*)\)\s*$")
_READY = "perf_split: warm-up done"


def classify(symbol: str, library: str) -> str:
    """The kind (one of :data:`KINDS`) of a sample in ``symbol`` of shared object ``library``."""
    name = library.rsplit("/", 1)[-1]
    if _PRODUCT.search(symbol):
        return "matrix products"
    if _ELEMENTWISE.search(symbol):
        return "elementwise, reductions, copies"
    if name.startswith(("libgomp", "libiomp")):
        return "OpenMP wait"
    if name.startswith("libpython") or name == "python" or name.startswith("python3"):
        return "Python interpreter"
    if name.startswith("libtorch_python"):
        return "torch Python bindings"
    if name.startswith("libc.so") or name.startswith("libc-"):
        return "malloc / free"
    if "kernel" in name:
        return "kernel"
    if name.startswith(("libtorch", "libc10")):
        return "dispatch, autograd, other libtorch"
    return "other"


def short_name(symbol: str) -> str:
    """``symbol`` readable in a table: a loop's kernel name, or the name without template arguments."""
    if any(mark in symbol for mark in ("VectorizedLoop2d<", "loop_2d_from_1d<", "invoke_parallel<")):
        kernel = re.search(r"(\w+(?:_kernel|_impl|_step)\w*)", symbol.split("<", 1)[1])
        if kernel:
            return f"loop of {kernel.group(1)}"
    depth, out = 0, []
    for char in symbol:
        depth += char == "<"
        if depth == 0:
            out.append(char)
        depth -= char == ">" and depth > 0
    return "".join(out)[:100]


def split_samples(text: str) -> tuple[dict[int, Counter], dict[int, Counter]]:
    """Samples per thread id and kind, and per thread id and function, from ``perf script`` output.

    ``text`` is ``perf script -F tid,ip,sym,dso`` output: one sample per line (``TID IP
    SYMBOL (LIBRARY)``); lines that are not samples are skipped. Functions are counted as
    ``(kind, short_name(symbol), library file name)``.
    """
    threads: dict[int, Counter] = {}
    functions: dict[int, Counter] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found is None:
            continue
        tid, symbol, library = int(found.group(1)), found.group(2), found.group(3)
        kind = classify(symbol, library)
        threads.setdefault(tid, Counter())[kind] += 1
        functions.setdefault(tid, Counter())[(kind, short_name(symbol), library.rsplit("/", 1)[-1])] += 1
    return threads, functions


def render(threads: dict[int, Counter], main_tid: int) -> str:
    """A markdown table: one column per thread (main thread first), share of samples per kind."""
    order = sorted(threads, key=lambda t: (t != main_tid, -sum(threads[t].values())))
    heads = [("main thread" if t == main_tid else f"thread {t}") + f" ({sum(threads[t].values())} samples)"
             for t in order]
    lines = ["| kind | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(order)]
    for kind in KINDS:
        if not any(threads[t][kind] for t in order):
            continue
        cells = [f"{100 * threads[t][kind] / max(1, sum(threads[t].values())):.1f} %" for t in order]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def child(args: argparse.Namespace) -> int:
    """Train until killed (or ``--max-epochs``), printing a line when the warm-up is over."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_speed import PACKAGE_TRAIN, VAL_PROPORTION, make_data, package_settings

    from ciss_autoimpute.data.dataset import ClusterDataset
    from ciss_autoimpute.models.registry import build_model
    from ciss_autoimpute.training import Callback, RefitConfig, TrainConfig, Trainer

    x, labels = make_data(args.rows, args.cols, args.seed)
    ds = ClusterDataset(x, clusters=labels, val_proportion=VAL_PROPORTION, seed=args.seed, device="cpu")
    params: dict = {}
    train: dict = {"batch_size": args.batch_size}
    if args.package_arch:
        # As bench_speed.py's package comparison runs our side.
        params, train = package_settings()
        train["batch_size"] = PACKAGE_TRAIN["batch_size"]
    model = build_model(args.family, ds.layout, ds.n_clusters, params, seed=args.seed)

    class Announce(Callback):
        def __init__(self) -> None:
            self.last = 0.0
            self.epochs = 0

        def on_fit_start(self, trainer, data) -> None:
            self.last = time.perf_counter()

        def on_epoch_end(self, trainer, record) -> None:
            now = time.perf_counter()
            self.epochs += 1
            print(f"epoch {self.epochs}: {now - self.last:.3f} s", flush=True)
            if self.epochs == args.warmup_epochs:
                print(_READY, flush=True)
            self.last = now

    config = TrainConfig(epochs=args.max_epochs, **train)
    Trainer(model, config, RefitConfig(max_loops=0), callbacks=[Announce()], seed=args.seed, device="cpu").fit(ds.data)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="cissvae")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--batch-size", default="auto", type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--package-arch", action="store_true",
                        help="the CISS-VAE package's architecture and training settings, as bench_speed.py's package "
                             "comparison runs our side (batch 4000; use with --family cissvae)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to sample (default 8)")
    parser.add_argument("--frequency", type=int, default=4000, help="samples per second per thread (default 4000)")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="epochs before sampling starts (default 2)")
    parser.add_argument("--max-epochs", type=int, default=10_000, help="the child stops after this many epochs")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also list the main thread's N most sampled functions with their kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.warmup_epochs < 1 or args.max_epochs <= args.warmup_epochs:
        parser.error("--warmup-epochs must be at least 1 and below --max-epochs")
    if args.package_arch and args.family != "cissvae":
        parser.error(f"--package-arch is the CISS-VAE package's network: use it with --family cissvae, "
                     f"not {args.family}")
    if args.child:
        return child(args)
    perf = shutil.which("perf")
    if perf is None:
        print("perf_split: the `perf` command was not found; install it (Debian: apt-get install linux-perf) "
              "or put it on PATH.", file=sys.stderr)
        return 2

    command = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        return _sample(args, perf, proc)
    finally:
        if proc.poll() is None:  # interrupted: do not leave the training running
            proc.kill()
            proc.wait()


def _sample(args: argparse.Namespace, perf: str, proc: subprocess.Popen) -> int:
    """Wait for the child's warm-up, sample it with perf, print the table."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(_READY):
            break
    else:
        proc.wait()
        print("perf_split: the training process ended before its warm-up was over:\n" + "\n".join(lines),
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        record = subprocess.run(
            [perf, "record", "-F", str(args.frequency), "-p", str(proc.pid), "-o", str(data), "--",
             "sleep", str(args.seconds)],
            capture_output=True, text=True)
        proc.terminate()
        # The epochs timed while perf was attached (and any the child printed since).
        sampled = [line.rstrip() for line in proc.stdout if line.startswith("epoch")]
        proc.wait()
        if record.returncode != 0 or not data.exists():
            print(f"perf_split: perf record failed (exit {record.returncode}):\n{record.stderr.strip()}\n"
                  "Attaching needs /proc/sys/kernel/perf_event_paranoid <= 2 (or root).", file=sys.stderr)
            return 1
        script = subprocess.run([perf, "script", "-i", str(data), "-F", "tid,ip,sym,dso"],
                                capture_output=True, text=True, errors="replace")
    threads, functions = split_samples(script.stdout)
    if not threads:
        print("perf_split: perf recorded no samples of the training process.", file=sys.stderr)
        return 1
    batch = "4000 (package architecture)" if args.package_arch else args.batch_size
    print(f"{args.family}, {args.rows} x {args.cols}, batch {batch}, {args.threads} torch "
          f"thread{'s' if args.threads > 1 else ''}; {args.seconds:g} s sampled at {args.frequency} Hz "
          "after the warm-up; share of each thread's samples:\n")
    print(render(threads, proc.pid))
    warm = [line for line in lines if line.startswith("epoch")]
    print(f"\nEpochs before sampling: {'; '.join(warm)}")
    print(f"Epochs while sampled: {'; '.join(sampled) or 'none finished'}")
    if args.top and proc.pid in functions:
        total = sum(functions[proc.pid].values())
        print(f"\nThe main thread's {args.top} most sampled functions:\n")
        print("| share | kind | function | library |\n|---:|---|---|---|")
        for (kind, symbol, library), n in functions[proc.pid].most_common(args.top):
            print(f"| {100 * n / total:.1f} % | {kind} | `{symbol}` | {library} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
