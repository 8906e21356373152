"""Atomic checkpoints, RNG round trip, and the JSONL log's resume behaviour (nothing written is lost)."""

import json
import random

import numpy as np
import pytest
import torch

from softgate.checkpoint import rng_state, set_rng_state
from softgate.rundir import JsonlWriter, RunDir, read_jsonl, truncate_after


def test_rng_round_trip():
    state = rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_half_written_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_000020").mkdir(parents=True)  # killed mid-write
    (root / ".tmp-step_000020" / "state.json").write_text("{}")
    (root / "step_000010").mkdir()
    (root / "step_000010" / "state.json").write_text(json.dumps({"step": 10}))
    (root / "step_000015").mkdir()  # no state.json: incomplete
    assert [p.name for p in RunDir(tmp_path).list_checkpoints()] == ["step_000010"]
    assert RunDir(tmp_path).latest_checkpoint().name == "step_000010"


def test_jsonl_truncate_keeps_orphans(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlWriter(path)
    for step in range(1, 6):
        log.write({"step": step, "rl_step": step, "x": float("nan") if step == 3 else step})
    log.close()
    records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["x"] is None  # NaN written as null: every line stays valid JSON
    moved = truncate_after(path, 3, key="rl_step")
    assert moved == 2
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.orphaned.jsonl")] == [4, 5]


def test_read_jsonl_torn_last_line_and_bad_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
        read_jsonl(path)
