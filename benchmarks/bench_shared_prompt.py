"""One minibatch update (64 sequences, micro-batches of 32) with the shared-prompt pass on and off, interleaved.

    .venv/bin/python benchmarks/bench_shared_prompt.py

Embedded tiny model, 16 synthetic prompts x G=8 sampled once; one torch thread; median of 6 repeats each.
"""
import torch, time, statistics
from softgate.config import load_config
from softgate.modeling import load_model_and_tokenizer
from softgate.rollout import HFSampler
from softgate.forward import completion_logprobs
from softgate.train import update_on_minibatch, make_gate
from softgate.tasks import get_task
torch.manual_seed(0); torch.set_num_threads(1)
model, tok = load_model_and_tokenizer("embedded:tiny")
task = get_task("synthetic"); ex = task.load("train", n=16)
r = HFSampler(model, tok).sample([task.render_prompt(e, tok) for e in ex], 8, temperature=1.0, max_new_tokens=48)
print(f"rollout: {r.input_ids.shape[0]} sequences, prompt+completion width {r.input_ids.shape[1]}, completion width {r.completion_mask.shape[1]}")
with torch.no_grad():
    lp,_ = completion_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask.shape[1])
adv = torch.randn(128); model.train(); idx = torch.arange(64)
times = {True: [], False: []}
for rep in range(6):
    for shared in (False, True):
        cfg = load_config(None, ["algo.micro_batch_size=32", f"model.shared_prompt_pass={str(shared).lower()}"])
        t = time.perf_counter()
        update_on_minibatch(model, r, idx, old_logp=lp, ref_logp=None, adv=adv, gate=make_gate(cfg), cfg=cfg)
        model.zero_grad()
        times[shared].append(time.perf_counter() - t)
full, shared = statistics.median(times[False]), statistics.median(times[True])
print(f"update time: full pass {full:.3f} s, shared prompt pass {shared:.3f} s, speed-up {full / shared:.2f}x")
