"""PowerGrad Transform (PGT): cross-entropy whose backward pass uses flattened probabilities.

Forward:  L = mean_n CE(z_n, q_n)                       (ordinary cross-entropy, unchanged)
Backward: dL/dz = (p' - q) / N,   p' = p^α / Σ_c p^α    (instead of (p - q) / N)

with z the (N, C) logits, p = softmax(z), q the target distribution (one-hot, mixup/cutmix
probabilities, optionally label-smoothed) and 0 < α <= 1. Since p^α = exp(αz) / (Σ exp z)^α,
the normaliser cancels and p' = softmax(α·z), so p' is computed from the logits directly
(stable, no 0^α, no dependence on the incoming gradient). α = 1 is plain cross-entropy.

Ways in:
  pgt_cross_entropy / PowerGradCrossEntropy  the loss itself (use this when you own the loss)
  attach_pgt / pgt_logits                    forward hook on an unmodified model's logits
  authors_pgt_cross_entropy                  the authors' fp16 arithmetic: p rounded to fp16 before
                                             the power, robustly (any dtype, loss scale, batch)
  official_pgt_cross_entropy                 the paper's appendix tensor-hook, flaws included
  temperature_cross_entropy                  plain CE on α·z: PGT's exact twin at LR/α and weight decay·α
build_pgt_loss(alpha, impl, form) picks one for the trainer (impl in IMPLS, form in FORMS). How each
compares with the paper and the authors' runs, measured: docs/fidelity.md.
"""

import functools
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

IMPLS = ("exact", "authors", "official")  # pgt.impl values; the config's choices use this tuple
# pgt.authors_fp16: which fp16 steps of the authors' hook `authors` follows, each level adding to the one before:
# "p" p as the fp16 gradient carried it, q + fp16(p - q); "target" also the smoothed target built and added in
# fp16; "hook" also the power, the sum, the division, p' - q and the x N rounded to fp16 (docs/fidelity.md)
AUTHORS_FP16 = ("p", "target", "hook")
# pgt.form: backward (PGT itself) | temperature (cross-entropy on α·z, the run's LRs / α and weight decay x α:
# the same steps, see pgt_train/config/twin.py and docs/fidelity.md)
FORMS = ("backward", "temperature")


