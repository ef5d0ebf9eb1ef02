"""Lean optimiser plumbing for the Trainer: one buffer of values, gradients and moments, one Adam call.

Zeroing, clipping and stepping Adam one parameter tensor at a time costs a few
small ops and a lot of Python per tensor, every optimisation step: with the default
CISS-VAE's 12 tensors, ``zero_grad(set_to_none=True)`` + ``clip_grad_norm_`` + the
fused ``Adam.step`` took 0.61 ms of a ~3 ms step at batch 256 and 0.78 ms of ~6.5 ms
at batch 1000 (CPU, one thread, inside a training loop). Here:

* :class:`FlatGrads` packs a step's parameters into one contiguous buffer of values
  (each parameter's ``.data`` becomes a view of its slot) and gives them one
  gradient buffer (each ``.grad`` is a view of it; autograd accumulates into the
  views in place). Zeroing is one ``zero_``, the clipping norm one reduction and
  its multiply one ``mul_``.
* :class:`FlatAdam` is a :class:`torch.optim.Adam` (``fused=True``) whose moments
  live in two more buffers of the same layout, so every step is one call of the
  fused kernel on four whole buffers instead of one pass per parameter tensor.
  :meth:`FlatAdam.lean_step` also skips the wrappers torch puts around every
  ``step()`` (profiler record, step hooks, the scheduler's call flag) when none of
  them is in use.

The update is Adam's and the clipping is :func:`torch.nn.utils.clip_grad_norm_`'s
rule, but not bit for bit: the kernel rounds the few elements it handles in its
scalar tail loop differently from its vector loop (1 ulp), and which elements fall
there depends on the tensor sizes, and the norm over one buffer sums in another
order than torch's norm of per-tensor norms. Against the per-tensor versions the
clipping and update take 65-220 µs instead of 230-470 µs per step for the default VAE
and CISS-VAE networks, and a whole step is 2-7 % shorter (in-process A/B on CPU;
``docs/bench_speed.md``). Same seed, same result holds as before.
"""

from __future__ import annotations

import logging

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import optimizer as _optimizer

logger = logging.getLogger(__name__)

#: The fused Adam kernel ``torch.optim.Adam(fused=True)`` runs (private to torch, so
#: looked up once and guarded: see :meth:`FlatAdam.step`).
_fused_adam_kernel = getattr(torch, "_fused_adam_", None)

