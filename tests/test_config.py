"""Config loading, overrides and validation: every error names the key (and file:line when from YAML)."""

from pathlib import Path

import pytest

from softgate.config import Config, ConfigError, load_config, save_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.task.name == "synthetic" and cfg.model.name_or_path == "embedded:tiny"


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\ngate:\n  name: erf\n  tau_pos: 5\n")
    cfg = load_config(path, ["gate.tau_neg=6.5", "rollout.temperature=0.9"])
    assert cfg.seed == 3 and cfg.gate.name == "erf"
    assert cfg.gate.tau_pos == 5.0 and isinstance(cfg.gate.tau_pos, float)
    assert cfg.gate.tau_neg == 6.5 and cfg.rollout.temperature == 0.9


def test_round_trip(tmp_path):
    cfg = load_config(None, ["gate.name=clip", "gate.eps_low=0.2",
                             "gate.eps_high=0.28"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_unknown_key_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\ngate:\n  name: erf\n  tau_pso: 3\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:4: gate.tau_pso: gate 'erf' has no parameter tau_pso"):
        load_config(path)


def test_unknown_gate_lists_known():
    with pytest.raises(ConfigError, match=r"gate.name: unknown gate 'sigmoidd'.*sigmoid"):
        load_config(None, ["gate.name=sigmoidd"])


@pytest.mark.parametrize("override, key", [
    ("gate.tau_pos=0", "gate"),
    ("gate.tau_neg=-1", "gate"),
    ("rollout.num_generations=1", "rollout.num_generations"),
    ("algo.minibatches=3", "algo.minibatches"),
    ("algo.micro_batch_size=7", "algo.micro_batch_size"),
    ("optim.lr=0", "optim.lr"),
    ("steps=0", "steps"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("algo.eur_target=1.5", "algo.eur_target"),
    ("loss.agg=mean", "loss.agg"),
    ("task.train_file=/no/such/file.jsonl", "task.train_file"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_type_errors(tmp_path):
    path = write(tmp_path, "steps: ten\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: steps: expected an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="log.progress: expected true/false"):
        load_config(None, ["log.progress=maybe"])


def test_mean_advantage_allows_group_of_one():
    cfg = load_config(None, ["algo.advantage=mean", "rollout.num_generations=1", "algo.micro_batch_size=4"])
    assert cfg.rollout.num_generations == 1


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such/config.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["seed"])


def test_gate_params_follow_the_family():
    from softgate.config import load_config as load

    clip = load(None, ["gate.name=clip", "gate.eps_high=0.28"])
    assert clip.gate.params == {"eps_low": 0.2, "eps_high": 0.28}  # the registry's defaults fill the rest
    assert load(None, ["gate.name=identity"]).gate.params == {}
    algebraic = load(None, ["gate.name=algebraic"]).gate
    assert (algebraic.name, algebraic.params) == ("softsign", {"tau_pos": 10.0, "tau_neg": 12.0})  # canonical name
    assert load(None, ["gate.name=student", "gate.nu=2"]).gate.params == {"tau_pos": 10.0, "tau_neg": 12.0,
                                                                          "nu": 2.0}
    # null unsets a parameter: the sweep idiom for switching a file's smooth gate to clip.
    assert load("configs/embedded.yaml", ["gate.name=clip", "gate.tau_pos=null", "gate.tau_neg=null"]).gate.params \
        == {"eps_low": 0.2, "eps_high": 0.2}
    with pytest.raises(ConfigError, match=r"gate.tau_pos: gate 'clip' has no parameter tau_pos"):
        load(None, ["gate.name=clip", "gate.tau_pos=5"])
    with pytest.raises(ConfigError, match=r"gate.nu: gate 'erf' has no parameter nu"):
        load(None, ["gate.name=erf", "gate.nu=3"])


def test_exponent_floats_without_dot(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; float fields accept it from files and --set alike."""
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert load_config(write(tmp_path, "optim:\n  lr: 3e-6\n")).optim.lr == 3e-6
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        load_config(None, ["optim.lr=fast"])


def test_embedded_config_file_equals_the_defaults():
    """`softgate demo` runs the defaults; configs/embedded.yaml must be the same config written out."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "embedded.yaml"
    cfg = load_config(path)
    cfg.output_dir = Config().output_dir
    assert cfg == load_config(None)  # the defaults, resolved (the gate's parameters come from the registry)


@pytest.mark.parametrize("name", ["smollm2_synthetic.yaml", "paper_qwen2.5_7b.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    load_config(Path(__file__).resolve().parents[1] / "configs" / name)


def test_docs_config_md_is_generated_from_the_code():
    from pathlib import Path

    from softgate.config import field_docs, reference_markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert path.read_text() == reference_markdown(), "regenerate: python -c 'from softgate.config import " \
        "reference_markdown; open(\"docs/config.md\", \"w\").write(reference_markdown())'"
    undocumented = [f"{cls}.{name}" for cls, fields in field_docs().items() for name, doc in fields.items()
                    if not doc and cls != "Config"]
    assert not undocumented, f"config fields without a docstring: {undocumented}"


def test_eur_target_needs_a_temperature_gate():
    assert load_config(None, ["algo.eur_target=0.9"]).algo.eur_target == 0.9
    for gate in ("clip", "identity"):
        with pytest.raises(ConfigError, match=r"algo.eur_target: .*has none"):
            load_config(None, [f"gate.name={gate}", "algo.eur_target=0.9"])


def test_micro_batch_larger_than_the_minibatch_means_one_pass():
    # Defaults: 16 prompts x 8 / 2 minibatches = 64 sequences per minibatch.
    assert load_config(None, ["algo.micro_batch_size=1000"]).algo.micro_batch_size == 1000
    with pytest.raises(ConfigError, match="not divisible by algo.micro_batch_size=48"):
        load_config(None, ["algo.micro_batch_size=48"])


def test_unknown_task_is_caught_before_anything_loads():
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'gsm9k'; known tasks: .*gsm8k"):
        load_config(None, ["task.name=gsm9k"])


def test_negative_samples_every_is_an_error():
    with pytest.raises(ConfigError, match=r"log.samples_every: must be >= 0"):
        load_config(None, ["log.samples_every=-1"])
