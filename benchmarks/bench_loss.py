"""Benchmarks of the policy loss and of the chunked token log-probs, measured side by side.

(a) ``policy_loss`` forward + backward for every registered gate vs the ``clip`` gate (the PPO/GRPO baseline)
    on B=64, T=1024 float32 (stats included: they are part of every call). The gates are timed interleaved, in a
    shuffled order in every round, and the ratio printed is the median over rounds of (gate time / clip time in
    the same round), which cancels most of the drift of a shared machine. Times are CPU time of the (single)
    torch thread, not wall time, so other processes on a shared box do not inflate them (caches are still
    shared, so some noise remains). Target: <= 1.05x for smooth gates.

(b) ``token_logprobs`` vs the naive ``log_softmax(logits).gather(ids)`` at V=151,936 (Qwen2.5), B=2, T=1024,
    float32 logits (1.24 GB per [B, T, V] tensor). Targets: peak memory ratio <= 1/4, time ratio <= 1.2x.
    Peak memory: torch's CPU allocator is invisible to tracemalloc, so every variant runs in a fresh subprocess
    which allocates its inputs, reads its peak resident set size (``VmHWM`` in /proc/self/status; at that
    point it is the inputs), runs the operation, and reads the peak again: the difference is the extra peak
    memory of the operation (including the returned gradients for "fwd+bwd"). ``ru_maxrss`` is
    avoided on Linux: after fork + exec it starts from the parent's resident size.

(c) From the last hidden state [B, T, H] and the LM-head weight [V, H] (what the trainer holds), same V, B, T:
    ``naive-hidden`` = ``log_softmax(h @ W.T).gather(ids)``; ``logits-hidden`` = ``token_logprobs(h @ W.T, ids)``
    (the trainer's ``model.logprob_impl=logits``); ``tiled-hidden`` = ``hidden_logprobs(h, W, ids)`` (``hidden``:
    no [B, T, V] tensor). Target for ``tiled-hidden`` forward+backward: peak memory <= 0.15x and time <= 1.15x
    ``naive-hidden``. H defaults to 128 (fast); ``--hidden-size 896`` (Qwen2.5-0.5B) with ``--rows 512`` shows the
    regime where the matmuls dominate.

Usage: ``python benchmarks/bench_loss.py [--rounds 15] [--repeats 5] [--skip-loss] [--skip-logits] [--skip-hidden]
[--hidden-size 128] [--rows 2048]``
Numbers on a shared CPU box are noisy; rerun before drawing conclusions from a few percent.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from softgate import gates
from softgate.logprobs import hidden_logprobs, token_logprobs
from softgate.losses import cispo_loss, policy_loss

VOCAB, LP_B, LP_T = 151_936, 2, 1024


# --------------------------------------------------------------------------------------------------------------
# (a) policy loss
# --------------------------------------------------------------------------------------------------------------


def _loss_batch(B: int = 64, T: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=gen)  # off-policy enough that every gate is active
    lengths = torch.randint(T // 4, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.randn(B, generator=gen)
    return {"logp": logp, "old": old, "mask": mask, "adv": adv}


def _time_once(fn: Callable[[], None]) -> float:
    """CPU seconds of this thread for one call (torch runs single-threaded here, see main): unlike wall time,
    this does not count the time other processes of a shared machine hold the cores."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def bench_losses(rounds: int) -> None:
    data = _loss_batch()
    contenders: dict[str, Callable[[], None]] = {}
    for name in gates.names():
        gate = gates.make(name)

        def run(gate: gates.Gate = gate) -> None:
            x = data["logp"].clone().requires_grad_()
            loss, _ = policy_loss(x, data["old"], data["adv"], data["mask"], gate, group_size=8)
            loss.backward()

        contenders[name] = run

    def run_cispo() -> None:
        x = data["logp"].clone().requires_grad_()
        loss, _ = cispo_loss(x, data["old"], data["adv"], data["mask"], group_size=8)
        loss.backward()

    contenders["cispo (surrogate)"] = run_cispo
    for fn in contenders.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    ratios: dict[str, list[float]] = {k: [] for k in contenders}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(contenders)
        rng.shuffle(order)
        this_round = {k: _time_once(contenders[k]) for k in order}
        for k, t in this_round.items():
            times[k].append(t)
            ratios[k].append(t / this_round["clip"])
    smooth = {"sigmoid", "erf", "arctan", "softsign", "student"}
    print(f"\n(a) policy_loss forward+backward, B=64 T=1024 float32, stats included, {rounds} interleaved rounds")
    print(f"{'gate':<18} {'params':<34} {'median cpu ms':>14} {'ratio vs clip':>14}  target")
    for k in contenders:
        params = ", ".join(f"{p}={v:g}" for p, v in gates.make(k).params.items()) if k in gates.names() else ""
        ratio = statistics.median(ratios[k])
        target = ("<= 1.05 " + ("ok" if ratio <= 1.05 else "MISSED")) if k in smooth else ""
        print(f"{k:<18} {params:<34} {1e3 * statistics.median(times[k]):>14.1f} {ratio:>14.3f}  {target}")


