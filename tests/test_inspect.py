"""``log.samples_every`` and ``softgate inspect``: the kept per-token values are those of the gated loss of the last
update (gate_weight = f'(r) of the run's gate at the logged r), the page shows every token and the legend, and bad
input is one line with exit code 2."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from softgate import gates
from softgate.cli import main
from softgate.config import load_config
from softgate.inspect import SAMPLES_PER_STEP, write_page
from softgate.rundir import RunDir
from softgate.train import train


@pytest.fixture(scope="module")
def sampled_run(tiny_random_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "run"
    # Two passes over two minibatches: the last update comes after three optimizer steps, so r != 1 there (the
    # entropy bonus moves the random model even when every reward, hence every advantage, is 0).
    train(load_config(None, [
        f"model.name_or_path={tiny_random_model}", f"output_dir={out}", "steps=2", "rollout.prompts_per_step=2",
        "rollout.num_generations=4", "rollout.max_new_tokens=10", "algo.num_iterations=2", "algo.minibatches=2",
        "algo.micro_batch_size=4", "optim.lr=3e-3", "loss.entropy_coef=0.05", "eval.size=0", "log.save_every=0", "log.progress=false",
        "model.threads=1", "log.samples_every=1", "gate.name=sigmoid", "gate.tau_pos=1", "gate.tau_neg=1.05",
    ]))
    return out


def test_samples_hold_the_gate_weight_of_the_logged_ratio(sampled_run):
    samples = RunDir(sampled_run).read_samples()
    assert [s["rl_step"] for s in samples] == [1] * SAMPLES_PER_STEP + [2] * SAMPLES_PER_STEP
    gate = gates.make("sigmoid", tau_pos=1.0, tau_neg=1.05)
    moved = False
    for s in samples:
        assert s["gate"] == {"name": "sigmoid", "params": {"tau_pos": 1.0, "tau_neg": 1.05}}
        assert len(s["tokens"]) == len(s["ratio"]) == len(s["gate_weight"]) >= 1
        r = torch.tensor(s["ratio"], dtype=torch.float64)
        assert torch.isfinite(r).all() and (r > 0).all() and (r < 10).all()
        moved |= bool((r - 1).abs().max() > 1e-6)  # three optimizer steps since the rollout: off-policy
        expected = gate.df(r, torch.full_like(r, s["advantage"]))
        torch.testing.assert_close(torch.tensor(s["gate_weight"], dtype=torch.float64), expected,
                                   rtol=1e-5, atol=1e-6)
        assert math.isfinite(s["advantage"])
    assert moved
    # The kept rows are those of the last update: one minibatch = one group of 4 here.
    assert len({(s["rl_step"], s["group"]) for s in samples}) == 2


def test_page_shows_every_token_with_its_ratio_and_the_legend(sampled_run, tmp_path):
    page = write_page(sampled_run, tmp_path / "page.html", step=1).read_text()
    import html

    for s in RunDir(sampled_run).read_samples()[:SAMPLES_PER_STEP]:
        for token, r in zip(s["tokens"], s["ratio"]):
            assert html.escape(token) in page
            assert f"r = {r:.5f}" in page
    assert "gate weight f'(r)&thinsp;r" in page and "linear-gradient" in page  # the colour legend
    assert "<svg" in page and "RL step 1" in page  # the ratio histogram, inline
    assert "src=" not in page  # self-contained: nothing fetched


def test_cli_writes_the_last_step_by_default(sampled_run, tmp_path, capsys):
    assert main(["inspect", str(sampled_run), "--out", str(tmp_path / "p.html")]) == 0
    assert "RL step 2" in (tmp_path / "p.html").read_text()


@pytest.mark.parametrize("make, args, message", [
    (lambda p: None, [], "no such run directory"),
    (lambda p: p.mkdir(), [], "log.samples_every"),
    (None, ["--step", "7"], "no completions kept at RL step 7; kept steps: 1, 2"),
])
def test_bad_input_is_one_line_exit_2(sampled_run, tmp_path, capsys, make, args, message):
    target = sampled_run if make is None else tmp_path / "missing"
    if make is not None:
        make(target)
    assert main(["inspect", str(target), "--out", str(tmp_path / "p.html"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