def check_alpha(alpha):
    """Return alpha as a float; raise ValueError unless it is a real number in (0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"PGT alpha must be a number in (0, 1], got {alpha!r}")
    return float(alpha)


def _check_smoothing(label_smoothing):
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def _upcast(x):
    # at least float32: bf16/fp16 -> fp32, fp32 stays, fp64 stays (autocast never lowers these ops)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def power_softmax(logits, alpha):
    """p' = p^α / Σ_c p^α = softmax(α·z) over the last dim, in float32 (float64 for fp64 logits): p_c^α =
    exp(α z_c) / (Σ_j exp z_j)^α, and the denominator cancels under the renormalisation."""
    return _power_softmax(logits, check_alpha(alpha))


def _power_softmax(logits, alpha):  # alpha already checked: the backward calls this every step
    return torch.softmax(_upcast(logits) * alpha, dim=-1)


def hook_seen_probs(logits, q=None):
    """The probabilities the appendix hook recovered in the authors' fp16 runs: q + fp16(p - q).

    p = softmax(z) (float32, float64 for fp64 logits), q the (N, C) targets (None: 0). At the loss scale
    N² GradScaler settles at, the hook divided the fp16 gradient s·(p - q)/N by N and added q back: p - q
    rounded to fp16, plus q. So p under 2^-25 becomes 0 where q = 0, and the one-hot target's p_y lies on
    a 2^-11 grid. Returned in the working dtype, clamped at 0 (soft q off fp16's grid could round below).
    """
    z = _upcast(logits)
    p = torch.softmax(z, dim=-1)
    if q is None:
        return p.half().to(z.dtype)
    q = q.to(z.dtype)
    return (q + (p - q).half().to(z.dtype)).clamp_min(0.0)


def authors_power_softmax(logits, alpha, q=None):
    """p' = p16^α / Σ_c p16^α with p16 = hook_seen_probs(logits, q): p as the authors' fp16 hook saw it.

    q = None (or all-zero) gives p16 = softmax(z) rounded to float16; with the target distribution
    q the target class is rounded through p - q, as the hook did (see hook_seen_probs). Entries of
    p16 that are 0 stay 0 (0^α = 0) and take no share of the flattened mass; the row's largest p is
    at least 1/C, far above fp16's underflow, so the sum is never 0. Computed in float32 (float64
    for fp64 logits). Unlike power_softmax this is NOT softmax(α·z): rounding comes before the power.
    """
    return _authors_power_softmax(logits, check_alpha(alpha), q)


def _authors_power_softmax(logits, alpha, q=None):  # alpha already checked
    p16 = hook_seen_probs(logits, q)
    kept = p16 > 0  # 0 stays 0 explicitly, without relying on pow(0, α) = 0
    p_pow = torch.where(kept, torch.where(kept, p16, torch.ones_like(p16)) ** alpha, torch.zeros_like(p16))
    return p_pow / p_pow.sum(-1, keepdim=True)


def _round16(x):
    """x rounded to float16's grid, returned in x's own dtype (the hook's fp16 storage of each result)."""
    return x.half().to(x.dtype)


def hook_target(target, num_classes, label_smoothing, dtype):
    """q as the authors' hook built it in fp16: fp16((1 - ε)·q) + ε/C, rounded again.

    With ε = 0.1 and C = 1000 the target class gets 0.89990234 (fp16(0.9) + 1e-4 rounds back down) and
    every other class 1.0001659e-4, where cross-entropy's own q is 0.9001 and 1e-4. Returned in `dtype`.
    """
    q = _round16(target_probs(target, num_classes, 0.0, dtype))  # one-hot (or soft labels) on fp16's grid
    if label_smoothing:
        q = _round16(_round16(q * (1.0 - label_smoothing)) + label_smoothing / num_classes)
    return q


def _authors_direction(logits, alpha, target, label_smoothing, q, level):
    """p' - q_hook (N, C) in the working dtype: what the authors' hook returned, divided by the loss scale / N.

    q is cross-entropy's target (what the incoming gradient s·(p - q)/N was computed against). level "p":
    p' of q + fp16(p - q), the rest in fp32 against q. "target": the hook's fp16 target q16 (hook_target), the
    recovered p = fp16(fp16(p - q) + q16), p' in fp32, returned against q16. "hook": every fp16 rounding of
    the hook at the settled scale s = N² (N = this batch), so g = fp16(fp16(N(p - q)) / N),
    p16 = fp16(g + q16), p16^α, its sum, the division, p' - q16 and × N each rounded to fp16.
    """
    if level == "p":
        return _authors_power_softmax(logits, alpha, q) - q
    z = _upcast(logits)
    n, c = z.shape
    q16 = hook_target(target, c, label_smoothing, z.dtype)
    g = torch.softmax(z, dim=-1) - q  # (N, C): the direction the incoming gradient carried, fp32
    g16 = _round16(_round16(g * n) / n) if level == "hook" else _round16(g)
    p16 = _round16(g16 + q16).clamp_min(0.0)  # >= 0 already (fp16 rounding is monotone); a guard for soft q
    kept = p16 > 0  # 0 stays 0 explicitly, without relying on pow(0, α) = 0
    p_pow = torch.where(kept, torch.where(kept, p16, torch.ones_like(p16)) ** alpha, torch.zeros_like(p16))
    if level == "target":
        return p_pow / p_pow.sum(-1, keepdim=True) - q16
    p_pow = _round16(p_pow)
    p_pow = _round16(p_pow / _round16(p_pow.sum(-1, keepdim=True)))
    return _round16(_round16(p_pow - q16) * n) / n


def target_probs(target, num_classes, label_smoothing=0.0, dtype=torch.float32):
    """q as an (N, C) distribution from class indices (N,) or probabilities (N, C).

    Smoothed like F.cross_entropy: q = (1 - ε)·q + ε / C.
    """
    label_smoothing = _check_smoothing(label_smoothing)
    if target.is_floating_point():  # mixup / cutmix / soft labels, already (N, C)
        if target.dim() != 2 or target.shape[1] != num_classes:
            raise ValueError(f"probability targets must be (N, {num_classes}), got {tuple(target.shape)}")
        q = target.to(dtype)
    else:  # class indices (N,) -> one-hot (N, C); scatter_ rather than F.one_hot keeps torch.compile happy
        q = torch.zeros(target.shape[0], num_classes, dtype=dtype, device=target.device)
        q.scatter_(1, target.long().unsqueeze(1), 1.0)
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    return q


class _PGTCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy forward, (p' - q) / N backward; p' from power_softmax (impl "exact"), or the
    authors' hook arithmetic at level `authors_fp16` (impl "authors"). Strings, so torch.compile sees
    constants."""

    @staticmethod
    def forward(ctx, logits, target, alpha, label_smoothing, impl="exact", authors_fp16="p"):
        ctx.save_for_backward(logits, target)  # keep the logits in their own dtype; upcast in backward
        ctx.alpha, ctx.label_smoothing, ctx.impl, ctx.authors_fp16 = alpha, label_smoothing, impl, authors_fp16
        # float32 loss whatever the autocast dtype; identical to F.cross_entropy(logits.float(), ...)
        return F.cross_entropy(_upcast(logits), target, label_smoothing=label_smoothing)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target = ctx.saved_tensors
        n, c = logits.shape
        work = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
        q = target_probs(target, c, ctx.label_smoothing, work)  # (N, C), transient like the grad
        if ctx.impl == "authors":
            direction = _authors_direction(logits, ctx.alpha, target, ctx.label_smoothing, q, ctx.authors_fp16)
        else:
            direction = _power_softmax(logits, ctx.alpha) - q
        # linear in grad_loss (loss scale, 1/accum_steps, DDP averaging all pass straight through)
        grad = direction * (grad_loss / n)
        return grad.to(logits.dtype), None, None, None, None, None


def _check_logits(logits, target):
    if logits.dim() != 2:
        raise ValueError(f"PGT expects (N, C) logits, got shape {tuple(logits.shape)}")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target batch {target.shape[0]} != logits batch {logits.shape[0]}")


def pgt_cross_entropy(logits, target, alpha, label_smoothing=0.0):
    """Mean cross-entropy whose gradient w.r.t. the (N, C) logits is (softmax(α·z) - q) / N.

    target: class indices (N,) or probabilities (N, C). The value equals
    F.cross_entropy(logits.float(), target, label_smoothing=ε) (fp64 logits stay fp64); the
    gradient is returned in the logits' dtype. Runs in fp32 under autocast; works with
    torch.compile, DDP, loss scaling and gradient accumulation (the gradient is linear in
    the upstream gradient).
    """
    alpha, label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
    _check_logits(logits, target)
    return _PGTCrossEntropy.apply(logits, target, alpha, label_smoothing)


def _check_authors_fp16(authors_fp16):
    if authors_fp16 not in AUTHORS_FP16:
        raise ValueError(f"unknown authors_fp16 level {authors_fp16!r}; valid: {', '.join(AUTHORS_FP16)}")
    return authors_fp16


def authors_pgt_cross_entropy(logits, target, alpha, label_smoothing=0.0, authors_fp16="p"):
    """pgt_cross_entropy with the authors' fp16 arithmetic: gradient (p' - q) / N where
    p' = p16^α / Σ_c p16^α and p16 = softmax(z) rounded to float16 (see authors_power_softmax).

    This is what the appendix hook computed inside the authors' fp16 runs once GradScaler had
    settled at scale N², reproduced for any dtype, batch, loss scale, accumulation or DDP: the
    gradient is linear in the upstream gradient like pgt_cross_entropy's. Forward: plain CE.
    p16 is what the hook could see: p - q rounded to fp16, plus q (hook_seen_probs), so p rounded
    to fp16 for every class with q = 0, and the one-hot target's p_y on a 2^-11 grid.

    authors_fp16 (AUTHORS_FP16) picks how much more of the hook's fp16 arithmetic is followed: "p"
    (the default) does the rest in fp32, "target" adds the hook's fp16 smoothed target, "hook" every
    rounding of the hook (see _authors_direction), which follows the hook at scale N² closest. The
    later roundings are not small noise against the gradient, because p'_y - q_y cancels on
    confident rows (measured: docs/fidelity.md). At α = 1 the gradient is (p16 - q)/N: close to, not
    equal to, cross-entropy's (p - q)/N.
    """
    alpha, label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
    _check_logits(logits, target)
    return _PGTCrossEntropy.apply(logits, target, alpha, label_smoothing, "authors", _check_authors_fp16(authors_fp16))


class PowerGradCrossEntropy(nn.Module):
    """nn.Module form of pgt_cross_entropy (impl "exact") or authors_pgt_cross_entropy (impl "authors"):
    forward(logits, target) -> scalar loss. Arguments are validated once, here, not on every step."""

    def __init__(self, alpha, label_smoothing=0.0, impl="exact", authors_fp16="p"):
        super().__init__()
        if impl not in ("exact", "authors"):
            raise ValueError(f"PowerGradCrossEntropy impl must be exact or authors, got {impl!r} "
                             f"(official is a tensor hook: official_pgt_cross_entropy)")
        self.alpha, self.label_smoothing, self.impl = check_alpha(alpha), _check_smoothing(label_smoothing), impl
        self.authors_fp16 = _check_authors_fp16(authors_fp16)

    def forward(self, logits, target):
        _check_logits(logits, target)
        return _PGTCrossEntropy.apply(logits, target, self.alpha, self.label_smoothing, self.impl, self.authors_fp16)

    def extra_repr(self):
        fp16 = f", authors_fp16={self.authors_fp16}" if self.impl == "authors" else ""
        return f"alpha={self.alpha}, label_smoothing={self.label_smoothing}, impl={self.impl}{fp16}"


class _PGTLogits(torch.autograd.Function):
    """Identity on the logits; backward swaps the CE gradient s·(p - q)/N for s·(p' - q)/N."""

    @staticmethod
    def forward(ctx, logits, target, alpha, label_smoothing):
        ctx.save_for_backward(logits, target)
        ctx.alpha, ctx.label_smoothing = alpha, label_smoothing
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        logits, target = ctx.saved_tensors
        z = _upcast(logits)  # fp32, or fp64 for an fp64 model
        q = target_probs(target, z.shape[1], ctx.label_smoothing, z.dtype)
        d = torch.softmax(z, dim=-1) - q  # (N, C): the direction the incoming grad must lie along
        # least-squares fit of grad ≈ (s/N)·d over the whole batch recovers the one unknown scalar;
        # if d == 0 everywhere the numerator is 0 too, so the clamp makes the result 0, not NaN
        s_over_n = (grad.to(z.dtype) * d).sum() / (d * d).sum().clamp_min(torch.finfo(z.dtype).tiny)
        grad_new = s_over_n * (torch.softmax(z * ctx.alpha, dim=-1) - q)
        return grad_new.to(grad.dtype), None, None, None


def pgt_logits(logits, target, alpha, label_smoothing=0.0):
    """Identity on (N, C) logits whose backward turns a cross-entropy gradient into PGT's.

    ASSUMPTION: downstream is the mean cross-entropy of these logits against the same `target` and
    `label_smoothing`, times one unknown scalar s (loss scale, 1/accum_steps, DDP averaging...). The
    incoming gradient is then g = s·(p - q)/N; only s/N = Σ g·(p - q) / Σ (p - q)² is recovered (least
    squares over the batch, p from the saved logits), never p, and s·(p' - q)/N returned: equal to
    pgt_cross_entropy's gradient for any scale, batch or accumulation, meaningless for any other
    downstream loss. If p = q exactly, the gradient is zero.
    """
    alpha, label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
    _check_logits(logits, target)
    return _PGTLogits.apply(logits, target, alpha, label_smoothing)


class PGTHook:
    """Handle returned by attach_pgt: set_targets() before each training forward, remove() when done."""

    def __init__(self, model, alpha, label_smoothing=0.0):
        self.alpha, self.label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
        self.target = None
        self._handle = model.register_forward_hook(self._hook)

    def set_targets(self, target):
        self.target = target

    def _hook(self, module, inputs, output):
        if not module.training:
            return None  # eval: logits pass through untouched, targets not needed
        if self.target is None:
            raise RuntimeError("attach_pgt: call handle.set_targets(target) before each training forward")
        # targets are consumed so a forgotten set_targets() fails loudly instead of reusing a stale batch
        target, self.target = self.target, None
        return pgt_logits(output, target, self.alpha, self.label_smoothing)

    def remove(self):
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def attach_pgt(model, alpha, label_smoothing=0.0):
    """Apply PGT to an unmodified model whose (N, C) logits go into a mean cross-entropy.

    In training mode the hook wraps the output in pgt_logits (see its assumption on the downstream
    loss). Each training forward consumes the targets; in eval mode the hook does nothing. Usage:

        with attach_pgt(model, alpha=0.3) as pgt:
            pgt.set_targets(y)          # before every training forward
            loss = F.cross_entropy(model(x), y)
    """
    return PGTHook(model, alpha, label_smoothing)


def official_pgt_cross_entropy(logits, target, alpha, label_smoothing=0.0):
    """F.cross_entropy plus the paper's appendix tensor hook (Fig. 9), for fidelity studies.

    The hook "recovers" p from the incoming gradient g as g/N + q, flattens it to p^α / Σ p^α
    and returns (p' - q)·N. The real incoming gradient is g = s·(p - q)/N for a loss scale s,
    so the recovered value is s·(p - q)/N² + q: the hook is CORRECT ONLY WHEN THE LOSS SCALE
    EQUALS N² (N = per-device batch). Otherwise the recovered "p" is wrong, can go negative
    (NaN after the fractional power), and the output ignores s. Use pgt_cross_entropy for real
    training. In fp16 runs GradScaler's skip-and-halve drives the scale to N², where the hook is
    exact in scale but sees p through an fp16 gradient (impl "authors"); measured in docs/fidelity.md.
    """
    alpha, label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if logits.requires_grad:
        n, c = logits.shape
        q = target_probs(target, c, label_smoothing, logits.dtype)  # the appendix's one-hot labels

        def transform(grad):  # same arithmetic as the appendix, in the gradient's dtype
            pred = (grad / n + q) ** alpha  # "recovered" probabilities, flattened
            pred = pred / pred.sum(-1, keepdim=True)
            return (pred - q) * n

        logits.register_hook(transform)
    return loss


def temperature_cross_entropy(logits, target, alpha, label_smoothing=0.0):
    """Mean F.cross_entropy of α·z (softmax temperature 1/α), in float32 at least like pgt_cross_entropy.

    Its gradient w.r.t. z is α·(softmax(α·z) - q)/N: α times PGT's. So the run that trains it at every LR / α
    and weight decay × α takes PGT's steps (pgt.form temperature; why and where it holds: docs/fidelity.md).
    """
    alpha, label_smoothing = check_alpha(alpha), _check_smoothing(label_smoothing)
    _check_logits(logits, target)
    return F.cross_entropy(_upcast(logits) * alpha, target, label_smoothing=label_smoothing)


def build_pgt_loss(alpha, impl="exact", label_smoothing=0.0, authors_fp16="p", form="backward"):
    """The trainer's loss: (logits, target) -> scalar, arguments validated once. alpha=None: plain CE.

    impl: "exact" (Eq. 8, the default), "authors" (Eq. 8 on fp16-rounded p, as the authors' runs
    computed it; authors_fp16 says how many of the hook's fp16 steps) or "official" (the appendix
    hook itself). form "temperature": cross-entropy on α·z, PGT's twin (impl exact only; the run's
    LRs and weight decay are scaled by the config). Unknown names raise ValueError. The arguments are
    the pgt.* keys by name. exact at α = 1 IS cross-entropy (p^1 / Σ p = p), so it runs as
    F.cross_entropy: bit-identical to PGT off, where the autograd Function would differ in the last bits.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown PGT impl {impl!r}; valid: {', '.join(IMPLS)}")
    if form not in FORMS:
        raise ValueError(f"unknown PGT form {form!r}; valid: {', '.join(FORMS)}")
    label_smoothing, authors_fp16 = _check_smoothing(label_smoothing), _check_authors_fp16(authors_fp16)
    if form == "temperature":
        if alpha is None or impl != "exact":  # the twin is of Eq. 8; the authors' arithmetic has none
            raise ValueError(f"PGT form temperature needs an alpha and impl exact, got alpha={alpha!r}, impl={impl!r}")
        return functools.partial(temperature_cross_entropy, alpha=check_alpha(alpha), label_smoothing=label_smoothing)
    if alpha is None or (impl == "exact" and check_alpha(alpha) == 1.0):
        return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    if impl == "official":
        return functools.partial(official_pgt_cross_entropy, alpha=check_alpha(alpha), label_smoothing=label_smoothing)
    return PowerGradCrossEntropy(alpha, label_smoothing, impl=impl, authors_fp16=authors_fp16)