# --------------------------------------------------------------------------------------------------------------
# (b) token log-probs: memory in subprocesses, time in process
# --------------------------------------------------------------------------------------------------------------


def _naive_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)


def _lp_inputs(variant: str, rows: int, hidden_size: int) -> tuple[torch.Tensor, ...]:
    """Inputs of a variant: [B, T, V] logits and ids, or [B, T, H] hidden state, [V, H] weight and ids."""
    gen = torch.Generator().manual_seed(0)
    B, T = LP_B, rows // LP_B
    ids = torch.randint(0, VOCAB, (B, T), generator=gen)
    if variant.endswith("hidden"):
        h = torch.randn(B, T, hidden_size, generator=gen).requires_grad_()
        w = torch.randn(VOCAB, hidden_size, generator=gen).div_(hidden_size**0.5).requires_grad_()  # in place: no
        return h, w, ids  # freed temporary raises the baseline peak that the extra memory is measured from
    return torch.randn(B, T, VOCAB, generator=gen).requires_grad_(), ids


def _lp_op(variant: str) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    match variant:
        case "naive":
            return lambda a: _naive_logprobs(a[0], a[1])
        case "chunked":
            return lambda a: token_logprobs(a[0], a[1])
        case "naive-hidden":
            return lambda a: _naive_logprobs(a[0] @ a[1].T, a[2])
        case "logits-hidden":
            return lambda a: token_logprobs(a[0] @ a[1].T, a[2])
        case "tiled-hidden":
            return lambda a: hidden_logprobs(a[0], a[1], a[2])
    raise ValueError(f"unknown variant {variant!r}")


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux: ``VmHWM`` of /proc/self/status, which belongs to the process's own address space. (``ru_maxrss`` is
    not usable here: across fork + exec it keeps the parent's resident size at fork time as a floor, so a
    child of a big parent reports the parent's peak.) Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux/BSD
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _mem_child(variant: str, backward: bool, rows: int, hidden_size: int) -> None:
    """Runs in a fresh process: prints the extra peak RSS (bytes) of one call over its inputs."""
    args = _lp_inputs(variant, rows, hidden_size)
    before = _peak_rss_bytes()  # the inputs are the largest thing allocated so far
    out = _lp_op(variant)(args)
    if backward:
        out.sum().backward()
    # The input gradients are part of the extra memory: any method returns them (dL/dW alone is V x H floats).
    grads = sum(a.grad.numel() * a.grad.element_size() for a in args if a.grad is not None)
    print(json.dumps({"extra_bytes": _peak_rss_bytes() - before, "grad_bytes": grads}))


