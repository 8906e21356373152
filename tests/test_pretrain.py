"""The tokenizer and the warm-start recipe: round trips, noisy targets, masking, and `softgate pretrain` end to end."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from softgate import pretrain
from softgate.tasks import synthetic
from softgate.tokenizer import BOS, EOS, PAD, TAGS, UNK, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tokenizer_round_trip_on_all_task_strings(tok) -> None:
    for level in synthetic.LEVELS:
        for split in ("train", "test"):
            for p in synthetic.generate(300, seed=5, difficulty=level, split=split):
                for text in (p.prompt, p.completion, p.prompt + p.completion):
                    ids = tok(text, add_special_tokens=False)["input_ids"]
                    assert tok.unk_token_id not in ids, text
                    assert tok.decode(ids) == text


def test_noisy_targets_round_trip(tok) -> None:
    rng = random.Random(0)
    for p in synthetic.generate(200, seed=1, difficulty=[1, 2, 3]):
        text = pretrain.corrupt_completion(p, rng, format_noise=1.0, answer_noise=1.0)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_tokenizer_pieces(tok) -> None:
    pieces = tok.convert_ids_to_tokens(tok("<think>12 + 3 = 15</think><answer>15</answer>")["input_ids"])
    assert pieces == ["<think>", "1", "2", " +", " 3", " =", " 1", "5", "</think>", "<answer>", "1", "5", "</answer>"]
    assert all(len(tok(tag, add_special_tokens=False)["input_ids"]) == 1 for tag in TAGS)
    # Specials come first and nothing is added implicitly: prompts encode the same with or without specials.
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == [PAD, BOS, EOS, UNK]
    assert tok("Ann has 3")["input_ids"] == tok("Ann has 3", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(tok("Zed has 3 ~")["input_ids"]) == ["<unk>", " has", " 3", " ~"]


def test_tokenizer_is_deterministic_and_reloads(tok, tmp_path: Path) -> None:
    assert build_tokenizer().get_vocab() == tok.get_vocab()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = synthetic.generate(1, seed=0, difficulty=2)[0].prompt
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.pad_token, loaded.eos_token, loaded.padding_side) == (PAD, EOS, "left")


def test_corruption_rates_and_kinds() -> None:
    rng = random.Random(0)
    problems = synthetic.generate(2000, seed=2, difficulty=[1, 2])
    full = re.compile(r"<think>[^<]*</think><answer>\d+</answer>")
    n_bad_format = n_wrong = 0
    for p in problems:
        text = pretrain.corrupt_completion(p, rng, format_noise=0.3, answer_noise=0.6)
        n_bad_format += not full.fullmatch(text)
        numbers = re.findall(r"\d+", text)
        n_wrong += numbers[-1] != p.reference
    # Binomial(2000, p): 5 standard deviations is about +-0.055.
    assert abs(n_bad_format / 2000 - 0.3) < 0.055
    assert abs(n_wrong / 2000 - 0.6) < 0.055
    clean = [pretrain.corrupt_completion(p, rng, 0.0, 0.0) for p in problems[:100]]
    assert clean == [p.completion for p in problems[:100]]


def test_format_rate_makes_plain_targets_and_leaves_the_default_recipe_alone() -> None:
    from softgate import rewards

    problems = synthetic.generate(2000, seed=2, difficulty=[1, 2])
    # format_rate = 1 draws nothing more from the noise stream: the embedded:tiny recipe's targets are unchanged.
    a, b = random.Random(5), random.Random(5)
    assert [pretrain.corrupt_completion(p, a, 0.6, 0.6) for p in problems[:300]] == [
        pretrain.corrupt_completion(p, b, 0.6, 0.6, format_rate=1.0) for p in problems[:300]]
    rng = random.Random(0)
    targets = [pretrain.corrupt_completion(p, rng, 0.0, 0.0, format_rate=0.1) for p in problems]
    formatted = [rewards.format_reward(t) == 1.0 for t in targets]
    assert abs(sum(formatted) / 2000 - 0.1) < 0.035  # 5 standard deviations of Binomial(2000, 0.1)
    for p, t, f in zip(problems, targets, formatted):
        if not f:  # plain: the gold equations, then the number; no tag, so both rewards are 0
            think = re.fullmatch(r"<think>(.*)</think><answer>\d+</answer>", p.completion).group(1)
            assert t == f"{think}. {p.reference}" and rewards.format_reward(t) == 0.0
    with pytest.raises(ValueError, match="format_rate"):
        pretrain.PretrainConfig(format_rate=1.5).validate()


def test_recipe_command_names_the_options_off_their_defaults() -> None:
    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(pretrain.PretrainConfig()).items()
              if k not in ("out", "threads")}
    assert pretrain.recipe_command(recipe, 1) == "softgate pretrain --out DIR --threads 1"
    cold = json.loads((Path(pretrain.__file__).parent / "assets" / "tiny-cold" / "pretrain.json").read_text())
    assert pretrain.recipe_command(cold["recipe"], 1) == (
        "softgate pretrain --out DIR --format-noise 0.0 --format-rate 0.1 --answer-noise 0.2 --threads 1")


def test_wrong_numbers_stay_near_and_nonnegative() -> None:
    rng = random.Random(3)
    for p in synthetic.generate(500, seed=4, difficulty=[1, 2]):
        text = pretrain.corrupt_completion(p, rng, format_noise=0.0, answer_noise=1.0)
        answer = int(re.search(r"<answer>(\d+)</answer>", text).group(1))
        assert answer != int(p.reference) and abs(answer - int(p.reference)) <= 2 and answer >= 0


def test_encode_batch_masks_prompt_and_padding(tok) -> None:
    batch = pretrain.encode_batch(tok, ["Question: a\nAnswer:\n", "Question: Ann has 3\nAnswer:\n"],
                                  ["<answer>1</answer>", "<think>3</think><answer>3</answer>"])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for row in range(2):
        n = int(mask[row].sum())
        assert (ids[row, n:] == tok.pad_token_id).all() and (labels[row, n:] == -100).all()
        target = labels[row][labels[row] != -100].tolist()
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1]) == ["<answer>1</answer>", "<think>3</think><answer>3</answer>"][row]


def test_score_rules() -> None:
    assert pretrain.score("<think>3 + 5 = 8</think><answer>8</answer>", "8") == (True, True)
    assert pretrain.score("<think>3 + 5 = 8</think><answer>9</answer>", "8") == (True, False)
    assert pretrain.score("<think>3 + 5 = 8<answer>8</answer>", "8") == (False, True)
    assert pretrain.score("<think>3 + 5 = 8</think>8", "8") == (False, False)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="format_noise=1.5"):
        pretrain.PretrainConfig(format_noise=1.5).validate()
    with pytest.raises(ValueError, match="num_heads"):
        pretrain.PretrainConfig(hidden_size=30, num_heads=4).validate()
    with pytest.raises(ValueError, match="steps=0"):
        pretrain.PretrainConfig(steps=0).validate()


@pytest.mark.slow
def test_pretrain_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    from softgate.cli import main
    from softgate.modeling import load_model_and_tokenizer

    out = tmp_path / "tiny"
    code = main(["pretrain", "--out", str(out), "--steps", "3", "--batch-size", "8", "--hidden-size", "32",
                 "--num-layers", "1", "--num-heads", "2", "--intermediate-size", "64", "--eval-n", "2",
                 "--eval-k", "2", "--difficulty", "1", "--threads", "1", "--no-progress"])
    assert code == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["recipe"]["steps"] == 3 and record["parameters"] > 0
    assert set(record["start_metrics"]) == {"level1/T1.0", "level1/T0.7"}
    assert "Start metrics" in (out / "README.md").read_text()
    model, tok = load_model_and_tokenizer(str(out))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    samples = pretrain.sample_completions(model, tok, ["Question: Ann has 3 apples.\nAnswer:\n"], k=2,
                                          max_new_tokens=5)
    assert len(samples) == 1 and len(samples[0]) == 2

    # Same seed, same checkpoint: the run is deterministic.
    out2 = tmp_path / "tiny2"
    main(["pretrain", "--out", str(out2), "--steps", "3", "--batch-size", "8", "--hidden-size", "32",
          "--num-layers", "1", "--num-heads", "2", "--intermediate-size", "64", "--eval-n", "0",
          "--difficulty", "1", "--threads", "1", "--no-progress"])
    again, _ = load_model_and_tokenizer(str(out2))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