__all__ = ["FlatAdam", "FlatGrads", "can_flatten"]


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` have the same shape, dtype and device."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def can_flatten(params: Sequence[torch.Tensor]) -> bool:
    """True when ``params`` can share buffers: dense, one device, one floating dtype."""
    if not params:
        return False
    first = params[0]
    return all(
        p.layout == torch.strided and p.device == first.device and p.dtype == first.dtype and p.is_floating_point()
        for p in params
    )


class FlatGrads:
    """One contiguous buffer of values and one of gradients for a group of parameters.

    Parameters
    ----------
    params
        Distinct leaf parameters on one device with one dtype (see
        :func:`can_flatten`). Each one's ``.data`` becomes a view of its slot of
        :attr:`data` (same values, same shape) and its ``.grad`` a view of its slot
        of :attr:`grad`, which starts at zero (gradients held before are dropped).
        The parameter objects stay the same, so modules and optimisers holding them
        are unaffected; :meth:`release` gives every parameter the storage it had before,
        holding its trained values.

    Attributes
    ----------
    params
        The parameters, in buffer order.
    data
        The 1-D buffer of the parameters' values.
    grad
        The 1-D gradient buffer.
    views
        ``views[i]`` is ``params[i].grad``.

    Notes
    -----
    A parameter that gets no gradient in a backward pass keeps a zero gradient here,
    so Adam still decays its moments and moves it by its momentum, where
    ``torch.optim.Adam`` after ``zero_grad(set_to_none=True)`` would skip it. Every
    parameter of the package's families gets a gradient at every step, so their
    training is unchanged.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        params = list(params)
        if not can_flatten(params):
            raise ValueError("FlatGrads needs dense floating-point parameters on one device with one dtype.")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("FlatGrads got the same parameter twice; pass each parameter once.")
        self.params = params
        # Each parameter's own storage, given back (with the trained values) by release(), so
        # references to it taken before training, e.g. an uncloned state_dict(), stay live.
        self._own = [p.data for p in params]
        with torch.no_grad():
            self.data = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.data)
        self._slots = self.split(self.data)
        self.views = self.split(self.grad)
        for p, slot, view in zip(params, self._slots, self.views):
            p.data = slot
            p.grad = view
        # Where each parameter's values must be: sync() compares, one integer per parameter.
        self._ptrs = [slot.data_ptr() for slot in self._slots]

    def split(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``buffer`` (laid out like :attr:`data`), one per parameter with its shape."""
        out, offset = [], 0
        for p in self.params:
            n = p.numel()
            out.append(buffer[offset:offset + n].view_as(p))
            offset += n
        return out

    def zero_grad(self) -> None:
        """Zero every gradient at once; a gradient that is not its view any more is replaced by it."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                p.grad = view
        self.grad.zero_()

    def sync(self) -> None:
        """Make sure each parameter's values and ``.grad`` are its slots of :attr:`data` and :attr:`grad`.

        Autograd accumulates into the gradient views and the optimiser updates the
        value buffer in place, so this normally only checks. If other code replaced
        or removed a gradient (``model.zero_grad()`` sets them to ``None``), its value
        is copied into the buffer (``None`` as zero) and the view is put back; if it
        gave a parameter new values of the same shape (``param.data = ...``), they are
        copied into the slot, which becomes the parameter's storage again.

        Raises
        ------
        RuntimeError
            If a parameter's shape, dtype or device changed since the buffers were
            built (e.g. ``model.double()`` in the middle of training).
        """
        for i, (p, view) in enumerate(zip(self.params, self.views)):
            if p.data_ptr() != self._ptrs[i]:
                slot = self._slots[i]
                if not _same_kind(p, slot):
                    raise RuntimeError(
                        f"parameter {i} of this update step changed from {tuple(slot.shape)} {slot.dtype} on "
                        f"{slot.device} to {tuple(p.shape)} {p.dtype} on {p.device} during training; move or "
                        "convert the model before training starts, not during it."
                    )
                with torch.no_grad():
                    slot.copy_(p.detach())
                p.data = slot
            g = p.grad
            if g is view:
                continue
            with torch.no_grad():
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g)
            p.grad = view

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients so that their total 2-norm is at most ``max_norm``.

        The rule of :func:`torch.nn.utils.clip_grad_norm_` (coefficient
        ``max_norm / (norm + 1e-6)`` clamped at 1) with the norm taken over the whole
        buffer in one reduction, applied without a host sync. Returns the total norm
        before clipping.
        """
        self.sync()
        with torch.no_grad():
            norm = torch.linalg.vector_norm(self.grad)
            self.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    def release(self) -> None:
        """Give every parameter and gradient its own storage again (called when the training run ends).

        A parameter gets back the storage it had before the buffers were built, holding
        its current values.
        """
        with torch.no_grad():
            for p, view, ptr, own in zip(self.params, self.views, self._ptrs, self._own):
                if p.data_ptr() == ptr:
                    own.copy_(p.detach())
                    p.data = own
                if p.grad is view:
                    # A parameter converted in the middle of training (sync() refused it) drops
                    # the gradient of its old type instead of failing here as well.
                    p.grad = view.clone() if _same_kind(p, view) else None


class FlatAdam(torch.optim.Adam):
    """Fused Adam over the buffers of a :class:`FlatGrads`: one kernel call per step.

    The first step creates the usual per-parameter state (``step``, ``exp_avg``,
    ``exp_avg_sq``) with the moments as views of two buffers laid out like
    :attr:`FlatGrads.data` and one ``step`` tensor shared by every parameter; each
    step then counts that step and runs the fused kernel once on the value,
    gradient and moment buffers, reading ``lr``, betas, ``eps``, ``weight_decay``
    and ``maximize`` from ``param_groups`` every time, so learning-rate schedules
    work as usual. ``state_dict`` / ``load_state_dict`` work as for Adam (a loaded
    state is copied into the buffers at the next step). With more than one
    parameter group, AMSGrad, or a state whose parameters have different step
    counts, the step is :meth:`torch.optim.Adam.step`'s.

    Parameters
    ----------
    grads
        The buffers of the parameters to optimise.
    lr, weight_decay
        As for :class:`torch.optim.Adam` (betas and eps keep their defaults).
    """

    def __init__(self, grads: FlatGrads, *, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(grads.params, lr=lr, weight_decay=weight_decay, fused=True)
        self.flat = grads
        # (exp_avg buffer, exp_avg_sq buffer, shared step) once the state is packed; None before.
        self._buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._lean = _fused_adam_kernel is not None
        # False once the state could not be packed, until load_state_dict brings a new one.
        self._packable = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradient buffer (``set_to_none`` is ignored: the views must stay)."""
        self.flat.zero_grad()

    def _can_pack(self) -> bool:
        group = self.param_groups[0]
        params = group["params"]
        return (
            self._lean
            and len(self.param_groups) == 1
            and not group["amsgrad"]
            and not group.get("decoupled_weight_decay", False)
            and not group["capturable"]
            and not group["differentiable"]
            and getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
            and len(params) == len(self.flat.params)
            and all(p is q for p, q in zip(params, self.flat.params))
        )

    def _pack(self) -> bool:
        """Put the moments in buffers and share one step counter; False when the state does not allow it."""
        if not (self._packable and self._can_pack()):
            return False
        params = self.flat.params
        states = [self.state.get(p, {}) for p in params]
        full = all(len(s) == 3 for s in states)
        steps = [float(s["step"]) for s in states] if full else [0.0]
        if (any(states) and not full) or any(v != steps[0] for v in steps):
            self._packable = False
            return False
        exp_avg, exp_avg_sq = torch.zeros_like(self.flat.data), torch.zeros_like(self.flat.data)
        # The fused kernel's step counter: float32 on the parameters' device, as Adam makes it.
        step = torch.full((), steps[0], dtype=torch.float32, device=self.flat.data.device)
        with torch.no_grad():
            for p, s, m, v in zip(params, states, self.flat.split(exp_avg), self.flat.split(exp_avg_sq)):
                if s:
                    m.copy_(s["exp_avg"])
                    v.copy_(s["exp_avg_sq"])
                self.state[p] = {"step": step, "exp_avg": m, "exp_avg_sq": v}
        self._buffers = (exp_avg, exp_avg_sq, step)
        return True

    def _unpack(self) -> None:
        """Give each parameter its own step counter again, before Adam's own step runs."""
        # (Also reached from Optimizer.__init__, through add_param_group, before __init__ sets _buffers.)
        if getattr(self, "_buffers", None) is None:
            return
        for p in self.flat.params:
            state = self.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].clone()
        self._buffers = None

    def _update(self) -> None:
        """One Adam update of every parameter (gradients already in the buffer)."""
        self.flat.sync()
        if self._buffers is None and not self._pack():
            super().step()
            return
        assert self._buffers is not None
        exp_avg, exp_avg_sq, step = self._buffers
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        step.add_(1)
        try:
            _fused_adam_kernel(
                [self.flat.data], [self.flat.grad], [exp_avg], [exp_avg_sq], [], [step],
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )
        except (AttributeError, TypeError, RuntimeError) as exc:
            # The kernel is private: a torch release that renamed it or changed its
            # signature gets Adam's own step from now on (same update, a little slower).
            step.sub_(1)
            logger.debug("fused Adam kernel unavailable (%s); using torch.optim.Adam.step", exc)
            self._lean = False
            self._unpack()
            super().step()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One Adam update of every parameter; ``closure`` as for any optimiser."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    def lean_step(self) -> None:
        """:meth:`step` without the wrappers torch puts around every optimiser's ``step``.

        Those record the call for the profiler, run the optimiser step hooks and tell
        a learning-rate scheduler that ``step`` was called. When no hook is
        registered and no profiler runs, this sets the scheduler's flag itself and
        makes the update directly; otherwise it calls :meth:`step`.
        """
        hooks = (
            getattr(_optimizer, "_global_optimizer_pre_hooks", None),
            getattr(_optimizer, "_global_optimizer_post_hooks", None),
            getattr(self, "_optimizer_step_pre_hooks", None),
            getattr(self, "_optimizer_step_post_hooks", None),
        )
        profiling = getattr(torch.autograd.profiler, "_is_profiler_enabled", True)
        if profiling or any(h is None or len(h) for h in hooks):
            self.step()
            return
        self._opt_called = True  # what the scheduler's wrapper around step() records
        with torch.no_grad():
            self._update()

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`torch.optim.Adam.state_dict`, with a step counter of its own for every parameter.

        The shared counter would stay shared in a copy or a saved file, and Adam's own
        step, loading it, would then count it once per parameter.
        """
        out = super().state_dict()
        out["state"] = {
            k: {**v, "step": v["step"].clone()} if isinstance(v.get("step"), torch.Tensor) else v
            for k, v in out["state"].items()
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Adam.load_state_dict`; the next step copies the state into the buffers."""
        super().load_state_dict(state_dict)
        self._buffers = None
        self._packable = True
        # A counter shared in the loaded state (one object for several parameters) is split.
        seen: set[int] = set()
        for state in self.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                seen.add(id(state["step"]))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Adam.add_param_group`; Adam's own step from then on (several groups)."""
        super().add_param_group(param_group)
        self._unpack()