def _measure_memory(variant: str, backward: bool, rows: int, hidden_size: int) -> tuple[float, float]:
    """(extra peak bytes of one call, bytes of the input gradients it returned) in a fresh process."""
    cmd = [sys.executable, __file__, "--mem-child", variant, "--rows", str(rows), "--hidden-size", str(hidden_size)]
    out = subprocess.run(cmd + (["--backward"] if backward else []), check=True, capture_output=True, text=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return measured["extra_bytes"], measured["grad_bytes"]


def _time_variants(variants: list[str], backward: bool, repeats: int, rows: int,
                   hidden_size: int) -> dict[str, float]:
    """Median CPU time per variant over ``repeats`` rounds; the variants alternate inside every round."""
    args_by = {v: _lp_inputs(v, rows, hidden_size) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}

    def run(v: str) -> None:
        args = args_by[v]
        for a in args:
            a.grad = None
        out = _lp_op(v)(args)
        if backward:
            out.sum().backward()

    for v in variants:
        run(v)  # warm-up
    for _ in range(repeats):
        for v in variants:  # interleaved
            times[v].append(_time_once(lambda: run(v)))
        variants = variants[::-1]
    return {v: statistics.median(t) for v, t in times.items()}


def bench_logprobs(variants: list[str], repeats: int, rows: int, hidden_size: int, target: str) -> None:
    """Memory and time of ``variants`` side by side; ratios to the first (the naive form)."""
    naive = variants[0]
    print(f"{'variant':<14} {'pass':<8} {'extra peak MiB':>15} {'of it grads':>12} {'mem ratio':>10} "
          f"{'median cpu ms':>14} {'time ratio':>11}")
    for backward in (False, True):
        label = "fwd+bwd" if backward else "fwd"
        measured = {v: _measure_memory(v, backward, rows, hidden_size) for v in variants}
        mem = {v: extra for v, (extra, _) in measured.items()}
        t = _time_variants(variants, backward, repeats, rows, hidden_size)
        for v in variants:
            print(f"{v:<14} {label:<8} {mem[v] / 2**20:>15.0f} {measured[v][1] / 2**20:>12.0f} "
                  f"{mem[v] / max(mem[naive], 1):>10.3f} {1e3 * t[v]:>14.0f} {t[v] / t[naive]:>11.3f}")
        if backward and target == "hidden":
            mem_ratio, time_ratio = mem["tiled-hidden"] / mem[naive], t["tiled-hidden"] / t[naive]
            verdict = "met" if mem_ratio <= 0.15 and time_ratio <= 1.15 else "MISSED"
            print(f"target tiled-hidden fwd+bwd: memory {mem_ratio:.3f}x <= 0.15x, time {time_ratio:.3f}x <= 1.15x: "
                  f"{verdict}")
    if target == "logits":
        print("targets: chunked/naive memory <= 0.25, time <= 1.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds for (a)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats for (b) and (c)")
    parser.add_argument("--skip-loss", action="store_true", help="skip (a)")
    parser.add_argument("--skip-logits", action="store_true", help="skip (b)")
    parser.add_argument("--skip-hidden", action="store_true", help="skip (c)")
    parser.add_argument("--hidden-size", type=int, default=128, help="H of (c)")
    parser.add_argument("--rows", type=int, default=LP_B * LP_T, help="tokens B*T of (b) and (c)")
    parser.add_argument("--mem-child", help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mem_child:
        _mem_child(args.mem_child, args.backward, args.rows, args.hidden_size)
        return
    # One intra-op thread: thread CPU time then measures all the work, and the comparison is not distorted by
    # thread scheduling on a loaded machine.
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; times are CPU time of that thread (load-insensitive)")
    if not args.skip_loss:
        bench_losses(args.rounds)
    size = f"V={VOCAB:,} B*T={args.rows} float32 (one [B*T, V] float32 tensor = {args.rows * VOCAB * 4 / 2**30:.2f} GiB)"
    how = f"memory = extra peak RSS in a fresh subprocess; time = median of {args.repeats} interleaved repeats"
    if not args.skip_logits:
        print(f"\n(b) token log-probs from logits, {size}; {how}")
        bench_logprobs(["naive", "chunked"], args.repeats, args.rows, args.hidden_size, "logits")
    if not args.skip_hidden:
        print(f"\n(c) token log-probs from the hidden state, H={args.hidden_size}, {size}; {how}")
        bench_logprobs(["naive-hidden", "logits-hidden", "tiled-hidden"], args.repeats, args.rows, args.hidden_size,
                       "hidden")


if __name__ == "__main__":
    main()
